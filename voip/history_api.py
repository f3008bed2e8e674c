"""The user's own calls and availability, over HTTP with a device's bearer token:
`GET /v1/calls`, `POST /v1/calls/seen`, `GET`/`PUT /v1/me/availability`
(docs/protocol.md §2; stores: voip/stores/history.py)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from starlette.requests import Request
from starlette.responses import Response

from voip.api import DEVICE_ID, ApiError, JSONResponse, authenticate, json_body, node_of
from voip.history import DEFAULT_LIMIT, MAX_LIMIT, BadCursor, Cursor
from voip.protocol import FrameType
from voip.stores import Availability

Millis = Annotated[StrictInt, Field(ge=0, lt=2**53)]
# How far ahead of the server's clock a seen mark may be (a device's clock runs fast);
# further is a client's mistake, and refused rather than hiding calls not made yet.
SEEN_AHEAD_MS = 24 * 3600 * 1000


class SeenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    up_to: Millis


class AvailabilityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dnd: StrictBool
    until: Millis | None = None
    when_busy: Literal["ring", "reject"]


def _now() -> int:
    return int(time.time() * 1000)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "validation_error", "the request is invalid", detail=[{"field": field, "message": message}])


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 3 or not 1 <= int(raw) <= MAX_LIMIT:
        raise _invalid("limit", f"an integer from 1 to {MAX_LIMIT}")
    return int(raw)


async def list_calls(request: Request) -> Response:
    """`GET /v1/calls?cursor=&limit=`: the user's calls, placed and received, newest first."""
    principal = authenticate(request, "device")
    params = request.query_params
    unknown = set(params) - {"cursor", "limit"}
    if unknown:
        raise _invalid(sorted(unknown)[0], "unknown query parameter")
    limit = _limit(params.get("limit"))
    after = None
    if "cursor" in params:
        try:
            after = Cursor.decode(params["cursor"])
        except BadCursor as exc:
            raise _invalid("cursor", str(exc)) from None
    history = node_of(request).stores.history
    now = _now()
    calls, following = await history.page(principal.user_id, limit=limit, after=after, now=now)
    seen = await history.seen_mark(principal.user_id)
    unseen = await history.missed_unseen(principal.user_id, seen, {c.call_id: c for c in calls})
    return JSONResponse(
        {
            "calls": [call.body() for call in calls],
            "next_cursor": following.encode() if following is not None else None,
            "missed_unseen": unseen,
        }
    )


async def mark_seen(request: Request) -> Response:
    """`POST /v1/calls/seen {"up_to": ms}`: missed calls started at or before `up_to` are
    seen, on every device: the user's other connected devices get `calls.seen`."""
    principal = authenticate(request, "device")
    device_id = request.query_params.get("device_id")
    if device_id is not None and not DEVICE_ID.match(device_id):
        raise _invalid("device_id", "1-64 of A-Z a-z 0-9 . _ : -")
    body: SeenIn = await json_body(request, SeenIn)
    now = _now()
    if body.up_to > now + SEEN_AHEAD_MS:
        raise _invalid("up_to", "more than a day ahead of the server's clock (ms since the epoch?)")
    node = node_of(request)
    history = node.stores.history
    # Never past now: a fast device clock must not hide the calls of the next minutes.
    mark = await history.mark_seen(principal.user_id, min(body.up_to, now))
    unseen = await history.missed_unseen(principal.user_id, mark)
    frame = {"type": FrameType.CALLS_SEEN, "up_to": mark, "missed_unseen": unseen}
    await node.bus.publish(principal.user_id, frame, exclude=[device_id] if device_id is not None else ())
    return JSONResponse({"up_to": mark, "missed_unseen": unseen})


async def availability(request: Request) -> Response:
    """`GET` and `PUT /v1/me/availability`: one path, so that a 405 lists both methods."""
    principal = authenticate(request, "device")
    store = node_of(request).stores.availability
    now = _now()
    if request.method == "PUT":
        body: AvailabilityIn = await json_body(request, AvailabilityIn)
        if body.until is not None and not body.dnd:
            raise _invalid("until", "only with dnd: true")
        if body.until is not None and body.until <= now:
            raise _invalid("until", "must be in the future (ms since the epoch)")
        await store.put(principal.user_id, Availability(body.dnd, body.until, body.when_busy))
    current = await store.get(principal.user_id)
    return JSONResponse(current.at(now).body())
