"""Bearer JWTs and per-call status capabilities (voip/auth.py)."""

from __future__ import annotations

import time

import jwt
import pytest

from voip.auth import Authenticator, AuthError, Principal

SECRET = "auth-test-secret-" + "y" * 32


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(SECRET)


def raw(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


@pytest.mark.parametrize("role", ["device", "operator"])
def test_mint_verify_round_trip(auth: Authenticator, role: str) -> None:
    token = auth.mint("alice@example.com", role)  # type: ignore[arg-type]
    assert auth.verify(token) == Principal("alice@example.com", role)  # type: ignore[arg-type]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600


def test_wrong_secret(auth: Authenticator) -> None:
    other = Authenticator("another-secret-" + "z" * 32)
    with pytest.raises(AuthError):
        auth.verify(other.mint("alice"))


def test_expired(auth: Authenticator) -> None:
    with pytest.raises(AuthError, match="xpired"):
        auth.verify(auth.mint("alice", ttl=-5))


@pytest.mark.parametrize("missing", ["sub", "exp", "role"])
def test_missing_claims(auth: Authenticator, missing: str) -> None:
    claims = {"sub": "alice", "role": "device", "exp": int(time.time()) + 60}
    del claims[missing]
    with pytest.raises(AuthError):
        auth.verify(raw(claims))


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice", "role": "admin"},
        {"sub": "alice", "role": ""},
        {"sub": "alice", "role": ["device"]},
        {"sub": "", "role": "device"},
        {"sub": "a" * 129, "role": "device"},
        {"sub": 42, "role": "device"},
    ],
    ids=["admin-role", "empty-role", "list-role", "empty-sub", "long-sub", "int-sub"],
)
def test_bad_claims(auth: Authenticator, claims: dict) -> None:
    with pytest.raises(AuthError):
        auth.verify(raw({**claims, "exp": int(time.time()) + 60}))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_only_hs256_with_our_secret(auth: Authenticator) -> None:
    claims = {"sub": "alice", "role": "device", "exp": int(time.time()) + 60}
    with pytest.raises(AuthError):
        auth.verify(raw(claims, algorithm="HS512"))
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        auth.verify(unsigned)
    with pytest.raises(AuthError):
        auth.verify("not.a.jwt")
    with pytest.raises(AuthError):
        auth.verify("")


def test_tampered_payload_fails(auth: Authenticator) -> None:
    token = auth.mint("alice", "device")
    header, payload, signature = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"device"', b'"operator"')
    ).decode()
    assert forged_payload != payload
    with pytest.raises(AuthError):
        auth.verify(f"{header}.{forged_payload}.{signature}")
    with pytest.raises(AuthError):
        auth.verify(f"{header}.{payload}.{signature[:-2]}AA")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_accepts_the_scheme_in_any_case(auth: Authenticator, scheme: str) -> None:
    token = auth.mint("alice")
    assert auth.bearer(f"{scheme} {token}").user_id == "alice"
    assert auth.bearer(f"{scheme} {token}  ").user_id == "alice"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "{token}",
        "Bearer{token}",
        "Bearer {token} {token}",
    ],
)
def test_bearer_refuses_anything_else(auth: Authenticator, header: str | None) -> None:
    token = auth.mint("alice")
    with pytest.raises(AuthError):
        auth.bearer(header.replace("{token}", token) if header else header)


CALL = "6f1c1e0c-1e0b-4f60-9d6e-3a2b1c0d9e8f"
OTHER_CALL = "0b8f6a57-5d2e-4a8e-bb0e-4a5f0c7e1d22"


def test_capability_bound_to_call_device_and_expiry(auth: Authenticator) -> None:
    expires = int(time.time()) + 600
    cap = auth.capability(CALL, "b1", expires)
    assert auth.check_capability(cap, CALL, "b1")
    assert not auth.check_capability(cap, OTHER_CALL, "b1")
    assert not auth.check_capability(cap, CALL, "b2")
    assert not Authenticator("another-secret-" + "z" * 32).check_capability(cap, CALL, "b1")
    # Moving the expiry breaks the MAC.
    mac = cap.partition(".")[2]
    assert not auth.check_capability(f"{expires + 3600}.{mac}", CALL, "b1")
    assert not auth.check_capability(f"{expires - 1}.{mac}", CALL, "b1")


def test_expired_capability(auth: Authenticator) -> None:
    assert not auth.check_capability(auth.capability(CALL, "b1", int(time.time()) - 1), CALL, "b1")


def test_capability_fields_cannot_be_shifted(auth: Authenticator) -> None:
    # The separator keeps (call, device) pairs apart: "a"+"bc" is not "ab"+"c".
    expires = int(time.time()) + 600
    assert auth.capability("ab", "c", expires) != auth.capability("a", "bc", expires)


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc",
        "123",
        "123.",
        "-5.AAAA",
        "1e99.AAAA",
        " 99999999999.AAAA",
        "99999999999.",
        "99999999999.not-the-mac",
        "99999999999..AAAA",
    ],
)
def test_malformed_capabilities_are_refused(auth: Authenticator, token: str) -> None:
    assert auth.check_capability(token, CALL, "b1") is False


def test_capability_and_jwt_do_not_pass_for_each_other(auth: Authenticator) -> None:
    cap = auth.capability(CALL, "b1", int(time.time()) + 600)
    with pytest.raises(AuthError):
        auth.verify(cap)
    token = auth.mint("b1")
    assert not auth.check_capability(token, CALL, "b1")
    # A JWT signature made with the raw secret is no capability MAC either.
    expires = int(time.time()) + 600
    sig = jwt.encode({"x": 1}, SECRET, algorithm="HS256").split(".")[2]
    assert not auth.check_capability(f"{expires}.{sig[:24]}", CALL, "b1")


HOSTILE_CALL = "6f1c1e0c-1e0b-4f60-9d6e-3a2b1c0d9e8f"


@pytest.mark.parametrize("token", ["99999999999.é", "99999999999.ＡＡＡＡ", "9" * 5000 + ".AAAA"])
def test_hostile_capabilities_are_refused_not_raised(token: str) -> None:
    assert Authenticator("s" * 40).check_capability(token, HOSTILE_CALL, "b1") is False
