"""FCMSimulator: Google's OAuth2 token endpoint and FCM HTTP v1's `messages:send` on
loopback (HTTP/1.1, plain or over TLS), with simulated phones, faults, records, and a small
HTTP API under `/sim/` for tests in other processes.

``async with FCMSimulator() as sim:`` starts it; ``sim.create_service_account()`` gives a
key file's JSON whose `token_uri` points here, ``sim.endpoint`` the value for FCM_ENDPOINT.
``FCMSimulator(tls=True)`` serves https, as Google does, with a certificate from a CA of its
own: ``sim.ca_file`` is the value for FCM_CA_FILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fcmsim.accounts import Accounts, generate_service_account
from fcmsim.devices import Delivery, Device, DeviceRegistry, Drop
from fcmsim.errors import BAD_TOKEN_MESSAGE, ErrorCode, fcm_error, invalid_payload, permission_denied, unauthenticated
from fcmsim.faults import Fault, FaultBook, InjectedFault
from fcmsim.records import MessageLog, Predicate, RecordedMessage
from fcmsim.validation import Message, check
from simtls import TLSMaterial, generate_tls_material

DEFAULT_PROJECT = "sim-project"
MAX_BODY = 256 * 1024


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handlers: the simulator runs inside a node (or a test)
    whose own handlers must stay in place."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class FCMSimulator:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        strict_tokens: bool = False,
        clock: Callable[[], float] | None = None,
        token_lifetime: float = 3599,
        tls: bool = False,
        directory: str | Path | None = None,
    ) -> None:
        """`tls`: serve https, on a certificate for 127.0.0.1 and localhost signed by a CA
        made at start, written into `directory` (a temporary one, removed at stop, if None)."""
        self.host = host
        self._requested_port = port
        self.tls = tls
        self._directory = Path(directory) if directory is not None else None
        self._owned_directory: Path | None = None
        self._tls: TLSMaterial | None = None
        self.strict_tokens = strict_tokens
        """Unknown tokens get 400 INVALID_ARGUMENT instead of becoming online phones."""
        self.clock: Callable[[], float] = clock or time.time
        self.accounts = Accounts(self.clock, token_lifetime)
        self.faults = FaultBook()
        self.log = MessageLog()
        self.devices = DeviceRegistry(self.clock, on_delivery=self._delivered)
        self.delivery_listeners: list[Callable[[Device, Delivery], None]] = []
        """Called for every message handed to a phone (the device simulator listens)."""
        self.token_requests = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._port: int | None = None
        self.app = Starlette(
            routes=[
                Route("/token", self._token, methods=["POST"]),
                Route("/v1/projects/{project}/messages:send", self._send, methods=["POST"]),
                Route("/sim/messages", self._sim_messages, methods=["GET"]),
                Route("/sim/service-accounts", self._sim_service_account, methods=["POST"]),
                Route("/sim/devices", self._sim_add_device, methods=["POST"]),
                Route("/sim/devices/{token}", self._sim_device, methods=["GET", "DELETE"]),
                Route("/sim/devices/{token}/{state:str}", self._sim_device_state, methods=["POST"]),
                Route("/sim/faults", self._sim_faults, methods=["POST", "DELETE"]),
            ]
        )

    # lifecycle

    async def start(self) -> None:
        if self._server is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._requested_port))
        self._port = listener.getsockname()[1]
        if self.tls:
            self._tls = generate_tls_material(self._material_directory(), issuer="fcmsim")
        # With TLS, uvicorn's ALPN names HTTP/1.1 alone: a client that offers h2 as well
        # (the FCM sender's httpx, as to Google) speaks HTTP/1.1 here.
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=120,  # longer than a client keeps an idle connection
            ssl_certfile=self._tls.cert_file if self._tls is not None else None,
            ssl_keyfile=self._tls.key_file if self._tls is not None else None,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[listener]), name="fcmsim")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        server, task, self._server, self._task = self._server, self._task, None, None
        if server is None or task is None:
            return
        server.should_exit = True
        await task
        owned, self._owned_directory = self._owned_directory, None
        if owned is not None:
            shutil.rmtree(owned, ignore_errors=True)

    def _material_directory(self) -> Path:
        if self._directory is not None:
            return self._directory
        self._owned_directory = Path(tempfile.mkdtemp(prefix="fcmsim-"))
        return self._owned_directory

    async def __aenter__(self) -> FCMSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def endpoint(self) -> str:
        """`http://host:port` (`https://` with `tls`), the value for FCM_ENDPOINT."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def ca_file(self) -> str:
        """PEM of the CA that signed the server certificate, the value for FCM_CA_FILE."""
        if self._tls is None:
            raise RuntimeError("the simulator is not serving TLS" if not self.tls else "the simulator is not running")
        return str(self._tls.ca_file)

    @property
    def token_uri(self) -> str:
        return f"{self.endpoint}/token"

    # service accounts

    def create_service_account(self, project_id: str = DEFAULT_PROJECT, name: str = "fcm-sender") -> dict[str, Any]:
        """A new key file's JSON (its `token_uri` here), trusted by this simulator."""
        key = generate_service_account(project_id, self.token_uri, name)
        self.accounts.trust(key)
        return key

    def trust(self, key: dict[str, Any]) -> dict[str, Any]:
        """Trust an existing key file (its `token_uri` rewritten to point here)."""
        key = {**key, "token_uri": self.token_uri}
        self.accounts.trust(key)
        return key

    # phones

    def add_device(self, token: str | None = None, *, online: bool = True) -> Device:
        """A phone whose app registered `token` (a fresh FCM-like one if None)."""
        return self.devices.add(token or new_token(), online=online)

    def device(self, token: str) -> Device:
        device = self.devices.get(token)
        if device is None:
            raise KeyError(token)
        return device

    def set_online(self, token: str, online: bool) -> list[Delivery]:
        return self.devices.set_online(self.device(token), online)

    def uninstall(self, token: str) -> None:
        """The app is gone: FCM answers 404 UNREGISTERED for its token from now on."""
        self.device(token).registered = False

    def _delivered(self, device: Device, delivery: Delivery) -> None:
        for listener in self.delivery_listeners:
            listener(device, delivery)

    # faults

    def inject(self, fault: Fault, token: str | None = None, times: int | None = 1) -> InjectedFault:
        """Misbehave on the next `times` messages for `token` (every token if None);
        `times=None`: until removed."""
        return self.faults.inject(fault, token, times)

    def remove_fault(self, entry: InjectedFault) -> None:
        self.faults.remove(entry)

    def clear_faults(self) -> None:
        self.faults.clear()

    # records

    @property
    def messages(self) -> list[RecordedMessage]:
        return self.log.messages

    async def wait_for(self, predicate: Predicate, timeout: float = 5.0, since: int = 0) -> RecordedMessage:
        return await self.log.wait_for(predicate, timeout, since)

    def fate(self, record: RecordedMessage) -> dict[str, Any]:
        """What became of an answered message: delivered, stored, dropped or refused."""
        if record.status is None:
            return {"delivery": "unanswered"}
        if record.status != 200:
            return {"delivery": "refused"}
        device = self.devices.get(record.token or "")
        if device is None:
            return {"delivery": "unknown"}
        for delivery in device.inbox:
            if delivery.name == record.name:
                return {"delivery": "delivered", "stored": delivery.stored}
        if any(stored.name == record.name for stored in device.pending):
            return {"delivery": "stored", "stored": True}
        for drop in device.dropped:
            if drop.name == record.name:
                return {"delivery": "dropped", "cause": drop.cause.value}
        return {"delivery": "unknown"}

    # the token endpoint

    async def _token(self, request: Request) -> Response:
        self.token_requests += 1
        # application/x-www-form-urlencoded, parsed here: Starlette's form() needs python-multipart.
        fields = dict(parse_qsl((await request.body()).decode("latin-1"), keep_blank_values=True))
        status, body = self.accounts.exchange(fields, self.token_uri)
        return _json(status, body)

    # messages:send

    async def _send(self, request: Request) -> Response:
        project: str = request.path_params["project"]
        record = RecordedMessage(len(self.log), self.clock(), project, None, None)
        self.log.add(record)
        status, body, headers = await self._answer(request, project, record)
        record.status = status
        if status == 200:
            record.name = body["name"]
        else:
            error = body.get("error", {})
            codes = [d.get("errorCode") for d in error.get("details", []) if "errorCode" in d]
            record.error = codes[0] if codes else error.get("status")
        self.log.answered()
        return _json(status, body, headers)

    async def _answer(
        self, request: Request, project: str, record: RecordedMessage
    ) -> tuple[int, Any, dict[str, str] | None]:
        access = self.accounts.bearer(request.headers.get("authorization"))
        if access is None:
            return (*unauthenticated(), None)
        if access.account.project_id != project:
            return (*permission_denied(project), None)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return (*invalid_payload("Request payload size exceeds the limit", ""), None)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return (*invalid_payload("Invalid JSON payload received. Unexpected token.", ""), None)
        record.body = body
        message = body.get("message") if isinstance(body, dict) else None
        if isinstance(message, dict) and isinstance(message.get("token"), str):
            record.token = message["token"]
        fault = self.faults.take(record.token or "")
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.code is not None:
            headers = {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else None
            return (*fcm_error(fault.code, fault.message), headers)
        checked = check(body)
        if not isinstance(checked, Message):
            return (*checked, None)
        if body.get("validate_only") or body.get("validateOnly"):
            return 200, {"name": f"projects/{project}/messages/fake_message_id"}, None
        device = self.devices.get(checked.token)
        if device is None:
            if self.strict_tokens:
                return (*fcm_error(ErrorCode.INVALID_ARGUMENT, BAD_TOKEN_MESSAGE, field="message.token"), None)
            device = self.devices.add(checked.token)
        if not device.registered:
            return (*fcm_error(ErrorCode.UNREGISTERED), None)
        name = f"projects/{project}/messages/0:{int(self.clock() * 1_000_000)}%{secrets.token_hex(8)}"
        self.devices.accept(device, checked, name)
        return 200, {"name": name}, None

    # the HTTP API for tests

    async def _sim_messages(self, request: Request) -> Response:
        return _json(200, {"messages": [{**r.view(), **self.fate(r)} for r in self.messages]})

    async def _sim_service_account(self, request: Request) -> Response:
        body = await _body(request)
        project = body.get("project_id", DEFAULT_PROJECT)
        if not isinstance(project, str) or not project:
            return _json(400, {"error": "project_id: a string"})
        return _json(201, self.create_service_account(project))

    async def _sim_add_device(self, request: Request) -> Response:
        body = await _body(request)
        token = body.get("token")
        if token is not None and not isinstance(token, str):
            return _json(400, {"error": "token: a string"})
        device = self.add_device(token, online=bool(body.get("online", True)))
        return _json(201, _device_view(device))

    async def _sim_device(self, request: Request) -> Response:
        device = self.devices.get(request.path_params["token"])
        if device is None:
            return _json(404, {"error": "no such device"})
        if request.method == "DELETE":
            device.registered = False
        return _json(200, _device_view(device))

    async def _sim_device_state(self, request: Request) -> Response:
        device = self.devices.get(request.path_params["token"])
        state = request.path_params["state"]
        if device is None or state not in ("online", "offline"):
            return _json(404, {"error": "no such device or state (online, offline)"})
        self.devices.set_online(device, state == "online")
        return _json(200, _device_view(device))

    async def _sim_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_faults()
            return _json(200, {"faults": 0})
        body = await _body(request)
        try:
            code = ErrorCode(body["code"]) if body.get("code") is not None else None
            fault = Fault(
                code,
                delay=float(body.get("delay", 0)),
                retry_after=body.get("retry_after"),
                message=body.get("message"),
            )
            times = body.get("times", 1)
            token = body.get("token")
            if (times is not None and not isinstance(times, int)) or (token is not None and not isinstance(token, str)):
                raise ValueError("times: an integer or null; token: a string or null")
        except (ValueError, TypeError) as exc:
            return _json(400, {"error": str(exc)})
        entry = self.inject(fault, token, times)
        return _json(201, {"id": entry.id})


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _message_view(message: Message, name: str) -> dict[str, Any]:
    return {"name": name, "data": message.data, "priority": message.priority, "collapse_key": message.collapse_key}


def _drop_view(drop: Drop) -> dict[str, Any]:
    return {**_message_view(drop.message, drop.name), "cause": drop.cause.value}


def _device_view(device: Device) -> dict[str, Any]:
    return {
        "token": device.token,
        "online": device.online,
        "registered": device.registered,
        "inbox": [{**_message_view(d.message, d.name), "stored": d.stored} for d in device.inbox],
        "pending": [_message_view(s.message, s.name) for s in device.pending],
        "dropped": [_drop_view(d) for d in device.dropped],
    }


def new_token() -> str:
    """An FCM-looking registration token: `<instance id>:APA91b<...>`."""
    return f"{secrets.token_urlsafe(16)[:22]}:APA91b{secrets.token_urlsafe(105)[:134]}"
