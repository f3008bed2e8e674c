"""Who the callee is told is calling: the app's backend decides (the token's claim `name`),
not the calling client, unless VOIP_TRUST_CLIENT_NAMES says the clients are trusted."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
import websockets

from tests.conftest import SECRET, RunningNode
from voip.auth import Authenticator, AuthError

pytestmark = pytest.mark.on_cluster_too


async def incoming_name(node: RunningNode, frame: dict[str, Any], name: str | None = None) -> str:
    alice = await node.device("alice", "a1", name=name)
    bob = await node.device("bob", "b1")
    started = await alice.request({"type": "call.start", "callee": "bob", **frame})
    assert started["type"] == "call.started", started
    return str((await bob.expect("call.incoming", call_id=started["call_id"]))["caller_name"])


async def test_a_client_cannot_choose_its_own_name_by_default(node: RunningNode) -> None:
    assert await incoming_name(node, {"caller_name": "Bank Support"}) == "alice"


async def test_the_token_s_name_is_shown_whatever_the_client_says(node_factory: Any) -> None:
    for trusted in (False, True):
        node = await node_factory(trust_client_names=trusted)
        assert await incoming_name(node, {"caller_name": "Bank Support"}, name="Alice Liddell") == "Alice Liddell"


async def test_trusted_clients_name_themselves(node_factory: Any) -> None:
    node = await node_factory(trust_client_names=True)
    assert await incoming_name(node, {"caller_name": "Alice at home"}) == "Alice at home"


async def test_the_token_s_name_is_cleaned_like_any_name(node: RunningNode) -> None:
    assert await incoming_name(node, {}, name="Alice\u202e \x00Liddell") == "Alice Liddell"


def test_a_name_claim_that_is_not_a_short_string_is_refused(auth: Authenticator) -> None:
    for bad in (42, ["Alice"], "x" * 300):
        token = jwt.encode({"sub": "alice", "role": "device", "exp": 2**40, "name": bad}, SECRET, algorithm="HS256")
        with pytest.raises(AuthError, match="name"):
            auth.verify(token)
    assert auth.verify(auth.mint("alice", name="Alice")).name == "Alice"


async def test_a_socket_with_a_bad_name_claim_is_refused(node: RunningNode) -> None:
    token = jwt.encode({"sub": "alice", "role": "device", "exp": 2**40, "name": 42}, SECRET, algorithm="HS256")
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{node.ws_url}?device_id=a1", additional_headers={"Authorization": f"Bearer {token}"})
    assert refused.value.response.status_code == 401
