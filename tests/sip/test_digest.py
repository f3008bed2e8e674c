"""Digest authentication (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760)."""

from __future__ import annotations

import pytest

from sip.digest import (
    Challenge,
    Credentials,
    DigestError,
    DigestServer,
    answer_challenge,
    authorize,
    compute_ha1,
    compute_response,
    parse_challenge,
    parse_credentials,
    pick_challenge,
)
from sip.message import Request, Response, build_response, parse_datagram
from tests.sip.test_transaction import make_request, wire

REALM = "sip.example.com"
USERS = {"alice": "wonderland", "bob": "builder"}


def lookup(username: str, realm: str, algorithm: str) -> str | None:
    password = USERS.get(username)
    return None if password is None else compute_ha1(username, realm, password, algorithm)


def register(body: bytes = b"") -> Request:
    req = make_request("REGISTER", rport=True)
    req.body = body
    return req


# --- vectors -----------------------------------------------------------------


def test_rfc2617_md5_qop_auth_vector() -> None:
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    assert (
        compute_response(
            ha1=ha1,
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_vectors(algorithm: str, expected: str) -> None:
    challenge = Challenge(
        "http-auth@example.org",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        algorithm,
        ("auth",),
        opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    )
    creds = answer_challenge(
        challenge,
        "GET",
        "/dir/index.html",
        "Mufasa",
        "Circle of Life",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert creds.response == expected
    assert creds.nc == "00000001" and creds.qop == "auth" and creds.opaque == challenge.opaque


def test_sha512_256_is_the_fips_truncated_variant() -> None:
    # FIPS 180-4 SHA-512/256("abc"); not SHA-512 cut to 256 bits.
    from sip.digest import _h

    assert _h("SHA-512-256", "abc") == "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
    assert len(compute_ha1("a", "r", "p", "SHA-512-256")) == 64


def test_rfc2069_form_without_qop() -> None:
    ha1 = compute_ha1("u", "r", "p")
    from hashlib import md5

    ha2 = md5(b"INVITE:sip:bob@example.com").hexdigest()
    assert (
        compute_response(ha1=ha1, method="INVITE", uri="sip:bob@example.com", nonce="n")
        == md5(f"{ha1}:n:{ha2}".encode()).hexdigest()
    )


# --- header grammar ----------------------------------------------------------


def test_challenge_and_credentials_round_trip() -> None:
    ch = Challenge(REALM, "abc/def+", "SHA-256", ("auth", "auth-int"), opaque="o", stale=True)
    text = str(ch)
    assert text.startswith('Digest realm="sip.example.com"') and "stale=TRUE" in text
    assert parse_challenge(text) == ch
    creds = Credentials('al"ice', REALM, "n", "sip:x@y", "abcd", "MD5", "auth", "00000001", "c")
    assert parse_credentials(str(creds)) == creds


def test_parse_tolerates_spacing_and_case() -> None:
    ch = parse_challenge('digest  REALM = "r" ,nonce="n",qop="auth" , algorithm=sha-256,stale=true')
    assert ch.realm == "r" and ch.nonce == "n" and ch.qop == ("auth",) and ch.stale
    with pytest.raises(DigestError):
        parse_challenge('Basic realm="r"')
    with pytest.raises(DigestError):
        parse_challenge('Digest realm="r, nonce=x')
    with pytest.raises(DigestError):
        parse_credentials('Digest username="u", realm="r"')


# --- server and client together ----------------------------------------------


def server(**kw: object) -> DigestServer:
    return DigestServer(REALM, b"cluster-secret", **kw)  # type: ignore[arg-type]


def test_challenge_then_authorized_register_round_trip() -> None:
    srv = server()
    req = register()
    assert srv.authenticate(req, lookup, 1000.0).reason == "no credentials"
    challenge = wire(srv.challenge(req, 1000.0, to_tag="t1"))
    assert isinstance(challenge, Response) and challenge.status == 401
    algs = [parse_challenge(str(v)).algorithm for v in challenge.headers.get_all("WWW-Authenticate")]
    assert algs == ["SHA-256", "MD5"]
    retry = authorize(req, challenge, "alice", "wonderland")
    assert retry.cseq.seq == req.cseq.seq + 1
    assert retry.top_via.branch != req.top_via.branch and retry.top_via.has_rport
    assert retry.call_id == req.call_id and retry.from_.tag == req.from_.tag
    got = wire(retry)
    assert isinstance(got, Request)
    result = srv.authenticate(got, lookup, 1010.0)
    assert result.ok and result.username == "alice"
    assert parse_credentials(str(got.headers.get("Authorization"))).algorithm == "SHA-256"


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "SHA-512-256", "MD5-sess", "SHA-256-sess"])
def test_every_algorithm_round_trips(algorithm: str) -> None:
    srv = server(algorithms=(algorithm,))
    req = register()
    retry = authorize(req, srv.challenge(req, 0.0), "bob", "builder")
    assert srv.authenticate(wire(retry), lookup, 1.0).ok  # type: ignore[arg-type]


def test_auth_int_covers_the_body() -> None:
    srv = server(qop=("auth-int",))
    req = register(b"v=0\r\n")
    retry = authorize(req, srv.challenge(req, 0.0), "bob", "builder")
    assert parse_credentials(str(retry.headers.get("Authorization"))).qop == "auth-int"
    assert srv.authenticate(retry, lookup, 1.0).ok
    retry.body = b"v=1\r\n"
    assert srv.authenticate(retry, lookup, 1.0).reason == "wrong response"


def test_wrong_password_unknown_user_and_foreign_nonce() -> None:
    srv = server()
    req = register()
    challenge = srv.challenge(req, 0.0)
    assert srv.authenticate(authorize(req, challenge, "alice", "guess"), lookup, 1.0).reason == "wrong response"
    assert srv.authenticate(authorize(req, challenge, "mallory", "x"), lookup, 1.0).reason == "unknown user"
    other = DigestServer(REALM, b"another-secret")
    forged = authorize(req, other.challenge(req, 0.0), "alice", "wonderland")
    assert srv.authenticate(forged, lookup, 1.0).reason == "nonce not ours"


def test_expired_nonce_is_stale_only_if_the_digest_is_right() -> None:
    srv = server(nonce_ttl=60.0)
    req = register()
    good = authorize(req, srv.challenge(req, 0.0), "alice", "wonderland")
    assert srv.authenticate(good, lookup, 59.0).ok
    result = srv.authenticate(good, lookup, 61.0)
    assert not result.ok and result.stale
    rechallenge = srv.challenge(good, 61.0, stale=result.stale)
    assert parse_challenge(str(rechallenge.headers.get("WWW-Authenticate"))).stale
    bad = authorize(req, srv.challenge(req, 0.0), "alice", "nope")
    assert not srv.authenticate(bad, lookup, 61.0).stale
    # A second node with the same secret accepts a nonce it never issued.
    assert server().authenticate(authorize(req, srv.challenge(req, 5.0), "alice", "wonderland"), lookup, 6.0).ok


def test_digest_uri_must_match_request_uri() -> None:
    srv = server()
    req = register()
    retry = authorize(req, srv.challenge(req, 0.0), "alice", "wonderland")
    retry.uri = retry.uri.__class__("sip", host="elsewhere.example.com")
    assert "uri" in srv.authenticate(retry, lookup, 1.0).reason


def test_nonce_count_replay_is_refused_when_tracked() -> None:
    srv = server(track_nonce_counts=True)
    req = register()
    retry = authorize(req, srv.challenge(req, 0.0), "alice", "wonderland")
    assert srv.authenticate(retry, lookup, 1.0).ok
    replay = srv.authenticate(retry, lookup, 2.0)
    assert not replay.ok and replay.stale
    challenge = parse_challenge(str(srv.challenge(req, 0.0).headers.get("WWW-Authenticate")))
    again = [answer_challenge(challenge, "REGISTER", str(req.uri), "alice", "wonderland", nc=n) for n in (1, 2)]
    for creds in again:
        req.headers.set("Authorization", str(creds))
        assert srv.authenticate(req, lookup, 3.0).ok


def test_qop_required_and_algorithm_not_offered() -> None:
    srv = server(algorithms=("SHA-256",))
    req = register()
    ch = Challenge(REALM, srv.make_nonce(0.0), "SHA-256", ())
    req.headers.set("Authorization", str(answer_challenge(ch, "REGISTER", str(req.uri), "alice", "wonderland")))
    assert srv.authenticate(req, lookup, 1.0).reason == "qop required"
    md5 = Challenge(REALM, srv.make_nonce(0.0), "MD5")
    req.headers.set("Authorization", str(answer_challenge(md5, "REGISTER", str(req.uri), "alice", "wonderland")))
    assert srv.authenticate(req, lookup, 1.0).reason == "algorithm not offered"


def test_proxy_challenge_407_with_ha1_on_the_client() -> None:
    srv = server()
    inv = make_request("INVITE")
    challenge = srv.challenge(inv, 0.0, proxy=True)
    assert challenge.status == 407 and "Proxy-Authenticate" in challenge.headers
    ha1 = compute_ha1("alice", REALM, "wonderland", "SHA-256")
    retry = authorize(inv, challenge, "alice", ha1=ha1)
    assert "Proxy-Authorization" in retry.headers and "Authorization" not in retry.headers
    assert srv.authenticate(retry, lookup, 1.0, proxy=True).ok
    # A second round replaces the credentials of that realm instead of piling up.
    again = authorize(retry, srv.challenge(retry, 2.0, proxy=True, stale=True), "alice", "wonderland")
    assert len(again.headers.get_all("Proxy-Authorization")) == 1
    assert again.cseq.seq == inv.cseq.seq + 2


def test_client_prefers_strongest_and_skips_unknown_algorithms() -> None:
    resp = build_response(register(), 401)
    resp.headers.add("WWW-Authenticate", 'Digest realm="r", nonce="1", algorithm=MD5, qop="auth"')
    resp.headers.add("WWW-Authenticate", 'Digest realm="r", nonce="2", algorithm=SHA-512-256, qop="auth"')
    resp.headers.add("WWW-Authenticate", 'Digest realm="r", nonce="3", algorithm=SHA-3, qop="auth"')
    resp.headers.add("WWW-Authenticate", 'Basic realm="r"')
    got = parse_datagram(resp.serialise())
    assert isinstance(got, Response)
    assert pick_challenge(got).nonce == "2"
    empty = build_response(register(), 401)
    with pytest.raises(DigestError):
        pick_challenge(empty)
    with pytest.raises(DigestError):
        authorize(register(), build_response(register(), 403), "a", "b")
    with pytest.raises(DigestError):
        DigestServer(REALM, b"s", algorithms=("SHA-1",))
