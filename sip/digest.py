"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760).

Pure functions and small classes, no I/O:

* :class:`DigestServer` builds challenges (401 WWW-Authenticate or 407
  Proxy-Authenticate) and verifies credentials against HA1 values, so
  plaintext passwords need not be stored.  Nonces carry their timestamp and
  an HMAC, so any node holding the secret can check them without shared
  state, and old ones come back as ``stale=true``.
* Replays: a verified :class:`AuthResult` names its ``(nonce, nc)`` pair.
  Accepting each pair once needs memory shared by every node that may see
  the replay, which is I/O: the caller consumes the pair in its own store,
  for :attr:`DigestServer.count_ttl` seconds, and re-challenges with
  ``stale=true`` when it was used already.  ``track_nonce_counts`` does the
  same in this process's memory, for a single node.
* :func:`authorize` answers a challenge: it re-issues a request with
  Authorization / Proxy-Authorization, a new CSeq and a new branch.

Algorithms: MD5, SHA-256 and SHA-512-256, plus their ``-sess`` variants;
qop ``auth`` and ``auth-int``, and the RFC 2069 form without qop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .message import (
    CSeq,
    Headers,
    Request,
    Response,
    Via,
    build_response,
    generate_branch,
    parse_uri,
    quote,
    unquote,
)

__all__ = [
    "ALGORITHMS",
    "AuthResult",
    "Challenge",
    "Credentials",
    "DigestError",
    "DigestServer",
    "HA1Lookup",
    "answer_challenge",
    "authorize",
    "compute_ha1",
    "compute_response",
    "parse_challenge",
    "parse_credentials",
    "pick_challenge",
]

_HASHES: dict[str, str] = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
ALGORITHMS: tuple[str, ...] = tuple(name for base in _HASHES for name in (base, base + "-sess"))
# RFC 8760 §2.4: a client facing several challenges takes the strongest.
_PREFERENCE = ("SHA-512-256", "SHA-256", "MD5")
# Seconds a nonce is accepted before its timestamp: nodes' clocks differ a little.
CLOCK_SKEW = 30
_NC = re.compile(r"[0-9a-fA-F]{8}")


class DigestError(ValueError):
    """A malformed challenge or credentials, or an unsupported algorithm."""


def _base_algorithm(algorithm: str) -> str:
    base = algorithm.upper().removesuffix("-SESS")
    if base not in _HASHES:
        raise DigestError(f"unsupported algorithm {algorithm!r}")
    return base


