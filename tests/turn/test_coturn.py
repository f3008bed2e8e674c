"""Debian's coturn (`turnserver`) with `use-auth-secret`, on loopback, against a real node's
`GET /v1/ice-servers`: the node's credentials allocate a relay that carries data both
ways (our small TURN client, tests/turn/client.py) and pass coturn's own
`turnutils_uclient`; expired ones (by the node's injected clock), forged ones, and ones
whose user or expiry was changed are refused with 401. And what an app must know: coturn
checks the expiry when an allocation is made, so a call's relay outlives its credential,
and only a new allocation needs a fresh one; what docs/deploy.md tells operators: a
secret rotated with two `static-auth-secret`s, and `user-quota` counting per user id."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import interop
from tests.ports import free_port
from tests.turn.client import TurnClient, TurnRefused
from voip.clock import ManualClock
from voip.ice_servers import parse_uri
from voip.node import NodeParts

pytestmark = pytest.mark.interop

SECRET = "coturn-shared-secret-" + "k" * 24
REALM = "voip.test"
RELAY_PORTS = 40


@dataclass
class Coturn:
    port: int
    relay_ports: range
    log: Path

    @property
    def uris(self) -> list[str]:
        return [f"stun:127.0.0.1:{self.port}", f"turn:127.0.0.1:{self.port}?transport=udp"]


def _answers(port: int) -> bool:
    client = TurnClient(("127.0.0.1", port), timeout=0.2)
    try:
        client.allocate("probe", "probe")
    except TurnRefused:
        return True
    except OSError:  # no answer yet (timeout), or ICMP port unreachable
        return False
    finally:
        client.close()
    return True


@asynccontextmanager
async def running_coturn(tmp_path: Path, *options: str, secrets: tuple[str, ...] = (SECRET,)) -> AsyncIterator[Coturn]:
    binary = interop.program("turnserver", "coturn")
    port, relay = free_port(), free_port()
    running = Coturn(port, range(relay, relay + RELAY_PORTS), tmp_path / "turn.log")
    command = [
        binary,
        "-n",  # no configuration file: everything is here
        "--listening-ip=127.0.0.1",
        f"--listening-port={port}",
        "--relay-ip=127.0.0.1",
        f"--min-port={relay}",
        f"--max-port={relay + RELAY_PORTS - 1}",
        "--use-auth-secret",
        *(f"--static-auth-secret={secret}" for secret in secrets),
        f"--realm={REALM}",
        "--fingerprint",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        # The relay's peer in these tests is a socket on loopback, which coturn refuses by default.
        "--allow-loopback-peers",
        f"--log-file={running.log}",
        "--simple-log",
        "--verbose",  # sessions logged with their user names
        f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--userdb={tmp_path / 'turndb'}",
        *options,
    ]
    with (tmp_path / "turnserver.out").open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not await asyncio.to_thread(_answers, port):
            assert process.poll() is None, running.log.read_text() if running.log.exists() else ""
            assert time.monotonic() < deadline, "turnserver did not answer within 10 s"
        yield running
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)


@pytest.fixture
async def coturn(tmp_path: Path) -> AsyncIterator[Coturn]:
    async with running_coturn(tmp_path) as running:
        yield running


async def ice_servers(node: Any, user: str) -> dict[str, Any]:
    response = await node.http().get(
        "/v1/ice-servers", headers={"Authorization": f"Bearer {node.auth.mint(user, 'device')}"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def turn_entry(answer: dict[str, Any]) -> tuple[tuple[str, int], str, str]:
    """Where the TURN URI says the server is, and the credential."""
    entry = next(server for server in answer["ice_servers"] if "credential" in server)
    uri = parse_uri(entry["urls"][0])
    assert uri.scheme == "turn" and uri.port is not None
    return (uri.host, uri.port), entry["username"], entry["credential"]


@pytest.fixture
def udp_peer() -> Iterator[socket.socket]:
    """The far end of the relay: what the other party of a call would be."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.settimeout(5)
        peer.bind(("127.0.0.1", 0))
        yield peer


