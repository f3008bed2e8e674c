"""Issue 8, item 3 (and the SIP line of item 5): no reflection, no amplification.

A stranger's datagram (from outside SIP_TRUSTED_NETWORKS) is answered once, at the
packet's own source address and port, whatever its Via says (sent-by host, `maddr`), with
no transaction left behind: no 100 Trying, no retransmission. The bytes sent back are at
most twice the bytes received. The per-source rate limit counts the packet's real source,
not a Via the sender writes.

Real sockets on 127.0.0.x: the node on 127.0.0.1, the sender on 127.0.0.5, and the third
address the Via names on 127.0.0.2, which must hear nothing."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest

from sip.message import Request, build_response, parse_datagram
from sip.transaction import Event, RequestReceived, SendMessage, TimerConfig, TransactionLayer
from tests.conftest import RunningNode
from tests.ports import free_port
from tests.sipcalls.conftest import (
    DOMAIN,
    SipNodeFactory,
    sip_node,  # noqa: F401  (the fixture)
    sip_port,
)

SENDER = "127.0.0.5"
VICTIM = "127.0.0.2"
STRANGER_SETTINGS = {
    # Only the node's own address is trusted: the sender is a stranger.
    "sip_trusted_networks": ["127.0.0.1/32"],
    # The production default: two challenges (SHA-256 and MD5), the larger answer.
    "sip_digest_algorithms": ["SHA-256", "MD5"],
}
# Long enough for Timer G's first three retransmissions (T1 = 0.5 s: +0.5, +1.5, +3.5 s)
# had the answer gone through a transaction, as it did before.
LISTEN = 4.0
ISSUE_SIZE = 442  # the INVITE of issue 8


def datagram(method: str, ruri: str, via_host: str, via_port: int, size: int | None = None) -> bytes:
    """A request whose Via names another host and `maddr`, padded to `size` bytes."""
    call_id = uuid.uuid4().hex
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via_host}:{via_port};branch=z9hG4bK{uuid.uuid4().hex[:16]};maddr={via_host}",
        "Max-Forwards: 70",
        f"From: <sip:mallory@{DOMAIN}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <{f'sip:alice@{DOMAIN}' if method == 'REGISTER' else ruri}>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:mallory@{via_host}:{via_port}>",
    ]
    head = "\r\n".join(lines) + "\r\n"
    tail = "Content-Length: 0\r\n\r\n"
    if size is not None:
        pad = size - len(head) - len(tail) - len("Subject: \r\n")
        assert pad >= 0
        head += "Subject: " + "x" * pad + "\r\n"
    data = (head + tail).encode()
    assert size is None or len(data) == size
    return data


def udp_socket(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


async def drain(sock: socket.socket, seconds: float, until: int | None = None) -> list[bytes]:
    """Every datagram that reaches `sock` within `seconds` (or the first `until` of them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    got: list[bytes] = []
    while (left := deadline - loop.time()) > 0 and (until is None or len(got) < until):
        try:
            got.append(await asyncio.wait_for(loop.sock_recv(sock, 65536), left))
        except TimeoutError:
            break
    return got


def server_transactions(node: RunningNode) -> int:
    return len(node.node.sip.endpoint.core.layer.servers)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("method", "ruri", "status"),
    [
        ("INVITE", f"sip:alice@{DOMAIN}", 407),  # a user of ours: the challenge
        ("INVITE", "sip:alice@elsewhere.example", 404),  # not our domain
        ("REGISTER", f"sip:{DOMAIN}", 401),
    ],
)
async def test_a_strangers_datagram_is_answered_once_at_its_source_within_twice_its_size(
    sip_node: SipNodeFactory,
    method: str,
    ruri: str,
    status: int,
) -> None:
    node = await sip_node(**STRANGER_SETTINGS)
    await node.device("alice", "alice-app")  # reachable: nothing to learn from a 404
    via_port = free_port(VICTIM)
    request = datagram(method, ruri, VICTIM, via_port, size=ISSUE_SIZE)
    with udp_socket(VICTIM, via_port) as victim, udp_socket(SENDER) as sender:
        sender.sendto(request, ("127.0.0.1", sip_port(node)))
        answers = await drain(sender, 10, until=1)
        # Then as long as a retransmission would take to come; the socket buffers keep
        # whatever reached the victim meanwhile.
        later, reflected = await asyncio.gather(drain(sender, LISTEN), drain(victim, LISTEN))
        answers += later
    assert reflected == []
    assert [a.split(b" ", 2)[1] for a in answers] == [str(status).encode()]  # one, no Trying
    sent = sum(len(a) for a in answers)
    assert sent <= 2 * len(request), (sent, len(request))
    assert server_transactions(node) == 0  # nothing left to retransmit from


