"""`GET /ops`: the operators' page, three static files shipped in the package. It holds
no data, so it needs no token; every request it makes for data does."""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "ops.js": "text/javascript; charset=utf-8",
    "ops.css": "text/css; charset=utf-8",
}
HEADERS = {
    # Only this origin, no inline code: the page keeps an operator token in sessionStorage.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("voip.ops").joinpath("static", name).read_bytes()


async def page(request: Request) -> Response:
    return Response(_asset("index.html"), media_type=ASSETS["index.html"], headers=HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS or name == "index.html":
        return Response(b'{"error":"not_found","message":"no such file"}', 404, media_type="application/json")
    return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)
