"""Display names reach the callee's screen cleaned, whichever way they came: no control
characters (NUL included), no bidi overrides or isolates, at most 64 characters, and the
caller's id when nothing readable is left. Unit tests of the one function, then a real
node: a WebSocket call.start and a sipp INVITE, checked in call.incoming and in the VoIP
push that the APNs simulator received."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from apnsim import APNsSimulator
from tests.conftest import RunningNode, register
from tests.sipcalls.conftest import (
    SipNodeFactory,
    finished,
    sip_node,  # noqa: F401  (the fixture, for this module)
    sip_port,
    start_sipp,
)
from tests.test_call_pushes import VOIP_TOPIC, invites_for
from voip.display_names import MAX_DISPLAY_NAME, MAX_RAW_DISPLAY_NAME, display_name

SCENARIOS = Path(__file__).parent / "scenarios"
SIP_CALLER = "sip:+15551234@pbx.example"


# The function --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Alice A.", "Alice A."),
        ("Al\x00ice", "Alice"),  # NUL
        ("Alice\x1b[31m", "Alice[31m"),  # ESC, C0
        ("Al\x85ice\x9b", "Al ice"),  # C1: NEL is a line break, CSI is dropped
        ("Alice\x7f", "Alice"),  # DEL
        ("invoice\u202egpj.exe", "invoicegpj.exe"),  # RIGHT-TO-LEFT OVERRIDE
        ("\u202aa\u202bb\u202cc\u202dd\u202ee", "abcde"),  # every embedding and override
        ("\u2066a\u2067b\u2068c\u2069d", "abcd"),  # every isolate
        ("Alice\r\nSmith", "Alice Smith"),  # a header injected nowhere: one space
        ("  Alice \t\t Smith  ", "Alice Smith"),
        ("Zoë 🎉 عليّ 李", "Zoë 🎉 عليّ 李"),  # real names in any script stay as they are
        ("👨\u200d👩\u200d👧", "👨\u200d👩\u200d👧"),  # joiners inside an emoji stay
    ],
)
def test_display_name_drops_controls_and_bidi_controls(raw: str, clean: str) -> None:
    assert display_name(raw, "alice") == clean


@pytest.mark.parametrize(
    "garbage",
    ["", None, "\x00", "\x00\x01\x02", "\u202e\u2066\u2069", "   \t\r\n", "\u200d\u200b", "\x00 \u202e \x9b"],
)
def test_nothing_readable_left_falls_back_to_the_user_id(garbage: str | None) -> None:
    assert display_name(garbage, "alice") == "alice"


def test_display_name_is_cut_to_its_documented_length() -> None:
    assert MAX_DISPLAY_NAME == 64
    assert display_name("x" * 200, "alice") == "x" * 64
    # Counted after cleaning: the dropped characters do not use up the length.
    assert display_name("\x00" * 100 + "y" * 70, "alice") == "y" * 64
    # No trailing space left by the cut.
    assert display_name("a" * 63 + " b", "alice") == "a" * 63


# A WebSocket call.start ------------------------------------------------------------------

NASTY_WS = "\x00Mal\u202elory\u2066 \x1b\x9b The\r\nCaller " + "z" * 80
CLEAN_WS = display_name(NASTY_WS, "alice")


def test_the_nasty_names_clean_to_what_the_tests_expect() -> None:
    assert CLEAN_WS == ("Mallory The Caller " + "z" * 80)[:64]
    assert len(CLEAN_WS) == 64


@pytest.fixture
async def pushing_node(
    node_factory: object, apns: tuple[APNsSimulator, dict[str, str]]
) -> tuple[RunningNode, APNsSimulator]:
    sim, settings = apns
    # The client's own caller_name is shown only when trusted (tests/test_identity.py has
    # the default); here it is, to check what cleaning does to it on its way.
    return await node_factory(**settings, trust_client_names=True), sim  # type: ignore[operator]


async def test_websocket_caller_name_reaches_call_incoming_and_the_push_cleaned(
    pushing_node: tuple[RunningNode, APNsSimulator],
) -> None:
    node, sim = pushing_node
    iphone = sim.add_device(VOIP_TOPIC, online=True)
    await register(node, "bob", "bob-iphone", voip_token=iphone.token)
    bob = await node.device("bob", "bob-tablet")
    alice = await node.device("alice", "alice-phone")

    started = await alice.request({"type": "call.start", "callee": "bob", "caller_name": NASTY_WS})
    assert started["type"] == "call.started", started
    call_id = started["call_id"]
    incoming = await bob.expect("call.incoming", call_id=call_id)
    assert incoming["caller_name"] == CLEAN_WS
    [push] = await invites_for(sim, call_id)
    assert orjson.loads(push.body)["caller"] == {"id": "alice", "display_name": CLEAN_WS}
    call = await node.node.stores.calls.get(call_id)
    assert call is not None and call.caller_name == CLEAN_WS  # what operators see too


async def test_websocket_caller_name_of_pure_garbage_shows_the_user_id(
    pushing_node: tuple[RunningNode, APNsSimulator],
) -> None:
    node, sim = pushing_node
    iphone = sim.add_device(VOIP_TOPIC, online=True)
    await register(node, "bob", "bob-iphone", voip_token=iphone.token)
    bob = await node.device("bob", "bob-tablet")
    alice = await node.device("alice", "alice-phone")

    started = await alice.request({"type": "call.start", "callee": "bob", "caller_name": "\x00\u202e\u2066\x1b"})
    call_id = started["call_id"]
    assert (await bob.expect("call.incoming", call_id=call_id))["caller_name"] == "alice"
    [push] = await invites_for(sim, call_id)
    assert orjson.loads(push.body)["caller"]["display_name"] == "alice"


async def test_websocket_caller_name_beyond_the_raw_limit_is_refused(node: RunningNode) -> None:
    alice = await node.device("alice", "alice-phone")
    reply = await alice.request(
        {"type": "call.start", "callee": "bob", "caller_name": "x" * (MAX_RAW_DISPLAY_NAME + 1)}
    )
    assert reply["type"] == "error" and reply["code"] == "invalid_message"
    assert "caller_name" in reply["message"]


# A SIP INVITE from sipp ----------------------------------------------------------------

# Quoted, with a quoted-pair carrying a control character (RFC 3261 allows it), a C1
# control, DEL, a right-to-left override and an isolate, and more than 64 characters.
NASTY_SIP = '"Ev\\\x01il \x7fPBX\x9b \u202eenoh\u2066p ' + "w" * 70 + '"'
CLEAN_SIP = ("Evil PBX enohp " + "w" * 70)[:64]


@pytest.mark.interop
async def test_sip_display_name_reaches_call_incoming_and_the_push_cleaned(
    sip_node: SipNodeFactory, apns: tuple[APNsSimulator, dict[str, str]], tmp_path: Path
) -> None:
    sim, settings = apns
    node = await sip_node(**settings)
    iphone = sim.add_device(VOIP_TOPIC, online=True)
    await register(node, "alice", "alice-iphone", voip_token=iphone.token)
    tablet = await node.device("alice", "alice-tablet")
    names = tmp_path / "names.csv"
    # sipp substitutes [field0] byte for byte: the name goes out in UTF-8 as written.
    names.write_bytes(b"SEQUENTIAL\n" + NASTY_SIP.encode() + b";\n")
    sipp = start_sipp(
        [
            f"127.0.0.1:{sip_port(node)}",
            "-sf",
            str(SCENARIOS / "display_name_cancels.xml"),
            "-inf",
            str(names),
            "-s",
            "alice",
            "-m",
            "1",
            "-p",
            "0",
        ],
        tmp_path / "sipp",
    )

    incoming = await tablet.expect("call.incoming", timeout=10)
    assert incoming["caller"] == SIP_CALLER
    assert incoming["caller_name"] == CLEAN_SIP
    [push] = await invites_for(sim, incoming["call_id"])
    assert orjson.loads(push.body)["caller"] == {"id": SIP_CALLER, "display_name": CLEAN_SIP}
    await tablet.request({"type": "call.ringing", "call_id": incoming["call_id"]})  # sipp waits for a 180
    await finished(sipp)
