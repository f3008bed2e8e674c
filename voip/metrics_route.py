"""`GET /metrics` for Prometheus, for operators only (bearer token with role operator)."""

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from voip.api import authenticate


async def metrics(request: Request) -> Response:
    authenticate(request, "operator")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
