"""ICE servers (issue 13, part 3): URIs checked at start as RFC 7064 and RFC 7065 write
them, coturn's REST-API credentials, and `GET /v1/ice-servers` on a node: who may ask,
what it answers with TURN, with STUN only and with nothing, and when the credential
expires (a ManualClock moves time). coturn itself: tests/turn/test_coturn.py."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from voip import logs
from voip.clock import ManualClock
from voip.ice_servers import IceServers, parse_uri, parse_uris, rest_api_credential
from voip.node import NodeParts
from voip.settings import Settings, SettingsError, load_settings

SECRET = "turn-shared-secret-0123456789"
TURN = ["stun:turn.example.com", "turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]


# --- URIs ---


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "transport"),
    [
        ("stun:stun.example.com", "stun", "stun.example.com", None, None),
        ("stun:192.0.2.1:3478", "stun", "192.0.2.1", 3478, None),
        ("stuns:stun.example.com:5349", "stuns", "stun.example.com", 5349, None),
        ("stun:[2001:db8::1]:3478", "stun", "[2001:db8::1]", 3478, None),
        ("turn:turn.example.com", "turn", "turn.example.com", None, None),
        ("turn:turn.example.com?transport=tcp", "turn", "turn.example.com", None, "tcp"),
        ("turn:[::1]:3478?transport=udp", "turn", "[::1]", 3478, "udp"),
        ("turns:turn.example.com:443?transport=tcp", "turns", "turn.example.com", 443, "tcp"),
        # RFC 7065's table: turns with ?transport=udp is DTLS.
        ("turns:turn.example.com?transport=udp", "turns", "turn.example.com", None, "udp"),
        ("TURN:Turn.Example.com:3478", "turn", "Turn.Example.com", 3478, None),
    ],
)
def test_uris_as_the_rfcs_write_them(
    text: str, scheme: str, host: str, port: int | None, transport: str | None
) -> None:
    uri = parse_uri(text)
    assert (uri.scheme, uri.host, uri.port, uri.transport) == (scheme, host, port, transport)
    assert uri.is_turn == scheme.startswith("turn")
    assert uri.text == scheme + text[len(scheme) :]  # the scheme in lower case, the rest as written


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("turn://turn.example.com:3478", "no //"),
        ("http://turn.example.com", "scheme"),
        ("turn.example.com:3478", "scheme"),
        ("turn:", "no host"),
        ("turn::3478", "no host"),
        ("turn:turn.example.com:0", "port"),
        ("turn:turn.example.com:65536", "port"),
        ("turn:turn.example.com:34a", "port"),
        ("turn:turn.example.com:", "port"),
        ("turn:turn.example.com?transport=sctp", "transport"),
        ("turn:turn.example.com?proto=udp", "transport"),
        ("stun:stun.example.com?transport=udp", r"no \?query"),
        ("turn:[not-an-address]:3478", "IPv6"),
        ("turn:2001:db8::1", "port"),  # an IPv6 address needs brackets
        ("turn:under_score.example.com", "DNS name"),
        ("turn:-bad.example.com", "DNS name"),
        ("turn:" + "a" * 64 + ".example.com", "DNS name"),
        (" turn:turn.example.com", "scheme"),
        ("turn:turn.example.com ", "DNS name"),
        ("turn:user:pass@turn.example.com", "no user or password"),
    ],
)
def test_bad_uris_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_uri(text)


def test_a_bad_uri_with_a_password_is_not_echoed() -> None:
    with pytest.raises(ValueError) as caught:
        parse_uris(["stun:a.example.com", "turn:alice:hunter2@turn.example.com"])
    assert str(caught.value).startswith("entry 2: ") and "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match=r"^'turn:x\?transport=sctp': "):
        parse_uris(["turn:x?transport=sctp"])


# --- Credentials ---


def test_the_credential_is_coturns_rest_api_form() -> None:
    # echo -n "1700000000:alice" | openssl dgst -sha1 -hmac "north-0123456789abcdef" -binary | base64
    credential = rest_api_credential(b"north-0123456789abcdef", "alice", 1700000000)
    assert credential.username == "1700000000:alice"
    assert credential.credential == "F0gVnS6YfmOQIqLJ34fLJVbycRM="
    assert len(base64.b64decode(credential.credential)) == 20  # an HMAC-SHA1
    # Another secret, user or expiry: another credential.
    assert rest_api_credential(b"north-0123456789abcdeX", "alice", 1700000000).credential != credential.credential
    assert rest_api_credential(b"north-0123456789abcdef", "alicf", 1700000000).credential != credential.credential
    assert rest_api_credential(b"north-0123456789abcdef", "alice", 1700000001).credential != credential.credential


def test_stun_without_credentials_turn_with_them_expiring_ttl_from_now() -> None:
    clock = ManualClock(start_ms=1_800_000_000_500)
    ice = IceServers(parse_uris(TURN), SECRET, ttl=600, clock=clock)
    answer = ice.for_user("alice")
    assert answer["ttl"] == 600
    stun, turn = answer["ice_servers"]
    assert stun == {"urls": ["stun:turn.example.com"]}
    assert turn["urls"] == TURN[1:]
    assert turn["username"] == "1800000600:alice"
    assert turn["credential"] == rest_api_credential(SECRET.encode(), "alice", 1_800_000_600).credential
    clock.advance(60_000)
    later = ice.for_user("alice")["ice_servers"][1]
    assert later["username"] == "1800000660:alice" and later["credential"] != turn["credential"]
    assert ice.for_user("bob")["ice_servers"][1]["username"] == "1800000660:bob"


def test_stun_only_and_nothing() -> None:
    clock = ManualClock()
    assert IceServers(parse_uris(["stun:a.example.com", "stuns:a.example.com"]), "", 60, clock).for_user("a") == {
        "ice_servers": [{"urls": ["stun:a.example.com", "stuns:a.example.com"]}],
        "ttl": 60,
    }
    assert IceServers([], "", 86400, clock).for_user("a") == {"ice_servers": [], "ttl": 86400}


# --- Settings ---


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("TURN_", "VOIP_", "REDIS_", "APNS_", "SIP_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def settings_failure(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message and message
    return message


def test_the_defaults_configure_no_ice_servers(clean_env: None) -> None:
    settings = load_settings()
    assert (settings.turn_uris, settings.turn_secret, settings.turn_ttl) == ([], "", 86400)


def test_turn_settings_from_the_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURN_URIS", '["stun:t.example.com", "turn:t.example.com?transport=tcp"]')
    monkeypatch.setenv("TURN_SECRET", SECRET)
    monkeypatch.setenv("TURN_TTL", "3600")
    settings = load_settings()
    assert settings.turn_uris == ["stun:t.example.com", "turn:t.example.com?transport=tcp"]
    assert settings.turn_ttl == 3600 and settings.turn_secret == SECRET
    assert SECRET not in repr(settings) + str(settings)


@pytest.mark.parametrize(
    ("env", "starts", "says"),
    [
        ({"TURN_URIS": '["turn:t.example.com"]'}, "TURN_SECRET", "needed with a turn:"),
        ({"TURN_URIS": '["turns:t.example.com"]'}, "TURN_SECRET", "needed with a turn:"),
        ({"TURN_URIS": '["stun:t.example.com"]', "TURN_SECRET": SECRET}, "TURN_SECRET", "no turn:"),
        ({"TURN_SECRET": SECRET}, "TURN_SECRET", "no turn:"),
        ({"TURN_URIS": '["turn:t.example.com"]', "TURN_SECRET": "short-secret"}, "TURN_SECRET", "16 bytes"),
        ({"TURN_URIS": '["turn://t.example.com"]', "TURN_SECRET": SECRET}, "TURN_URIS", "no //"),
        ({"TURN_URIS": '["stun:t.example.com?transport=udp"]'}, "TURN_URIS", "no ?query"),
        ({"TURN_URIS": "turn:t.example.com"}, "TURN_URIS", "not valid JSON"),
        ({"TURN_TTL": "59"}, "TURN_TTL", "greater than or equal to 60"),
        ({"TURN_TTL": "604801"}, "TURN_TTL", "less than or equal to 604800"),
    ],
)
def test_turn_settings_are_checked_at_start(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], starts: str, says: str
) -> None:
    message = settings_failure(monkeypatch, **env)
    assert message.startswith(starts) and says in message, message
    assert "short-secret" not in message and SECRET not in message


def test_the_shipped_files_name_every_turn_setting() -> None:
    config = Path(__file__).resolve().parent.parent / "config"
    readme = (config.parent / "README.md").read_text()
    for name in ("TURN_URIS", "TURN_SECRET", "TURN_TTL"):
        assert name in (config / "default.toml").read_text() and f"`{name}`" in readme
    assert "turn_uris" in (config / "production.example.toml").read_text()
    assert {"turn_uris", "turn_secret", "turn_ttl"} <= set(Settings.model_fields)


# --- Logs ---


def test_a_credential_in_a_log_line_is_redacted() -> None:
    credential = rest_api_credential(SECRET.encode(), "alice", 1_800_000_600).credential
    for line in (
        f'{{"username": "1800000600:alice", "credential": "{credential}"}}',
        f"credential={credential}",
        f"static-auth-secret={SECRET}",
        f"turn_secret: {SECRET}",
    ):
        cleaned = logs.redact_text(line)
        assert credential not in cleaned and SECRET not in cleaned and logs.REDACTED in cleaned, cleaned
    event = logs.redact(None, "info", {"event": "x", "credential": credential, "turn_secret": SECRET})
    assert event["credential"] == event["turn_secret"] == logs.REDACTED
    assert logs.redact_text("1800000600:alice") == "1800000600:alice"  # the username is no secret


# --- The endpoint ---


async def test_a_device_gets_turn_credentials_that_expire_ttl_from_the_nodes_clock(node_factory: Any) -> None:
    clock = ManualClock(start_ms=1_800_000_000_000)
    running = await node_factory(parts=NodeParts(clock=clock), turn_uris=TURN, turn_secret=SECRET, turn_ttl=3600)
    http = running.http()
    alice = {"Authorization": f"Bearer {running.auth.mint('alice', 'device')}"}
    answer = await http.get("/v1/ice-servers", headers=alice)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body == {
        "ice_servers": [
            {"urls": ["stun:turn.example.com"]},
            {
                "urls": TURN[1:],
                "username": "1800003600:alice",
                "credential": rest_api_credential(SECRET.encode(), "alice", 1_800_003_600).credential,
            },
        ],
        "ttl": 3600,
    }
    clock.advance(3_600_000)
    later = (await http.get("/v1/ice-servers", headers=alice)).json()
    assert later["ice_servers"][1]["username"] == "1800007200:alice"
    metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {running.auth.mint('ops', 'operator')}"})
    assert 'voip_ice_servers_total{servers="turn"}' in metrics.text


async def test_only_a_device_token_gets_them(node_factory: Any) -> None:
    running = await node_factory(turn_uris=TURN, turn_secret=SECRET)
    http = running.http()
    refusals = {
        None: 401,
        "Bearer not-a-jwt": 401,
        f"Bearer {running.auth.mint('alice', 'device', ttl=-5)}": 401,
        f"Bearer {running.auth.mint('ops', 'operator')}": 403,
    }
    for authorization, status in refusals.items():
        headers = {"Authorization": authorization} if authorization else {}
        response = await http.get("/v1/ice-servers", headers=headers)
        assert response.status_code == status, (authorization, response.text)
        assert "credential" not in response.text and set(response.json()) == {"error", "message"}
    wrong_method = await http.post("/v1/ice-servers", headers={"Authorization": f"Bearer {running.auth.mint('a')}"})
    assert wrong_method.status_code == 405


async def test_stun_only_and_none_configured_over_http(node_factory: Any) -> None:
    stun_only = await node_factory(turn_uris=["stun:stun.example.com:3478"], turn_ttl=120)
    nothing = await node_factory()
    token = {"Authorization": f"Bearer {stun_only.auth.mint('alice', 'device')}"}
    assert (await stun_only.http().get("/v1/ice-servers", headers=token)).json() == {
        "ice_servers": [{"urls": ["stun:stun.example.com:3478"]}],
        "ttl": 120,
    }
    assert (await nothing.http().get("/v1/ice-servers", headers=token)).json() == {"ice_servers": [], "ttl": 86400}
