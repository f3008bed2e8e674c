"""The life of one request: faults first, then Apple's checks in order, then routing to the device."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apnsim import validation
from apnsim.connection import APNsConnection, IncomingStream
from apnsim.devices import Environment, Push
from apnsim.faults import Fault, FaultKind
from apnsim.reasons import STATUS_OF, Reason
from apnsim.records import RecordedRequest

if TYPE_CHECKING:
    from apnsim.server import APNsSimulator


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str | None = None
    timestamp_ms: int | None = None
    unique_id: str | None = None

    @classmethod
    def of(cls, reason: Reason, timestamp_ms: int | None = None) -> Answer:
        return cls(STATUS_OF[reason], str(reason), timestamp_ms)


def _token_in_path(path: str) -> str | None:
    route = validation.check_route("POST", path)
    return route if isinstance(route, str) and route else None


def _echoed_apns_id(stream: IncomingStream) -> str:
    return validation.first_header(stream.regular_headers, "apns-id") or validation.new_apns_id()


class Dispatcher:
    def __init__(self, simulator: APNsSimulator) -> None:
        self._sim = simulator

    async def serve(self, connection: APNsConnection, stream: IncomingStream) -> None:
        sim = self._sim
        token = _token_in_path(stream.pseudo(":path"))
        record = RecordedRequest(
            index=len(sim.log),
            received_at=stream.received_at,
            connection_id=connection.info.id,
            stream_id=stream.stream_id,
            method=stream.pseudo(":method"),
            path=stream.pseudo(":path"),
            headers=stream.headers,
            body=bytes(stream.body),
            token=token,
            apns_id=_echoed_apns_id(stream),
        )
        fault = sim.faults.take(token)
        record.fault = fault
        sim.log.add(record)

        if fault is not None:
            if fault.kind == FaultKind.RESET:
                connection.reset()
                return
            if fault.kind == FaultKind.SILENT:
                return
            if fault.kind == FaultKind.GOAWAY and not fault.answer_before_goaway:
                connection.go_away(
                    fault.goaway_reason, fault.goaway_error_code, last_stream_id=max(stream.stream_id - 2, 0)
                )
                return
            if fault.kind == FaultKind.DELAY:
                await asyncio.sleep(fault.delay)

        if not connection.will_process(stream.stream_id):
            return  # the connection went away meanwhile, promising not to process it
        if fault is not None and fault.kind == FaultKind.REJECT:
            answer = self._answer_fault(fault)
        else:
            answer = self._process(connection, stream, record)
        self._send(connection, stream.stream_id, record, answer)

        if fault is not None and fault.kind == FaultKind.GOAWAY:
            connection.go_away(fault.goaway_reason, fault.goaway_error_code)

    def _answer_fault(self, fault: Fault) -> Answer:
        assert fault.status is not None
        timestamp_ms = None
        if fault.status == 410:
            timestamp_ms = fault.timestamp_ms
            if timestamp_ms is None:
                timestamp_ms = int(self._sim.clock() * 1000)
        return Answer(fault.status, fault.reason, timestamp_ms)

    def _send(self, connection: APNsConnection, stream_id: int, record: RecordedRequest, answer: Answer) -> None:
        headers = [("apns-id", record.apns_id)]
        body = b""
        if answer.unique_id is not None:
            headers.append(("apns-unique-id", answer.unique_id))
        if answer.reason is not None:
            error: dict[str, object] = {"reason": answer.reason}
            if answer.timestamp_ms is not None:
                error["timestamp"] = answer.timestamp_ms
            body = json.dumps(error, separators=(",", ":")).encode()
            headers.append(("content-type", "application/json"))
        if connection.respond(stream_id, answer.status, headers, body):
            self._sim.log.answered(record, answer.status, answer.reason, answer.timestamp_ms, self._sim.clock())

    def _process(self, connection: APNsConnection, stream: IncomingStream, record: RecordedRequest) -> Answer:
        sim = self._sim
        apns_id = record.apns_id
        headers = stream.regular_headers

        route = validation.check_route(stream.pseudo(":method"), stream.pseudo(":path"))
        if isinstance(route, Reason):
            return Answer.of(route)
        token = route

        for name in validation.SINGLE_VALUED_HEADERS:
            if len(validation.header_values(headers, name)) > 1:
                return Answer.of(Reason.DUPLICATE_HEADERS)

        authorization = validation.first_header(headers, "authorization")
        if not authorization:
            return Answer.of(Reason.MISSING_PROVIDER_TOKEN)
        scheme, _, jwt_text = authorization.partition(" ")
        if scheme.lower() != "bearer" or not jwt_text.strip():
            return Answer.of(Reason.INVALID_PROVIDER_TOKEN)
        verified = connection.info.auth.admit(jwt_text.strip(), sim.keyring, sim.clock(), sim.token_update_interval)
        if isinstance(verified, Reason):
            return Answer.of(verified)
        record.key_id, record.team_id = verified.key.key_id, verified.key.team_id
        connection.allow_full_concurrency()

        checked = validation.check_headers(headers)
        if isinstance(checked, Reason):
            return Answer.of(checked)
        allowed = verified.key.bundle_ids
        if allowed is not None and validation.bundle_id_of(checked.topic) not in allowed:
            return Answer.of(Reason.TOPIC_DISALLOWED)

        # A body cut at MAX_BUFFERED_BODY is still far above any payload limit.
        payload = validation.check_payload(bytes(stream.body), checked.push_type)
        if isinstance(payload, Reason):
            return Answer.of(payload)

        if not validation.is_well_formed_token(token):
            return Answer.of(Reason.BAD_DEVICE_TOKEN)
        device = sim.devices.get(token)
        if device is None:
            if sim.strict_tokens:
                return Answer.of(Reason.BAD_DEVICE_TOKEN)
            device = sim.devices.add(checked.topic, sim.environment, token=token, online=True, auto_created=True)
        if device.environment != sim.environment:
            return Answer.of(Reason.BAD_DEVICE_TOKEN)
        if device.topic != checked.topic:
            return Answer.of(Reason.DEVICE_TOKEN_NOT_FOR_TOPIC)
        if device.invalidation is not None:
            return Answer.of(device.invalidation.reason, device.invalidation.timestamp_ms)

        unique_id = str(uuid.uuid4()) if sim.environment == Environment.SANDBOX else None
        push = Push(
            apns_id=apns_id,
            unique_id=unique_id,
            token=device.token,
            topic=checked.topic,
            push_type=checked.push_type,
            priority=checked.priority,
            expiration=checked.expiration,
            collapse_id=checked.collapse_id,
            payload=payload,
            accepted_at=sim.clock(),
            connection_id=connection.info.id,
        )
        sim.accepted.append(push)
        sim.devices.accept(device, push)
        return Answer(200, unique_id=unique_id)