def refused(server: tuple[str, int], username: str, credential: str) -> list[int]:
    """The codes coturn answered an Allocate with these credentials (the 401 challenge
    first); fails if it allocated."""
    client = TurnClient(server)
    try:
        with pytest.raises(TurnRefused):
            client.allocate(username, credential)
        return client.challenges
    finally:
        client.close()


def relay_round_trip(server: tuple[str, int], username: str, credential: str, peer: socket.socket) -> tuple[str, int]:
    """Allocate, permit the peer, data both ways through the relay; the relayed address."""
    client = TurnClient(server)
    try:
        relayed = client.allocate(username, credential)
        carries_data(client, relayed, peer)
        client.release()
        return relayed
    finally:
        client.close()


def carries_data(client: TurnClient, relayed: tuple[str, int], peer: socket.socket) -> None:
    client.permit(peer.getsockname())
    client.send(peer.getsockname(), b"media from the app")
    data, source = peer.recvfrom(2048)
    assert (data, source) == (b"media from the app", relayed)
    peer.sendto(b"media to the app", relayed)
    assert client.receive() == (peer.getsockname(), b"media to the app")


async def test_the_nodes_credential_allocates_a_relay_that_carries_data_both_ways(
    coturn: Coturn, node_factory: Any, udp_peer: socket.socket
) -> None:
    node = await node_factory(turn_uris=coturn.uris, turn_secret=SECRET, turn_ttl=600)
    answer = await ice_servers(node, "alice")
    assert answer["ice_servers"][0] == {"urls": [f"stun:127.0.0.1:{coturn.port}"]}
    server, username, credential = turn_entry(answer)
    assert server == ("127.0.0.1", coturn.port)
    assert re.fullmatch(r"\d{10}:alice", username) and int(username[:10]) - time.time() == pytest.approx(600, abs=5)
    host, port = await asyncio.to_thread(relay_round_trip, server, username, credential, udp_peer)
    assert host == "127.0.0.1" and port in coturn.relay_ports
    # coturn knew the user by the name in the credential.
    assert f"username=<{username}>" in coturn.log.read_text()