async def test_a_small_datagram_gets_a_smaller_challenge_or_none(sip_node: SipNodeFactory) -> None:
    """The smallest INVITE a stranger can send (mandatory headers only): both challenges
    would be more than twice its size, so the node offers the first algorithm alone."""
    node = await sip_node(**STRANGER_SETTINGS)
    ruri = f"sip:alice@{DOMAIN}"
    request = (
        f"INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {VICTIM};branch=z9hG4bK1;maddr={VICTIM}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:m@{DOMAIN}>;tag=1\r\nTo: <{ruri}>\r\n"
        f"Call-ID: {uuid.uuid4().hex[:8]}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with udp_socket(SENDER) as sender:
        sender.sendto(request, ("127.0.0.1", sip_port(node)))
        answers = await drain(sender, 10, until=1)
    assert server_transactions(node) == 0
    assert len(answers) == 1 and len(answers[0]) <= 2 * len(request)
    assert answers[0].startswith(b"SIP/2.0 407 ") and answers[0].count(b"Proxy-Authenticate:") == 1


async def test_a_retransmitted_datagram_gets_one_answer_each_never_more(sip_node: SipNodeFactory) -> None:
    node = await sip_node(**STRANGER_SETTINGS)
    request = datagram("INVITE", f"sip:alice@{DOMAIN}", VICTIM, free_port(VICTIM))
    with udp_socket(SENDER) as sender:
        for _ in range(3):
            sender.sendto(request, ("127.0.0.1", sip_port(node)))
        answers = await drain(sender, LISTEN)
    assert len(answers) <= 3 and all(a.startswith(b"SIP/2.0 407 ") for a in answers)
    assert sum(len(a) for a in answers) <= 2 * 3 * len(request)


async def test_the_rate_limit_counts_the_real_source_not_the_via(sip_node: SipNodeFactory) -> None:
    """Each datagram claims another Via host; the bucket is the sender's all the same, and
    another real source still gets its answer."""
    burst = 5
    node = await sip_node(**STRANGER_SETTINGS, sip_rate=0.01, sip_burst=burst)
    port = sip_port(node)
    stats = node.node.sip.endpoint.stats  # type: ignore[union-attr]
    with udp_socket(SENDER) as sender, udp_socket("127.0.0.6") as other:
        for i in range(4 * burst):
            sender.sendto(datagram("OPTIONS", f"sip:{DOMAIN}", f"127.0.1.{i + 1}", 5060), ("127.0.0.1", port))
        answered = await drain(sender, 10, until=burst)
        # Every datagram was counted on arrival, before parsing: the rest were dropped.
        for _ in range(200):
            if stats["received"] >= 4 * burst:
                break
            await asyncio.sleep(0.05)
        assert stats["dropped_rate_limited"] == 3 * burst
        other.sendto(datagram("OPTIONS", f"sip:{DOMAIN}", VICTIM, 5060), ("127.0.0.1", port))
        other_answered = await drain(other, 10, until=1)
    assert len(answered) == burst and all(a.startswith(b"SIP/2.0 200 ") for a in answered)
    assert len(other_answered) == 1 and other_answered[0].startswith(b"SIP/2.0 200 ")


# The sans-I/O layer itself, on a fake clock: what "quiet" means, message by message.


def _invite_from_stranger(layer: TransactionLayer, size: int | None = 500) -> tuple[Request, list[Event]]:
    raw = datagram("INVITE", f"sip:alice@{DOMAIN}", "192.0.2.99", 5070)
    request = parse_datagram(raw)
    assert isinstance(request, Request)
    return request, layer.receive(request, ("198.51.100.7", 40000), "UDP", 0.0, trusted=False, size=size)


def _sent(events: list[Event]) -> list[SendMessage]:
    return [e for e in events if isinstance(e, SendMessage)]


def test_quiet_invite_sends_no_trying_and_its_refusal_once_to_the_source() -> None:
    layer = TransactionLayer(TimerConfig())
    request, events = _invite_from_stranger(layer)
    (received,) = [e for e in events if isinstance(e, RequestReceived)]
    assert not _sent(events) and layer.next_deadline() is None  # no 100 Trying, ever
    (out,) = _sent(layer.send_response(build_response(request, 407, to_tag="t"), 0.1, received.transaction))
    assert out.destination == ("198.51.100.7", 40000)  # not the Via's host, not its maddr
    assert not layer.servers and layer.next_deadline() is None  # no Timer G, nothing kept


def test_a_vouched_transaction_is_an_ordinary_one() -> None:
    layer = TransactionLayer(TimerConfig())
    request, events = _invite_from_stranger(layer)
    key = next(e for e in events if isinstance(e, RequestReceived)).transaction
    assert key is not None
    layer.vouch(key, 0.0)
    assert layer.next_deadline() == pytest.approx(0.2)  # the 100 Trying timer is armed
    layer.send_response(build_response(request, 486, to_tag="t"), 0.1, key)
    assert key in layer.servers  # Completed: retransmits until ACK (Timer G/H)


def test_an_answer_larger_than_twice_the_datagram_is_not_sent() -> None:
    layer = TransactionLayer(TimerConfig())
    request, events = _invite_from_stranger(layer, size=100)
    key = next(e for e in events if isinstance(e, RequestReceived)).transaction
    assert layer.answer_budget(key) == 200  # type: ignore[arg-type]
    assert _sent(layer.send_response(build_response(request, 404, to_tag="t"), 0.1, key)) == []
    assert layer.suppressed == 1 and not layer.servers


def test_a_trusted_source_keeps_rfc3261_addressing() -> None:
    layer = TransactionLayer(TimerConfig(trying_delay=None))
    request = parse_datagram(datagram("OPTIONS", f"sip:{DOMAIN}", "192.0.2.99", 5070))
    assert isinstance(request, Request)
    events = layer.receive(request, ("192.0.2.99", 40000), "UDP", 0.0)
    key = next(e for e in events if isinstance(e, RequestReceived)).transaction
    (out,) = _sent(layer.send_response(build_response(request, 200, to_tag="t"), 0.0, key))
    assert out.destination == ("192.0.2.99", 5070)  # maddr / sent-by port, as §18.2.2 says
