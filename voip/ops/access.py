"""Who may look: operators only. HTTP routes use the API's bearer check; the live feed
also takes the token as `access_token`, because browsers cannot set headers on a
WebSocket, and refuses before accepting."""

from __future__ import annotations

from starlette.websockets import WebSocket

from voip.api import JSONResponse
from voip.auth import AuthError, Principal
from voip.node import Node

OPERATOR = "operator"
CLOSE_POLICY = 1008


class Refused(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def socket_operator(websocket: WebSocket, node: Node) -> Principal:
    try:
        if header := websocket.headers.get("authorization"):
            principal = node.auth.bearer(header)
        elif token := websocket.query_params.get("access_token"):
            principal = node.auth.verify(token)
        else:
            raise AuthError("missing bearer token")
    except AuthError as exc:
        raise Refused(401, "unauthorized", str(exc)) from None
    if principal.role != OPERATOR:
        raise Refused(403, "forbidden", f"{OPERATOR} role required")
    return principal


async def refuse(websocket: WebSocket, refused: Refused) -> None:
    """An HTTP answer instead of the upgrade, where the server can send one."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = {"error": refused.error, "message": refused.message}
        await websocket.send_denial_response(JSONResponse(body, status_code=refused.status))
    else:
        await websocket.close(code=CLOSE_POLICY, reason=refused.message)
