"""The asyncio edge of the SIP stack: sockets, the clock and the TU callbacks.

:class:`SipEndpoint` owns UDP and TCP (and optionally TLS) sockets on one
host:port, feeds what arrives to :func:`parse_datagram` / :class:`StreamParser`
and the :class:`UserAgentCore`, keeps a single loop timer at the core's
``next_deadline()``, turns :class:`SendMessage` events into writes and the
other events into calls on the application (the transaction user, TU).
Everything with SIP semantics lives in the pure modules; this file only moves
bytes, owns the clock and runs the TU's tasks.

What a UA does above its transactions (2xx retransmission, ACK repetition,
CANCEL) is the pure :class:`UserAgentCore`; this file hands its events to the
:class:`TransactionUser`.

UAS side: the TU implements ``async def on_request(event)`` and answers with
:meth:`SipEndpoint.send_response` / :meth:`SipEndpoint.reply`, whenever it
likes.

WebSocket (RFC 7118): the HTTP server owns the socket; it hands the endpoint
each frame through a :class:`WebSocketFlow` from :meth:`SipEndpoint.open_websocket`,
and the endpoint writes back through the flow's ``send``.  One frame is one SIP
message, transport ``WS`` (or ``WSS``).

UAC side: :meth:`SipEndpoint.send_request` returns a
:class:`ClientTransaction`; awaiting it gives the final response (a
synthesised 408 on timeout, 503 on transport failure).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, cast

from .message import (
    MAX_DATAGRAM_SIZE,
    URI,
    HeaderValue,
    NameAddr,
    ParseError,
    Request,
    Response,
    StreamParser,
    Via,
    build_response,
    generate_branch,
    generate_tag,
    parse_datagram,
    reason_phrase,
)
from .ratelimit import TokenBucketLimiter
from .transaction import (
    AMPLIFICATION_LIMIT,
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    Addr,
    RequestReceived,
    ResponseReceived,
    SendMessage,
    TimerConfig,
    TransactionKey,
    TransactionTimeout,
    TransportError,
    build_cancel,
)
from .useragent import AckTimeout, InviteCancelled, StrayResponse, UAEvent, UserAgentCore

__all__ = ["ClientTransaction", "SipEndpoint", "TransactionUser", "WebSocketFlow"]

log = logging.getLogger("sip.endpoint")

STREAM_TRANSPORTS = ("TCP", "TLS")
WS_TRANSPORTS = ("WS", "WSS")
# Connection-oriented: requests to a peer that reached us this way go back over its own
# connection while it is open (a WebSocket client cannot be reached any other way).
FLOW_TRANSPORTS = STREAM_TRANSPORTS + WS_TRANSPORTS
# WebSocket close codes (RFC 6455 §7.4.1).
WS_GOING_AWAY = 1001
WS_POLICY = 1008
DEFAULT_ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER")


class TransactionUser:
    """What the application provides: subclass it and override ``on_request``,
    and whichever of the other events matter to it (they do nothing here)."""

    async def on_request(self, event: RequestReceived) -> None:
        raise NotImplementedError

    def on_cancel(self, event: RequestReceived, invite: Request) -> None:
        """A CANCEL was answered 200 and ``invite`` 487 (``auto_cancel``)."""

    def on_stray_response(self, event: ResponseReceived) -> None:
        """A response no client transaction waits for (e.g. a 2xx from another fork)."""

    def on_ack_timeout(self, response: Response) -> None:
        """No ACK for our 2xx within 64*T1; the TU should send a BYE (§13.3.1.4)."""

    def on_server_timeout(self, event: TransactionTimeout) -> None:
        """Timer H: no ACK for our 3xx-6xx to INVITE."""

    def on_flow_closed(self, transport: str, peer: Addr) -> None:
        """A WebSocket flow ended: nothing reaches that peer any more (its Contact is
        usually ``*.invalid``), so bindings and calls over it are the TU's to drop."""


