"""A small TURN client over UDP, enough to check credentials against a real TURN server:
STUN messages (RFC 5389: header, attributes, MESSAGE-INTEGRITY with the long-term
credential, FINGERPRINT) and TURN's Allocate, CreatePermission, Send and Data
(RFC 5766). An Allocate without credentials draws 401 with the server's REALM and NONCE;
the same Allocate with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY keyed with
MD5(username:realm:password) then gets a relayed address, or an error code."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")

# Methods and classes (RFC 5389 §6, RFC 5766 §13)
ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION = 0x003, 0x004, 0x006, 0x007, 0x008
REQUEST, INDICATION, SUCCESS, ERROR = 0x000, 0x010, 0x100, 0x110

# Attributes
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, LIFETIME = 0x0006, 0x0008, 0x0009, 0x000D
XOR_PEER_ADDRESS, DATA_ATTR, REALM, NONCE = 0x0012, 0x0013, 0x0014, 0x0015
XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT, XOR_MAPPED_ADDRESS = 0x0016, 0x0019, 0x0020
FINGERPRINT = 0x8028
UDP_TRANSPORT = bytes([17, 0, 0, 0])


@dataclass
class Message:
    method: int
    klass: int
    transaction: bytes = field(default_factory=lambda: os.urandom(12))
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, kind: int) -> bytes | None:
        return next((value for attr, value in self.attributes if attr == kind), None)

    @property
    def error(self) -> tuple[int, str] | None:
        raw = self.get(ERROR_CODE)
        if raw is None:
            return None
        return (raw[2] & 0x7) * 100 + raw[3], raw[4:].decode("utf-8", "replace")


def _attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def encode(message: Message, key: bytes | None = None) -> bytes:
    """The message; with `key`, MESSAGE-INTEGRITY (HMAC-SHA1 over everything before it,
    the length counting it) then FINGERPRINT."""
    body = b"".join(_attribute(kind, value) for kind, value in message.attributes)
    kind = message.method & 0xF | (message.method & 0x70) << 1 | (message.method & 0xF80) << 2
    kind |= message.klass & 0x110  # the class bits C0 and C1 sit between the method's
    if key is not None:
        header = HEADER.pack(kind, len(body) + 24, MAGIC_COOKIE, message.transaction)
        body += _attribute(MESSAGE_INTEGRITY, hmac.new(key, header + body, hashlib.sha1).digest())
    header = HEADER.pack(kind, len(body) + 8, MAGIC_COOKIE, message.transaction)
    crc = (binascii.crc32(header + body) ^ 0x5354554E) & 0xFFFFFFFF
    return header + body + _attribute(FINGERPRINT, struct.pack("!I", crc))


def decode(data: bytes) -> Message:
    kind, length, cookie, transaction = HEADER.unpack_from(data)
    assert cookie == MAGIC_COOKIE and len(data) == HEADER.size + length, "not a STUN message"
    method = kind & 0xF | (kind >> 1) & 0x70 | (kind >> 2) & 0xF80
    attributes, offset = [], HEADER.size
    while offset < len(data):
        attr, size = struct.unpack_from("!HH", data, offset)
        attributes.append((attr, data[offset + 4 : offset + 4 + size]))
        offset += 4 + size + (-size % 4)
    return Message(method, kind & 0x110, transaction, attributes)


def xor_address(host: str, port: int) -> bytes:
    address = int(ipaddress.IPv4Address(host)) ^ MAGIC_COOKIE
    return struct.pack("!BBHI", 0, 1, port ^ (MAGIC_COOKIE >> 16), address)


def unxor_address(raw: bytes) -> tuple[str, int]:
    _, family, port, address = struct.unpack("!BBHI", raw[:8])
    assert family == 1, "IPv4 only"
    return str(ipaddress.IPv4Address(address ^ MAGIC_COOKIE)), port ^ (MAGIC_COOKIE >> 16)


class TurnRefused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code


class TurnClient:
    """One allocation's client: blocking UDP with a timeout (run it in a thread)."""

    def __init__(self, server: tuple[str, int], timeout: float = 5) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.sock.bind(("127.0.0.1", 0))
        self.key: bytes | None = None
        self.auth: list[tuple[int, bytes]] = []
        self.challenges: list[int] = []
        """The error codes of every refused request, in order (the 401 challenge included)."""

    def close(self) -> None:
        self.sock.close()

    def _transact(self, request: Message, key: bytes | None) -> Message:
        self.sock.sendto(encode(request, key), self.server)
        while True:
            data, _ = self.sock.recvfrom(65535)
            reply = decode(data)
            if reply.transaction == request.transaction:
                return reply

    def allocate(self, username: str, password: str) -> tuple[str, int]:
        """The relayed address, or TurnRefused with the code of the authenticated attempt."""
        challenge = self._transact(Message(ALLOCATE, REQUEST, attributes=[(REQUESTED_TRANSPORT, UDP_TRANSPORT)]), None)
        assert challenge.error is not None and challenge.error[0] == 401, challenge
        self.challenges.append(401)
        realm, nonce = challenge.get(REALM), challenge.get(NONCE)
        assert realm and nonce, "a 401 without REALM and NONCE"
        self.key = hashlib.md5(f"{username}:{realm.decode()}:{password}".encode()).digest()
        self.auth = [(USERNAME, username.encode()), (REALM, realm), (NONCE, nonce)]
        reply = self._transact(
            Message(ALLOCATE, REQUEST, attributes=[(REQUESTED_TRANSPORT, UDP_TRANSPORT), *self.auth]), self.key
        )
        if reply.error is not None:
            self.challenges.append(reply.error[0])
            raise TurnRefused(*reply.error)
        assert reply.klass == SUCCESS, reply
        relayed = reply.get(XOR_RELAYED_ADDRESS)
        assert relayed is not None, "an Allocate success without XOR-RELAYED-ADDRESS"
        return unxor_address(relayed)

    def permit(self, peer: tuple[str, int]) -> None:
        reply = self._transact(
            Message(CREATE_PERMISSION, REQUEST, attributes=[(XOR_PEER_ADDRESS, xor_address(*peer)), *self.auth]),
            self.key,
        )
        if reply.error is not None:
            raise TurnRefused(*reply.error)

    def send(self, peer: tuple[str, int], data: bytes) -> None:
        indication = Message(SEND, INDICATION, attributes=[(XOR_PEER_ADDRESS, xor_address(*peer)), (DATA_ATTR, data)])
        self.sock.sendto(encode(indication), self.server)

    def receive(self) -> tuple[tuple[str, int], bytes]:
        """The next Data indication: who sent it through the relay, and what."""
        while True:
            message = decode(self.sock.recvfrom(65535)[0])
            if message.method == DATA and message.klass == INDICATION:
                peer, data = message.get(XOR_PEER_ADDRESS), message.get(DATA_ATTR)
                assert peer is not None and data is not None
                return unxor_address(peer), data

    def refresh(self, lifetime: int) -> int:
        """The lifetime the server granted (seconds); 0 releases the allocation now."""
        reply = self._transact(
            Message(REFRESH, REQUEST, attributes=[(LIFETIME, struct.pack("!I", lifetime)), *self.auth]), self.key
        )
        if reply.error is not None:
            raise TurnRefused(*reply.error)
        granted = reply.get(LIFETIME)
        return struct.unpack("!I", granted)[0] if granted else 0

    def release(self) -> None:
        self.refresh(0)
