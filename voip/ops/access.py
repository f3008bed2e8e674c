"""Who may look: operators only. HTTP routes use the API's bearer check. The live feed
takes the token in the Authorization header (scripts), or a one-use ticket (the page):
browsers cannot set headers on a WebSocket, and a bearer token in a URL ends up in
proxies' and servers' logs. A ticket in a URL is worth nothing once used, and nothing
after a few seconds. `access_token` in the query is still accepted, for existing clients.
Every refusal comes before the upgrade is accepted."""

from __future__ import annotations

import hashlib
import secrets

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from voip.api import JSONResponse, authenticate, node_of
from voip.auth import AuthError, Principal
from voip.node import Node

OPERATOR = "operator"
CLOSE_POLICY = 1008
TICKET_BYTES = 32
MAX_TICKET = 64


class Refused(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _digest(ticket: str) -> str:
    # Redis holds only a hash: reading Redis does not hand out live tickets.
    return hashlib.sha256(ticket.encode()).hexdigest()


async def live_ticket(request: Request) -> Response:
    """`POST /v1/ops/live/ticket`: a ticket that opens `/v1/ops/live` once, for this
    operator, within `VOIP_OPS_TICKET_TTL` seconds."""
    principal = authenticate(request, OPERATOR)
    node = node_of(request)
    ticket = secrets.token_urlsafe(TICKET_BYTES)
    ttl = node.settings.ops_ticket_ttl
    await node.stores.ops.put_ticket(_digest(ticket), principal.user_id, ttl)
    return JSONResponse({"ticket": ticket, "expires_in": ttl}, headers={"Cache-Control": "no-store"})


async def _redeem(node: Node, ticket: str) -> Principal:
    if not (ticket.isascii() and len(ticket) <= MAX_TICKET):
        raise AuthError("invalid or expired ticket")
    user_id = await node.stores.ops.take_ticket(_digest(ticket))
    if user_id is None:
        raise AuthError("invalid or expired ticket")
    return Principal(user_id=user_id, role="operator")


async def socket_operator(websocket: WebSocket, node: Node) -> Principal:
    try:
        if header := websocket.headers.get("authorization"):
            principal = node.auth.bearer(header)
        elif ticket := websocket.query_params.get("ticket"):
            principal = await _redeem(node, ticket)
        elif token := websocket.query_params.get("access_token"):
            principal = node.auth.verify(token)
        else:
            raise AuthError("missing bearer token or ticket")
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