async def test_coturns_own_client_relays_with_the_nodes_credential(coturn: Coturn, node_factory: Any) -> None:
    node = await node_factory(turn_uris=coturn.uris, turn_secret=SECRET)
    (host, port), username, credential = turn_entry(await ice_servers(node, "bob"))
    uclient = shutil.which("turnutils_uclient")
    assert uclient, "turnutils_uclient ships with Debian's coturn"
    # -y: two allocations that send to each other through their relays; -c: no RTCP pair.
    command = [uclient, "-p", str(port), "-u", username, "-w", credential, "-y", "-c", "-n", "3", "-m", "1", host]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Cannot complete Allocation" not in output, output
    totals = re.search(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    assert totals is not None, output
    assert int(totals[1]) > 0 and totals[1] == totals[2], output
    assert "Total lost packets 0 " in output, output


async def test_an_expired_credential_is_refused_and_a_fresh_one_from_the_same_clock_works(
    coturn: Coturn, node_factory: Any, udp_peer: socket.socket
) -> None:
    # The node's clock 61 s behind: its credentials, good for 60 s, expired a second ago.
    clock = ManualClock(start_ms=int(time.time() * 1000) - 61_000)
    node = await node_factory(parts=NodeParts(clock=clock), turn_uris=coturn.uris, turn_secret=SECRET, turn_ttl=60)
    server, username, credential = turn_entry(await ice_servers(node, "carol"))
    assert int(username.partition(":")[0]) < time.time()
    assert await asyncio.to_thread(refused, server, username, credential) == [401, 401]
    clock.advance(61_000)  # caught up: the next credential expires in 60 s
    server, username, credential = turn_entry(await ice_servers(node, "carol"))
    await asyncio.to_thread(relay_round_trip, server, username, credential, udp_peer)


async def test_forged_and_altered_credentials_are_refused(coturn: Coturn, node_factory: Any) -> None:
    node = await node_factory(turn_uris=coturn.uris, turn_secret=SECRET)
    other = await node_factory(turn_uris=coturn.uris, turn_secret="another-secret-" + "x" * 24)
    server, username, credential = turn_entry(await ice_servers(node, "dave"))
    _, forged_username, forged = turn_entry(await ice_servers(other, "dave"))
    expiry, _, user = username.partition(":")
    attempts = {
        "another secret's credential": (forged_username, forged),
        "dave's credential for mallory": (f"{expiry}:mallory", credential),
        "dave's credential a day longer": (f"{int(expiry) + 86400}:{user}", credential),
        "a made-up credential": (username, "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        "no expiry": (user, credential),
    }
    for what, (name, password) in attempts.items():
        codes = await asyncio.to_thread(refused, server, name, password)
        assert codes == [401, 401], what


def outlives(server: tuple[str, int], username: str, credential: str, peer: socket.socket) -> list[int]:
    """Allocate just before the credential expires; after it has, the allocation still
    refreshes, permits and relays. Then a new allocation with it: the codes it drew."""
    expiry = int(username.partition(":")[0])
    client = TurnClient(server)
    try:
        relayed = client.allocate(username, credential)
        time.sleep(max(0.0, expiry + 1.2 - time.time()))  # coturn's clock, not ours: real seconds
        assert client.refresh(600) == 600
        carries_data(client, relayed, peer)
        client.release()
    finally:
        client.close()
    return refused(server, username, credential)


async def test_an_allocation_outlives_its_credential_but_a_new_one_needs_a_fresh_credential(
    coturn: Coturn, node_factory: Any, udp_peer: socket.socket
) -> None:
    # The node's clock 58 s behind, credentials good for 60 s: this one expires in 2 s.
    clock = ManualClock(start_ms=int(time.time() * 1000) - 58_000)
    node = await node_factory(parts=NodeParts(clock=clock), turn_uris=coturn.uris, turn_secret=SECRET, turn_ttl=60)
    server, username, credential = turn_entry(await ice_servers(node, "erin"))
    assert await asyncio.to_thread(outlives, server, username, credential, udp_peer) == [401, 401]


def allocations(server: tuple[str, int], credentials: list[tuple[str, str]]) -> list[int]:
    """Allocate with each credential in turn, all held at once: 200 or the refusal's code."""
    clients, codes = [], []
    try:
        for username, credential in credentials:
            client = TurnClient(server)
            clients.append(client)
            try:
                client.allocate(username, credential)
                codes.append(200)
            except TurnRefused as refusal:
                codes.append(refusal.code)
        return codes
    finally:
        for client in clients:
            client.close()


async def test_a_secret_is_rotated_with_both_secrets_on_coturn(tmp_path: Path, node_factory: Any) -> None:
    new_secret = "the-new-turn-secret-" + "n" * 20
    async with running_coturn(tmp_path, secrets=(SECRET, new_secret)) as both:
        old_node = await node_factory(turn_uris=both.uris, turn_secret=SECRET)
        new_node = await node_factory(turn_uris=both.uris, turn_secret=new_secret)
        old = turn_entry(await ice_servers(old_node, "frank"))
        new = turn_entry(await ice_servers(new_node, "frank"))
        assert old[2] != new[2]
        assert await asyncio.to_thread(allocations, old[0], [old[1:], new[1:]]) == [200, 200]


async def test_user_quota_counts_allocations_per_user_whatever_the_expiry(tmp_path: Path, node_factory: Any) -> None:
    async with running_coturn(tmp_path, "--user-quota=1") as quota:
        clock = ManualClock()
        node = await node_factory(parts=NodeParts(clock=clock), turn_uris=quota.uris, turn_secret=SECRET)
        first = turn_entry(await ice_servers(node, "gina"))
        clock.advance(5_000)
        later = turn_entry(await ice_servers(node, "gina"))
        assert later[1] != first[1]  # another expiry, another user name
        other = turn_entry(await ice_servers(node, "hal"))
        codes = await asyncio.to_thread(allocations, first[0], [first[1:], first[1:], later[1:], other[1:]])
        assert codes == [200, 486, 486, 200]