def _h(algorithm: str, data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.new(_HASHES[_base_algorithm(algorithm)], raw).hexdigest()


# --- Header grammar ----------------------------------------------------------


def _parse_params(value: str) -> tuple[str, dict[str, str]]:
    """``scheme name=value, name="quoted", ...`` into the scheme and params
    (names lower-case, values unquoted)."""
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if not scheme:
        raise DigestError("empty authentication header")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise DigestError(f"parameter without value in {value!r}")
        name = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            j = i + 1
            while j < n and rest[j] != '"':
                j += 2 if rest[j] == "\\" else 1
            if j >= n:
                raise DigestError(f"unterminated quoted string in {value!r}")
            params[name] = unquote(rest[i : j + 1])
            i = j + 1
        else:
            j = rest.find(",", i)
            j = n if j < 0 else j
            params[name] = rest[i:j].strip()
            i = j
    return scheme, params


def _format(scheme: str, items: Iterable[tuple[str, str | None, bool]]) -> str:
    parts = [f"{k}={quote(v) if quoted else v}" for k, v, quoted in items if v is not None]
    return f"{scheme} " + ", ".join(parts)


@dataclass(frozen=True)
class Challenge:
    """One WWW-Authenticate / Proxy-Authenticate Digest challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ("auth",)
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None

    def __str__(self) -> str:
        return _format(
            "Digest",
            [
                ("realm", self.realm, True),
                ("domain", self.domain, True),
                ("nonce", self.nonce, True),
                ("opaque", self.opaque, True),
                ("stale", "TRUE" if self.stale else None, False),
                ("algorithm", self.algorithm, False),
                ("qop", ",".join(self.qop) if self.qop else None, True),
            ],
        )


def parse_challenge(value: str) -> Challenge:
    scheme, p = _parse_params(value)
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest challenge: {scheme}")
    if "realm" not in p or "nonce" not in p:
        raise DigestError("challenge without realm or nonce")
    qop = tuple(q.strip() for q in p["qop"].split(",") if q.strip()) if "qop" in p else ()
    return Challenge(
        realm=p["realm"],
        nonce=p["nonce"],
        algorithm=p.get("algorithm", "MD5"),
        qop=qop,
        opaque=p.get("opaque"),
        stale=p.get("stale", "").lower() == "true",
        domain=p.get("domain"),
    )


@dataclass(frozen=True)
class Credentials:
    """One Authorization / Proxy-Authorization Digest header."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    def __str__(self) -> str:
        return _format(
            "Digest",
            [
                ("username", self.username, True),
                ("realm", self.realm, True),
                ("nonce", self.nonce, True),
                ("uri", self.uri, True),
                ("response", self.response, True),
                ("algorithm", self.algorithm, False),
                ("cnonce", self.cnonce, True),
                ("opaque", self.opaque, True),
                ("qop", self.qop, False),
                ("nc", self.nc, False),
            ],
        )


def parse_credentials(value: str) -> Credentials:
    scheme, p = _parse_params(value)
    if scheme.lower() != "digest":
        raise DigestError(f"not Digest credentials: {scheme}")
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
    if missing:
        raise DigestError(f"credentials without {', '.join(missing)}")
    return Credentials(
        username=p["username"],
        realm=p["realm"],
        nonce=p["nonce"],
        uri=p["uri"],
        response=p["response"].lower(),
        algorithm=p.get("algorithm", "MD5"),
        qop=p.get("qop"),
        nc=p.get("nc"),
        cnonce=p.get("cnonce"),
        opaque=p.get("opaque"),
    )


# --- The digest computation --------------------------------------------------


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password): what a registrar stores instead of the password.

    The ``-sess`` variants use the same stored value; the session part is
    added per request by :func:`compute_response`.
    """
    return _h(algorithm, f"{username}:{realm}:{password}")


def compute_response(
    *,
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest of RFC 7616 §3.4.1 (RFC 2069 form when ``qop`` is None)."""
    if algorithm.upper().endswith("-SESS"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce or ''}")
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + _h(algorithm, body)
    ha2 = _h(algorithm, a2)
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --- Server side -------------------------------------------------------------


@dataclass(frozen=True)
class AuthResult:
    """Outcome of :meth:`DigestServer.authenticate`.

    ``ok`` with the authenticated ``username``; otherwise re-challenge,
    with ``stale=True`` when only the nonce had expired (the client then
    retries without asking the user again).  When ``ok``, ``nonce`` and
    ``nc`` (the nonce count, an integer) are the pair that must not be
    accepted again.
    """

    ok: bool
    username: str | None = None
    stale: bool = False
    reason: str = ""
    nonce: str | None = None
    nc: int | None = None


# (username, realm, algorithm) -> HA1 hex, or None for an unknown user.  The
# algorithm is passed because HA1 differs per hash function.
HA1Lookup = Callable[[str, str, str], str | None]