class ClientTransaction:
    """One request we sent; awaiting it gives the final :class:`Response`.

    ``provisionals`` collects 1xx responses as they arrive, and
    ``on_provisional`` (if given) is called for each.  A timeout comes back
    as a synthesised 408 and a transport failure as a 503, both with
    ``synthetic`` set, so the TU only ever handles responses.
    """

    def __init__(
        self,
        endpoint: SipEndpoint,
        request: Request,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.request = request
        self.on_provisional = on_provisional
        self.key: TransactionKey | None = None
        self.destination: Addr | None = None
        self.transport: str | None = None
        self.provisionals: list[Response] = []
        self.response: Response | None = None
        self.synthetic = False
        self.cancel_transaction: ClientTransaction | None = None
        self._cancel_requested = False
        self._final: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.request.method} {self.key}>"

    def __await__(self) -> Generator[Any, None, Response]:
        return asyncio.shield(self._final).__await__()

    @property
    def done(self) -> bool:
        return self._final.done()

    async def final(self) -> Response:
        return await asyncio.shield(self._final)

    def cancel(self) -> None:
        """CANCEL a pending INVITE (§9.1).  Sent once a provisional response
        has arrived, as §9.1 asks; nothing happens after a final response.
        The INVITE then normally ends with a 487; if a 2xx wins the race the
        TU must ACK it and send a BYE."""
        if self.request.method != "INVITE":
            raise ValueError("only an INVITE can be cancelled")
        if self.done or self._cancel_requested:
            return
        self._cancel_requested = True
        if self.provisionals:
            self._send_cancel()

    def _send_cancel(self) -> None:
        if self.destination is None or self.transport is None:
            return
        self.cancel_transaction = self.endpoint.send_request(
            build_cancel(self.request), self.destination, self.transport
        )

    def _receive(self, response: Response) -> None:
        if self.done:
            return
        if response.status < 200:
            self.provisionals.append(response)
            if self._cancel_requested and self.cancel_transaction is None:
                self._send_cancel()
            if self.on_provisional is not None:
                self.on_provisional(response)
            return
        self.response = response
        self._final.set_result(response)

    def _fail(self, status: int) -> None:
        if self.done:
            return
        response = build_response(self.request, status)
        self.response = response
        self.synthetic = True
        self._final.set_result(response)


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, accepted or opened by us."""

    def __init__(self, endpoint: SipEndpoint, transport_name: str) -> None:
        self.endpoint = endpoint
        self.name = transport_name
        self.parser = StreamParser()
        self.transport: asyncio.Transport | None = None
        self.peer: Addr = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports (uvicorn serves on uvloop) are
        # asyncio.Transport-alike, not subclasses.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.endpoint._conns[(self.name, self.peer)] = self

    def connection_lost(self, exc: Exception | None) -> None:
        if self.endpoint._conns.get((self.name, self.peer)) is self:
            del self.endpoint._conns[(self.name, self.peer)]
        self.transport = None

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while self.transport is not None:
            try:
                message = self.parser.next_message()
            except ParseError as err:
                self.endpoint._unparseable(err, err.head, self.peer, self.name, self)
                if err.fatal:
                    self.transport.close()
                    return
                continue
            if message is None:
                return
            self.endpoint._arrived(message, self.peer, self.name)


class WebSocketFlow:
    """One SIP-over-WebSocket connection (RFC 7118), held by the HTTP server.

    The server calls :meth:`receive` with each frame's payload and :meth:`closed` when
    the socket ends; the endpoint writes through ``send`` (one SIP message per call;
    it must not block: the server queues it) and ends the socket through ``close``
    (a WebSocket close code and reason).  ``peer`` is the key the flow is known by in
    Vias, bindings and transactions: the client's address, or a made-up port when that
    address is taken (clients behind one proxy, or a server that gives port 0).
    """

    def __init__(
        self,
        endpoint: SipEndpoint,
        transport: str,
        peer: Addr,
        send: Callable[[bytes], None],
        close: Callable[[int, str], None],
    ) -> None:
        self.endpoint = endpoint
        self.name = transport
        self.peer = peer
        self._send = send
        self._close = close
        self._open = True
        self.refused_in_a_row = 0

    @property
    def open(self) -> bool:
        return self._open

    def write(self, data: bytes) -> None:
        if self._open:
            self._send(data)

    def receive(self, data: bytes | str) -> None:
        """One frame, text or binary, holding one SIP message (RFC 7118 §5)."""
        if self._open:
            self.endpoint._ws_frame(self, data.encode("utf-8") if isinstance(data, str) else data)

    def close(self, code: int, reason: str) -> None:
        """End the socket from our side (the server then calls :meth:`closed`)."""
        if self._open:
            self._close(code, reason)
            self.closed()

    def closed(self) -> None:
        """The socket ended: the flow is gone, and what waited on it fails now."""
        if not self._open:
            return
        self._open = False
        self.endpoint._flow_closed(self)


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.endpoint._datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like: the transaction's timers take care.
        self.endpoint.stats["udp_errors"] += 1


class SipEndpoint:
    """UDP + TCP (+ TLS) SIP node on ``host:port`` driving a :class:`UserAgentCore`.

    ``port=0`` picks a free port shared by UDP and TCP.  ``public_host`` is
    what goes into Via and Contact (default: ``host``).  ``rate_limiter``
    is applied per source IP to every message before parsing; what it
    refuses is dropped and counted in ``stats["dropped_rate_limited"]``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        transports: Iterable[str] = ("UDP", "TCP"),
        public_host: str | None = None,
        timers: TimerConfig | None = None,
        rate_limiter: TokenBucketLimiter | None = None,
        tls_server_context: ssl.SSLContext | None = None,
        tls_client_context: ssl.SSLContext | None = None,
        tls_port: int | None = None,
        max_datagram_size: int = MAX_DATAGRAM_SIZE,
        auto_cancel: bool = True,
        trusted: Callable[[str], bool] | None = None,
        ws_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._requested_port = port
        self.transports = tuple(t.upper() for t in transports)
        self.public_host = public_host or host
        self.timers = timers or TimerConfig()
        self.core = UserAgentCore(self.timers, auto_cancel=auto_cancel)
        self.rate_limiter = rate_limiter
        self.tls_server_context = tls_server_context
        self.tls_client_context = tls_client_context
        self.tls_port = tls_port
        self.max_datagram_size = max_datagram_size
        self.trusted = trusted
        # The HTTP port WebSocket clients reach us on, for Via and Contact (None: not known).
        self.ws_port = ws_port
        # Sees every message that reaches the transaction layer ("in") or leaves ("out"):
        # the application's metrics or tracing; the stack itself keeps only `stats`.
        self.on_message: Callable[[str, Request | Response], None] | None = None
        self.stats: Counter[str] = Counter()
        self.tu: TransactionUser | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._servers: list[asyncio.Server] = []
        self._conns: dict[tuple[str, Addr], _StreamConnection | WebSocketFlow] = {}
        self._next_flow_port = 65536  # made-up ports for WebSocket flows whose address is taken
        self.websockets_open = 0
        self._connecting: dict[tuple[str, Addr], list[tuple[bytes, TransactionKey | None]]] = {}
        self._clients: dict[TransactionKey, ClientTransaction] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # -- lifecycle

    async def start(self, tu: TransactionUser) -> None:
        self.tu = tu
        self._loop = asyncio.get_running_loop()
        for attempt in range(20):
            try:
                await self._bind()
                return
            except OSError as err:
                await self._close_sockets()
                # With port 0 the free UDP port may be taken on TCP: try another.
                if self._requested_port == 0 and err.errno == errno.EADDRINUSE and attempt < 19:
                    self.port = 0
                    continue
                raise

    async def _bind(self) -> None:
        loop = self._loop
        assert loop is not None
        if "UDP" in self.transports:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self), local_addr=(self.host, self.port)
            )
            self._udp = transport
            self.port = transport.get_extra_info("sockname")[1]
        if "TCP" in self.transports:
            server = await loop.create_server(
                lambda: _StreamConnection(self, "TCP"), self.host, self.port, reuse_address=True
            )
            self._servers.append(server)
            self.port = server.sockets[0].getsockname()[1]
        if self.tls_server_context is not None:
            server = await loop.create_server(
                lambda: _StreamConnection(self, "TLS"),
                self.host,
                self.tls_port if self.tls_port is not None else DEFAULT_TLS_PORT,
                ssl=self.tls_server_context,
                reuse_address=True,
            )
            self._servers.append(server)
            self.tls_port = server.sockets[0].getsockname()[1]

    async def _close_sockets(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns.values()):
            if isinstance(conn, WebSocketFlow):
                conn.close(WS_GOING_AWAY, "SIP endpoint closing")
            elif conn.transport is not None:
                conn.transport.close()
        await self._close_sockets()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> SipEndpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- helpers for the TU

    def now(self) -> float:
        assert self._loop is not None, "endpoint not started"
        return self._loop.time()

    def contact(self, transport: str = "UDP", user: str | None = None) -> NameAddr:
        """A Contact for this node on ``transport``."""
        t = transport.upper()
        params: dict[str, str | None] = {} if t == "UDP" else {"transport": t.lower()}
        return NameAddr(URI("sip", user=user, host=self.public_host, port=self._port_for(t), params=params))

    def _port_for(self, transport: str) -> int | None:
        if transport in WS_TRANSPORTS:
            return self.ws_port
        return self.tls_port if transport == "TLS" else self.port

    def trusts(self, source: Addr, transport: str) -> bool:
        """Is a request from ``source`` over ``transport`` from a trusted network?  Never
        over a WebSocket: those are users' browsers, and a proxy in front of them, on a
        trusted address, must not let them skip digest."""
        return transport.upper() not in WS_TRANSPORTS and self._trusts(source)

    def connected(self, transport: str, peer: Addr) -> bool:
        """Is a TCP, TLS or WebSocket connection with ``peer`` open, one it opened or we did?"""
        conn = self._conns.get((transport.upper(), peer))
        return conn is not None and conn.open

    def open_websocket(
        self,
        peer: Addr,
        send: Callable[[bytes], None],
        close: Callable[[int, str], None],
        *,
        secure: bool = False,
    ) -> WebSocketFlow:
        """A WebSocket the HTTP server accepted (subprotocol ``sip``) becomes a flow:
        transport ``WSS`` when it came over TLS, else ``WS``."""
        transport = "WSS" if secure else "WS"
        if peer[1] == 0 or (transport, peer) in self._conns:
            self._next_flow_port += 1
            peer = (peer[0], self._next_flow_port)
        flow = WebSocketFlow(self, transport, peer, send, close)
        self._conns[(transport, peer)] = flow
        self.websockets_open += 1
        self.stats["ws_opened"] += 1
        return flow

    def transactions_in_flight(self) -> int:
        """See :meth:`UserAgentCore.transactions_in_flight`."""
        return self.core.transactions_in_flight()

    def server_pending(self, transaction: TransactionKey | None) -> bool:
        """Can the server transaction still take a final response?"""
        return self.core.server_pending(transaction)

    # -- UAS side

    def send_response(self, response: Response, transaction: TransactionKey | None = None) -> None:
        """Send ``response`` through its server transaction.

        A 2xx to INVITE is then retransmitted until the ACK arrives
        (§13.3.1.4).  Raises ``LookupError`` when the transaction is gone and
        ``InvalidTransactionState`` when it already has a final response
        (e.g. after a CANCEL was answered with 487).
        """
        self._process(self.core.send_response(response, self.now(), transaction))
        self._reschedule()

    def reply(
        self,
        event: RequestReceived,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, HeaderValue]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        """Build a response to ``event.request`` (§8.2.6), send it, return it."""
        if event.transaction is None:
            raise ValueError("an ACK is never answered")
        response = build_response(event.request, status, reason, to_tag=to_tag)
        for name, value in headers:
            response.headers.add(name, value)
        if content_type is not None:
            response.headers.add("Content-Type", content_type)
        response.body = body
        self.send_response(response, event.transaction)
        return response

    def answer_budget(self, event: RequestReceived) -> int | None:
        """Bytes the answer to a stranger's datagram may take (None: no limit);
        a larger response is not sent at all (counted in ``core.layer.suppressed``)."""
        if event.transaction is None:
            return None
        return self.core.answer_budget(event.transaction)

    def vouch(self, event: RequestReceived) -> None:
        """The TU vouches for ``event``'s request (it authenticated): its
        transaction now retransmits and sends 100 Trying as usual."""
        if event.transaction is not None:
            self._process(self.core.vouch(event.transaction, self.now()))
            self._reschedule()

    def not_implemented(self, event: RequestReceived, allow: Iterable[str] = DEFAULT_ALLOW) -> Response:
        """501 with Allow, for a method this TU does not know (§8.2.1)."""
        return self.reply(event, 501, to_tag=generate_tag(), headers=[("Allow", ", ".join(allow))])

    # -- UAC side

    def send_request(
        self,
        request: Request,
        destination: Addr | None = None,
        transport: str | None = None,
        *,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> ClientTransaction:
        """Start a client transaction; await the result for the final response.

        Without ``destination`` the next hop is the first Route (if loose)
        or the Request-URI, resolved with ``getaddrinfo`` (no RFC 3263
        NAPTR/SRV).  A missing Via gets ours with a new branch and rport.
        """
        if request.method == "ACK":
            raise ValueError("send an ACK with send_ack()")
        handle = ClientTransaction(self, request, on_provisional)
        self._route(
            request, destination, transport, lambda d, t: self._start_client(handle, d, t), lambda: handle._fail(503)
        )
        return handle

    def send_ack(self, ack: Request, destination: Addr | None = None, transport: str | None = None) -> None:
        """Send the ACK for a 2xx (no transaction) and repeat it for every
        retransmission of that 2xx."""

        def go(dest: Addr, t: str) -> None:
            self._prepare(ack, t)
            self._process(self.core.send_ack(ack, dest, t, self.now()))

        self._route(ack, destination, transport, go, lambda: None)

    def _route(
        self,
        request: Request,
        destination: Addr | None,
        transport: str | None,
        then: Callable[[Addr, str], None],
        failed: Callable[[], None],
    ) -> None:
        host, port, t = next_hop(request, transport)
        if destination is not None:
            then(destination, t)
            return
        if t in WS_TRANSPORTS:
            # A WebSocket client is reached only over its own open flow (the TU passes
            # it as the destination); its Contact host is usually `*.invalid`.
            self.stats["send_errors"] += 1
            failed()
            return
        if _is_ip(host):
            then((host, port), t)
            return

        async def resolve() -> None:
            try:
                infos = await self._loop_or_raise().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError:
                failed()
                return
            address = infos[0][4]
            then((str(address[0]), int(address[1])), t)

        self._spawn(resolve())

    def _start_client(self, handle: ClientTransaction, destination: Addr, transport: str) -> None:
        self._prepare(handle.request, transport)
        key, events = self.core.send_request(handle.request, destination, transport, self.now())
        handle.key, handle.destination, handle.transport = key, destination, transport
        self._clients[key] = handle
        self._process(events)
        self._reschedule()

    def _prepare(self, request: Request, transport: str) -> None:
        if "Via" not in request.headers:
            t = transport.upper()
            request.headers.insert_first(
                "Via", Via(t, self.public_host, self._port_for(t), {"branch": generate_branch(), "rport": None})
            )
        elif not request.top_via.is_rfc3261_branch:
            request.top_via.params["branch"] = generate_branch()
        if "Max-Forwards" not in request.headers:
            request.headers.add("Max-Forwards", "70")

    # -- receiving

    def _datagram(self, data: bytes, source: Addr) -> None:
        if not self._allowed(source):
            return
        if not data.strip(b"\r\n"):
            self.stats["keepalives"] += 1
            return
        try:
            message = parse_datagram(data, self.max_datagram_size)
        except ParseError as err:
            end = data.find(b"\r\n\r\n", 0, MAX_DATAGRAM_SIZE)
            head = data[: end if end >= 0 else 8192].decode("utf-8", "replace")
            self._unparseable(err, head, source, "UDP", None, len(data))
            return
        self._receive(message, source, "UDP", len(data))

    def _ws_frame(self, flow: WebSocketFlow, data: bytes) -> None:
        # Per flow, not per IP: browsers behind one proxy share its address.
        key = f"{flow.peer[0]}:{flow.peer[1]}"
        self.stats["received"] += 1
        if self.rate_limiter is not None and not self.rate_limiter.allow(key, self.now()):
            self.stats["dropped_rate_limited"] += 1
            flow.refused_in_a_row += 1
            if self.rate_limiter is not None and flow.refused_in_a_row > self.rate_limiter.burst:
                flow.close(WS_POLICY, "too many SIP messages")
            return
        flow.refused_in_a_row = 0
        if not data.strip(b"\r\n"):
            self.stats["keepalives"] += 1
            return
        try:
            message = parse_datagram(data, self.max_datagram_size)
        except ParseError as err:
            end = data.find(b"\r\n\r\n", 0, MAX_DATAGRAM_SIZE)
            head = data[: end if end >= 0 else 8192].decode("utf-8", "replace")
            if not self._unparseable(err, head, flow.peer, flow.name, flow):
                # Nothing to answer (garbage, a broken response): the client is not
                # speaking SIP, so the socket ends with the reason.
                flow.close(WS_POLICY, f"not a SIP message: {err.reason}"[:120])
            return
        self._receive(message, flow.peer, flow.name)

    def _flow_closed(self, flow: WebSocketFlow) -> None:
        key = (flow.name, flow.peer)
        if self._conns.get(key) is flow:
            del self._conns[key]
        self.websockets_open -= 1
        self.stats["ws_closed"] += 1
        # Requests waiting on this flow can never be answered: they fail now (503).
        for tx_key, handle in list(self._clients.items()):
            if handle.transport == flow.name and handle.destination == flow.peer:
                self._process(self.core.transport_error(tx_key, self.now()))
        self._reschedule()
        if self.tu is not None:
            self._tell_tu(self.tu.on_flow_closed, flow.name, flow.peer)

    def _arrived(self, message: Request | Response, source: Addr, transport: str) -> None:
        if self._allowed(source):
            self._receive(message, source, transport)

    def _allowed(self, source: Addr) -> bool:
        self.stats["received"] += 1
        if self.rate_limiter is not None and not self.rate_limiter.allow(source[0], self.now()):
            self.stats["dropped_rate_limited"] += 1
            return False
        return True

    def _receive(self, message: Request | Response, source: Addr, transport: str, size: int | None = None) -> None:
        if self.on_message is not None:
            self.on_message("in", message)
        self._process(
            self.core.receive(message, source, transport, self.now(), trusted=self.trusts(source, transport), size=size)
        )
        self._reschedule()

    def _trusts(self, source: Addr) -> bool:
        return self.trusted is None or self.trusted(source[0])

    def _unparseable(
        self,
        err: ParseError,
        head: str | None,
        source: Addr,
        transport: str,
        conn: _StreamConnection | WebSocketFlow | None,
        size: int | None = None,
    ) -> bool:
        """Answer what could not be parsed, if it can be answered; False if it was dropped."""
        data = error_response(head, err.status, err.reason) if head else None
        if head and data is not None and size is not None and not self._trusts(source):
            if len(data) > AMPLIFICATION_LIMIT * size:
                data = error_response(head, err.status)  # without the Warning
            if data is not None and len(data) > AMPLIFICATION_LIMIT * size:
                data = None
        if data is None:
            self.stats["dropped_unparseable"] += 1
            return False
        self.stats["rejected_unparseable"] += 1
        # The source, not the Via: an unparsed Via must not steer our reply.
        if conn is not None:
            conn.write(data)
        elif self._udp is not None:
            self._udp.sendto(data, source)
        return True

    # -- events

    def _process(self, events: list[UAEvent]) -> None:
        for event in events:
            if isinstance(event, SendMessage):
                self._transmit(event)
            elif isinstance(event, RequestReceived):
                self._spawn(self._run_tu(event))
            elif isinstance(event, ResponseReceived):
                self._response_event(event)
            elif isinstance(event, TransactionTimeout):
                handle = self._clients.pop(event.transaction, None)
                if handle is not None:
                    handle._fail(408)
                else:
                    self._tell_tu(self._user().on_server_timeout, event)
            elif isinstance(event, TransportError):
                handle = self._clients.pop(event.transaction, None)
                if handle is not None:
                    handle._fail(503)
            elif isinstance(event, InviteCancelled):
                self._tell_tu(self._user().on_cancel, event.cancel, event.invite)
            elif isinstance(event, StrayResponse):
                self._tell_tu(self._user().on_stray_response, event.received)
            elif isinstance(event, AckTimeout):
                self._tell_tu(self._user().on_ack_timeout, event.response)

    def _response_event(self, event: ResponseReceived) -> None:
        assert event.transaction is not None  # the core passes up only its pending transactions'
        response = event.response
        handle = self._clients.get(event.transaction)
        if handle is None:
            return
        if response.status >= 200:
            del self._clients[event.transaction]
        handle._receive(response)

    async def _run_tu(self, event: RequestReceived) -> None:
        try:
            await self._user().on_request(event)
        except Exception:
            log.exception("TU failed on %s", event.request.method)
            if self.server_pending(event.transaction):
                self.reply(event, 500, to_tag=generate_tag())

    def _user(self) -> TransactionUser:
        assert self.tu is not None, "endpoint not started"
        return self.tu

    @staticmethod
    def _tell_tu(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("TU failed on %s", callback.__name__)

    # -- sending

    def _transmit(self, event: SendMessage) -> None:
        data = event.data
        transport = event.transport.upper()
        self.stats["sent"] += 1
        if self.on_message is not None:
            self.on_message("out", event.message)
        if transport == "UDP":
            if self._udp is None:
                self._send_failed(event.transaction)
                return
            self._udp.sendto(data, event.destination)
            return
        destination = event.destination
        conn = self._conns.get((transport, destination))
        if transport in WS_TRANSPORTS:
            # Never dialled: a WebSocket client is reached over its own flow or not at all.
            if conn is not None and conn.open:
                conn.write(data)
            else:
                self._send_failed(event.transaction)
            return
        if conn is None and isinstance(event.message, Response):
            # §18.2.2: the request's connection is gone; open one to the
            # received address and the sent-by port.
            via = event.message.top_via
            default = DEFAULT_TLS_PORT if transport == "TLS" else DEFAULT_PORT
            destination = (via.received or via.host, via.port or default)
            conn = self._conns.get((transport, destination))
        if conn is not None and conn.open:
            conn.write(data)
            return
        self._connect_and_send(transport, destination, data, event.transaction)

    def _connect_and_send(
        self, transport: str, destination: Addr, data: bytes, transaction: TransactionKey | None
    ) -> None:
        key = (transport, destination)
        queue = self._connecting.get(key)
        if queue is not None:
            queue.append((data, transaction))
            return
        self._connecting[key] = [(data, transaction)]

        async def connect() -> None:
            loop = self._loop_or_raise()
            tls = None
            if transport == "TLS":
                tls = self.tls_client_context or ssl.create_default_context()
            try:
                _, conn = await loop.create_connection(
                    lambda: _StreamConnection(self, transport), destination[0], destination[1], ssl=tls
                )
            except OSError:
                for _, tx in self._connecting.pop(key, []):
                    self._send_failed(tx)
                return
            # Also reachable under the address we dialled (the peer may be named).
            self._conns[key] = conn
            for payload, _ in self._connecting.pop(key, []):
                conn.write(payload)

        self._spawn(connect())

    def _send_failed(self, transaction: TransactionKey | None) -> None:
        self.stats["send_errors"] += 1
        if transaction is not None:
            self._process(self.core.transport_error(transaction, self.now()))
            self._reschedule()

    # -- the single timer

    def _reschedule(self) -> None:
        if self._loop is None:
            return
        when = self.core.next_deadline()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = None if when is None else self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        due = self._timer_at
        self._timer = self._timer_at = None
        # call_at may fire up to one clock resolution early.
        now = max(self.now(), due or 0.0)
        self._process(self.core.timers_due(now))
        self._reschedule()

    # -- tasks

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("endpoint not started")
        return self._loop

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop_or_raise().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def next_hop(request: Request, transport: str | None = None) -> tuple[str, int, str]:
    """Host, port and transport of the next hop (§8.1.2, RFC 3263 §4 without DNS)."""
    routes = request.routes
    uri = routes[0].uri if routes and "lr" in routes[0].uri.params else request.uri
    param = uri.params.get("transport")
    chosen = (transport or param or ("TLS" if uri.scheme == "sips" else "UDP")).upper()
    host = uri.params.get("maddr") or uri.host
    port = uri.port or (DEFAULT_TLS_PORT if chosen == "TLS" else DEFAULT_PORT)
    return host.strip("[]"), port, chosen


_ERROR_HEADERS = {
    "via": "Via",
    "v": "Via",
    "from": "From",
    "f": "From",
    "to": "To",
    "t": "To",
    "call-id": "Call-ID",
    "i": "Call-ID",
    "cseq": "CSeq",
}


def error_response(head: str, status: int, reason: str = "") -> bytes | None:
    """A stateless 4xx/5xx for a request we could not parse, copying its raw
    Via, From, To, Call-ID and CSeq (§8.2.6.2), or None when it cannot be
    addressed: a response, an ACK, or a request missing one of those."""
    lines = head.replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    if not start or start.upper().startswith("SIP/") or start.split(" ", 1)[0] == "ACK":
        return None
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        canon = _ERROR_HEADERS.get(name.strip().lower())
        if colon and canon is not None and value.strip():
            found.setdefault(canon, []).append(value.strip())
    if any(n not in found for n in ("Via", "From", "To", "Call-ID", "CSeq")):
        return None
    phrase = reason_phrase(status) or "Bad Request"
    out = [f"SIP/2.0 {status} {phrase}"]
    out += [f"Via: {v}" for v in found["Via"]]
    out += [f"{n}: {found[n][0]}" for n in ("From", "To", "Call-ID", "CSeq")]
    if reason:
        # The parser's reason, for whoever debugs the sending device.
        out.append("Warning: 399 - " + '"' + reason.replace('"', "'")[:200] + '"')
    out += ["Content-Length: 0", "", ""]
    return "\r\n".join(out).encode("utf-8", "replace")
