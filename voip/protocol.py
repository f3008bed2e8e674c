"""The WebSocket protocol: what a device may send, checked field by field.
Every message is documented in docs/protocol.md."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, field_validator

from voip.display_names import MAX_RAW_DISPLAY_NAME

# `custom` in call.start (and in the call hook's answer): a JSON object, 1 KiB at most.
MAX_CUSTOM_BYTES = 1024

# User and device ids travel in Redis keys and channel names: keep them to a safe alphabet.
ID_PATTERN = r"^[A-Za-z0-9._@+:-]{1,128}$"
UserId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
RequestId = Annotated[str, StringConstraints(max_length=64)] | Annotated[int, Field(ge=0, lt=2**53)]


class FrameType(StrEnum):
    """Every `type` a device's WebSocket carries, either way; docs/protocol.md §1 lists
    the same set (tests/test_protocol_docs.py holds them together)."""

    # Client -> server
    CALL_START = "call.start"
    CALL_ANSWER = "call.answer"
    CALL_DECLINE = "call.decline"
    CALL_HANGUP = "call.hangup"
    PING = "ping"
    # Both ways
    CALL_RINGING = "call.ringing"
    CALL_SIGNAL = "call.signal"
    # Server -> client: replies
    HELLO = "hello"
    ACK = "ack"
    CALL_STARTED = "call.started"
    PONG = "pong"
    ERROR = "error"
    CALL_ERROR = "call.error"
    # Server -> client: call events
    CALL_INCOMING = "call.incoming"
    CALL_ANSWERED = "call.answered"
    CALL_ANSWERED_ELSEWHERE = "call.answered_elsewhere"
    CALL_CANCELLED = "call.cancelled"
    CALL_DECLINED = "call.declined"
    CALL_MISSED = "call.missed"
    CALL_FAILED = "call.failed"
    CALL_ENDED = "call.ended"
    DEVICE_REREGISTER = "device.reregister"
    CALLS_SEEN = "calls.seen"
    RECONNECT = "reconnect"


def canonical_call_id(value: str) -> str:
    """CallKit hands out upper-case UUIDs; we store the canonical lower-case form."""
    return str(uuid.UUID(value))


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: RequestId | None = None


class _CallMessage(_Message):
    call_id: str

    @field_validator("call_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if len(value) > 64:
            raise ValueError("call_id must be a UUID")
        try:
            return canonical_call_id(value)
        except ValueError:
            raise ValueError("call_id must be a UUID") from None


class CallStart(_Message):
    type: Literal[FrameType.CALL_START]
    callee: UserId
    call_id: str | None = None
    # Cleaned and cut by the controller (voip/display_names.py), whichever path it came by.
    caller_name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_RAW_DISPLAY_NAME)] | None = None
    sdp: Annotated[str, StringConstraints(max_length=32768)] | None = None  # the offer, for SIP callees
    # The app's own data for the call: to call.incoming and the push, and to the call hook.
    custom: dict[str, Any] | None = None

    @field_validator("call_id")
    @classmethod
    def _uuid(cls, value: str | None) -> str | None:
        return None if value is None else _CallMessage._uuid(value)

    @field_validator("custom")
    @classmethod
    def _custom(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(orjson.dumps(value)) > MAX_CUSTOM_BYTES:
            raise ValueError(f"must be {MAX_CUSTOM_BYTES} bytes of JSON or less")
        return value


class CallRinging(_CallMessage):
    type: Literal[FrameType.CALL_RINGING]


class CallAnswer(_CallMessage):
    type: Literal[FrameType.CALL_ANSWER]
    sdp: Annotated[str, StringConstraints(max_length=32768)] | None = None


class CallDecline(_CallMessage):
    type: Literal[FrameType.CALL_DECLINE]
    busy: bool = False  # a SIP caller hears 486 Busy Here instead of 603 Decline


class CallHangup(_CallMessage):
    type: Literal[FrameType.CALL_HANGUP]


class CallSignal(_CallMessage):
    type: Literal[FrameType.CALL_SIGNAL]
    payload: Any


class Ping(_Message):
    type: Literal[FrameType.PING]


ClientMessage = Annotated[
    CallStart | CallRinging | CallAnswer | CallDecline | CallHangup | CallSignal | Ping,
    Field(discriminator="type"),
]
client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
MESSAGE_TYPES = frozenset(
    (
        FrameType.CALL_START,
        FrameType.CALL_RINGING,
        FrameType.CALL_ANSWER,
        FrameType.CALL_DECLINE,
        FrameType.CALL_HANGUP,
        FrameType.CALL_SIGNAL,
        FrameType.PING,
    )
)


def error_frame(code: str, message: str, request_id: Any = None, call_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": FrameType.ERROR, "code": code, "message": message}
    if request_id is not None:
        frame["id"] = request_id
    if call_id is not None:
        frame["call_id"] = call_id
    return frame


# Why a request about a call was refused; the same words go to the device.
CALL_ERRORS = {
    "unknown_call": "no such call for this device",
    "not_in_call": "this device is not in that call",
    "not_callee": "only the callee's devices may send this",
    "invalid_state": "the call is not in a state that allows this",
    "call_exists": "a call with this call_id exists already",
    "invalid_callee": "you cannot call yourself",
}


def call_error_frame(request_id: Any, call_id: str, message: str | None) -> dict[str, Any]:
    """The reply to a `call.start` that the app's backend refused (the call hook)."""
    frame: dict[str, Any] = {
        "type": FrameType.CALL_ERROR,
        "call_id": call_id,
        "reason": "call_rejected",
        "message": message or "the call was not allowed",
    }
    if request_id is not None:
        frame["id"] = request_id
    return frame


# Why a new call was refused (`code: "call_refused"`, `reason` one of these).
CALL_REFUSALS = {
    "callee_busy": "too many calls are ringing this callee; try again when one ends",
    "rate_limited": "too many calls to this callee this minute; retry after retry_after seconds",
}
