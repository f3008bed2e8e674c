"""A small SIP client on our own stack, for what sipp scenarios would only make longer:
push parameters, unregistering, odd methods, floods."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sip.digest import authorize
from sip.endpoint import SipEndpoint, TransactionUser
from sip.message import CSeq, Headers, NameAddr, Request, Response, generate_tag, parse_name_addr, parse_uri
from sip.transaction import RequestReceived

DOMAIN = "voip.test"


class Recorder(TransactionUser):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        self.requests: list[Request] = []

    async def on_request(self, event: RequestReceived) -> None:
        self.requests.append(event.request)
        if event.transaction is not None:
            self.endpoint.reply(event, 200, to_tag=generate_tag())


@asynccontextmanager
async def sip_client() -> AsyncIterator[SipEndpoint]:
    endpoint = SipEndpoint("127.0.0.1", 0)
    await endpoint.start(Recorder(endpoint))
    try:
        yield endpoint
    finally:
        await endpoint.close()


def build(
    method: str,
    uri: str,
    *,
    user: str = "tester",
    to: str | None = None,
    to_tag: str | None = None,
    contact: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Request:
    h = Headers()
    h.add("From", NameAddr(parse_uri(f"sip:{user}@{DOMAIN}"), params={"tag": generate_tag()}))
    target = NameAddr(parse_uri(to or uri))
    if to_tag:
        target.tag = to_tag
    h.add("To", target)
    h.add("Call-ID", uuid.uuid4().hex)
    h.add("CSeq", CSeq(1, method))
    if contact:
        h.add("Contact", parse_name_addr(contact))
    for name, value in headers or []:
        h.add(name, value)
    return Request(method, parse_uri(uri), h, body)


async def send(client: SipEndpoint, port: int, request: Request) -> Response:
    return await client.send_request(request, ("127.0.0.1", port), "UDP")


async def register(
    client: SipEndpoint, port: int, user: str, password: str, contact: str, expires: int = 300
) -> Response:
    request = build(
        "REGISTER",
        f"sip:{DOMAIN}",
        user=user,
        to=f"sip:{user}@{DOMAIN}",
        contact=contact,
        headers=[("Expires", str(expires))],
    )
    response = await send(client, port, request)
    if response.status == 401:
        response = await send(client, port, authorize(request, response, user, password))
    return response