@dataclass
class DigestServer:
    """Stateless Digest challenges and verification for one realm.

    ``secret`` signs nonces; every node of a cluster that may see the retry
    needs the same secret (and roughly the same wall clock).  ``now`` is
    wall-clock seconds (``time.time()``).  With ``track_nonce_counts`` the
    server also refuses a replayed ``nc`` for a nonce it has seen; that
    needs memory on this node, bounded by ``max_tracked_nonces``.
    """

    realm: str
    secret: bytes
    algorithms: Sequence[str] = ("SHA-256", "MD5")
    nonce_ttl: float = 30.0
    qop: tuple[str, ...] = ("auth",)
    track_nonce_counts: bool = False
    max_tracked_nonces: int = 100_000
    _counts: OrderedDict[str, int] = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        for algorithm in self.algorithms:
            _base_algorithm(algorithm)

    # -- nonces

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.secret, self.realm.encode() + b"\0" + body, hashlib.sha256).digest()[:16]

    def make_nonce(self, now: float) -> str:
        body = struct.pack(">Q", int(now)) + secrets.token_bytes(8)
        return base64.urlsafe_b64encode(body + self._mac(body)).decode().rstrip("=")

    def nonce_status(self, nonce: str, now: float) -> str:
        """``"valid"``, ``"stale"`` (ours but expired) or ``"invalid"``."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return "invalid"
        if len(raw) != 32 or not hmac.compare_digest(raw[16:], self._mac(raw[:16])):
            return "invalid"
        (issued,) = struct.unpack(">Q", raw[:8])
        if not issued - CLOCK_SKEW <= now <= issued + self.nonce_ttl:
            return "stale"
        return "valid"

    @property
    def count_ttl(self) -> int:
        """Seconds a used ``(nonce, nc)`` must be remembered: past that, the
        nonce is stale whichever node issued it."""
        return int(self.nonce_ttl) + 1 + CLOCK_SKEW

    # -- challenge

    def challenges(
        self, now: float, *, stale: bool = False, algorithms: Sequence[str] | None = None
    ) -> list[Challenge]:
        nonce = self.make_nonce(now)
        return [
            Challenge(self.realm, nonce, a, self.qop, stale=stale)
            for a in (self.algorithms if algorithms is None else algorithms)
        ]

    def challenge(
        self,
        request: Request,
        now: float,
        *,
        stale: bool = False,
        proxy: bool = False,
        to_tag: str | None = None,
        algorithms: Sequence[str] | None = None,
    ) -> Response:
        """401 with WWW-Authenticate (407 with Proxy-Authenticate when ``proxy``),
        one challenge per algorithm (``algorithms``, default all offered), in the
        configured order (RFC 8760 §2.4)."""
        response = build_response(request, 407 if proxy else 401, to_tag=to_tag)
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        for ch in self.challenges(now, stale=stale, algorithms=algorithms):
            response.headers.add(name, str(ch))
        return response

    # -- verification

    def credentials(self, request: Request, *, proxy: bool = False) -> Credentials | None:
        """The request's Digest credentials for our realm, if any."""
        name = "Proxy-Authorization" if proxy else "Authorization"
        for value in request.headers.get_all(name):
            try:
                creds = parse_credentials(str(value))
            except DigestError:
                continue
            if creds.realm == self.realm:
                return creds
        return None

    def verify(self, request: Request, credentials: Credentials, ha1: str, now: float) -> AuthResult:
        """Check ``credentials`` of ``request`` against the stored ``ha1``."""
        c = credentials
        if c.algorithm.upper() not in (a.upper() for a in self.algorithms):
            return AuthResult(False, c.username, reason="algorithm not offered")
        if not _same_uri(c.uri, request):
            return AuthResult(False, c.username, reason="digest uri does not match Request-URI")
        count = _nonce_count(c.nc)
        if c.qop is not None and (c.qop not in self.qop or count is None or not c.cnonce):
            return AuthResult(False, c.username, reason="bad qop, nc or cnonce")
        if c.qop is None and self.qop:
            return AuthResult(False, c.username, reason="qop required")
        status = self.nonce_status(c.nonce, now)
        if status == "invalid":
            return AuthResult(False, c.username, reason="nonce not ours")
        expected = compute_response(
            ha1=ha1,
            method=request.method,
            uri=c.uri,
            nonce=c.nonce,
            algorithm=c.algorithm,
            qop=c.qop,
            nc=c.nc,
            cnonce=c.cnonce,
            body=request.body,
        )
        if not hmac.compare_digest(expected, c.response):
            return AuthResult(False, c.username, reason="wrong response")
        if status == "stale":
            return AuthResult(False, c.username, stale=True, reason="nonce expired")
        if self.track_nonce_counts and count is not None and not self._count(c.nonce, count):
            return AuthResult(False, c.username, stale=True, reason="nonce count replayed")
        return AuthResult(True, c.username, nonce=c.nonce, nc=count)

    def authenticate(self, request: Request, lookup: HA1Lookup, now: float, *, proxy: bool = False) -> AuthResult:
        """Find our credentials, look up HA1 and verify.  For an asynchronous
        user store, call :meth:`credentials`, look up, then :meth:`verify`."""
        creds = self.credentials(request, proxy=proxy)
        if creds is None:
            return AuthResult(False, reason="no credentials")
        try:
            algorithm = _base_algorithm(creds.algorithm)
        except DigestError:
            return AuthResult(False, creds.username, reason="unsupported algorithm")
        ha1 = lookup(creds.username, creds.realm, algorithm)
        if ha1 is None:
            return AuthResult(False, creds.username, reason="unknown user")
        return self.verify(request, creds, ha1, now)

    def _count(self, nonce: str, value: int) -> bool:
        last = self._counts.get(nonce, 0)
        if value <= last:
            return False
        self._counts[nonce] = value
        self._counts.move_to_end(nonce)
        while len(self._counts) > self.max_tracked_nonces:
            self._counts.popitem(last=False)
        return True


def _nonce_count(nc: str | None) -> int | None:
    """RFC 7616 §3.4: 8 hex digits, counting from 1."""
    if nc is None or not _NC.fullmatch(nc):
        return None
    value = int(nc, 16)
    return value if value > 0 else None


def _same_uri(digest_uri: str, request: Request) -> bool:
    if digest_uri == str(request.uri):
        return True
    try:
        return parse_uri(digest_uri) == request.uri
    except ValueError:
        return False


# --- Client side -------------------------------------------------------------


def answer_challenge(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str | None = None,
    *,
    ha1: str | None = None,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
) -> Credentials:
    """Credentials answering ``challenge`` for one request.

    Give ``password`` or a precomputed ``ha1``.  qop ``auth`` is preferred
    over ``auth-int`` when both are offered.
    """
    if ha1 is None:
        if password is None:
            raise DigestError("need a password or an HA1")
        ha1 = compute_ha1(username, challenge.realm, password, challenge.algorithm)
    qop: str | None = None
    if challenge.qop:
        qop = "auth" if "auth" in challenge.qop else "auth-int" if "auth-int" in challenge.qop else None
        if qop is None:
            raise DigestError(f"no supported qop in {challenge.qop}")
    needs_cnonce = qop is not None or challenge.algorithm.upper().endswith("-SESS")
    cnonce = (cnonce or secrets.token_hex(8)) if needs_cnonce else None
    nc_text = f"{nc:08x}" if qop is not None else None
    response = compute_response(
        ha1=ha1,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
        body=body,
    )
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
        opaque=challenge.opaque,
    )


def pick_challenge(response: Response) -> Challenge:
    """The strongest supported Digest challenge of a 401 or 407."""
    name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
    found: list[Challenge] = []
    for value in response.headers.get_all(name):
        try:
            ch = parse_challenge(str(value))
            _base_algorithm(ch.algorithm)
        except DigestError:
            continue
        found.append(ch)
    if not found:
        raise DigestError(f"no supported Digest challenge in {response.status}")
    return min(found, key=lambda c: _PREFERENCE.index(_base_algorithm(c.algorithm)))


def authorize(
    request: Request,
    response: Response,
    username: str,
    password: str | None = None,
    *,
    ha1: str | None = None,
    cnonce: str | None = None,
) -> Request:
    """The request to send after a 401/407 (§22.2): a copy of ``request`` with
    the credentials added, CSeq + 1 and a new branch (a new transaction).

    Credentials of an earlier round for the same realm are replaced.
    """
    if response.status not in (401, 407):
        raise DigestError(f"{response.status} is not a challenge")
    challenge = pick_challenge(response)
    creds = answer_challenge(
        challenge,
        request.method,
        str(request.uri),
        username,
        password,
        ha1=ha1,
        cnonce=cnonce,
        body=request.body,
    )
    header = "Proxy-Authorization" if response.status == 407 else "Authorization"
    headers = Headers()
    first_via = True
    for name, value in request.headers:
        if name == "Via" and first_via:
            first_via = False
            top = value if isinstance(value, Via) else request.top_via
            params = {k: v for k, v in top.params.items() if k not in ("received", "rport")}
            if "rport" in top.params:
                params["rport"] = None
            params["branch"] = generate_branch()
            value = Via(top.transport, top.host, top.port, params, top.protocol)
        elif name == "CSeq":
            value = CSeq(request.cseq.seq + 1, request.method)
        elif name == header and _realm_of(str(value)) == challenge.realm:
            continue
        headers.add(name, value)
    headers.add(header, str(creds))
    return Request(request.method, request.uri, headers, request.body)


def _realm_of(value: str) -> str | None:
    try:
        return _parse_params(value)[1].get("realm")
    except DigestError:
        return None
