"""SIP message model, parser and serialiser (RFC 3261 §7, §19, §20, §25; RFC 3581).

Pure functions and small data classes, no I/O:

* :func:`parse_datagram` parses one UDP datagram (Content-Length optional,
  trailing octets after the declared body discarded, RFC 3261 §18.3).
* :class:`StreamParser` frames messages out of arbitrary byte chunks of a
  stream transport (TCP/TLS) using Content-Length.
* :meth:`Request.serialise` / :meth:`Response.serialise` (also ``bytes(msg)``)
  produce wire bytes with a correct Content-Length.

Every malformed input raises :class:`ParseError`, whose ``status`` is the
response a UAS should answer with (400, 416, 505 or 513).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "BRANCH_MAGIC_COOKIE",
    "URI",
    "CSeq",
    "Headers",
    "NameAddr",
    "ParseError",
    "Request",
    "Response",
    "StreamParser",
    "Via",
    "build_response",
    "canonical_name",
    "generate_branch",
    "generate_tag",
    "parse_datagram",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_header_list",
]

BRANCH_MAGIC_COOKIE = "z9hG4bK"
MAX_DATAGRAM_SIZE = 65_535
MAX_HEADER_SIZE = 65_536
MAX_BODY_SIZE = 1_048_576
MAX_CSEQ = 2**31 - 1
MAX_MAX_FORWARDS = 255


class ParseError(ValueError):
    """A message (or header) that cannot be accepted.

    ``status`` is what a UAS would answer a request with: 400 Bad Request,
    416 Unsupported URI Scheme, 505 Version Not Supported or 513 Message Too
    Large.  A malformed response is simply dropped by the receiver.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        # Set by StreamParser: False when the bad message was consumed and the
        # stream can go on, True when framing is lost and the connection must close.
        self.fatal = True
        # The header section of the offending message when known, so the
        # edge can still address a 400 to its sender.
        self.head: str | None = None


# --- Character classes (RFC 3261 §25.1) -------------------------------------

_WS = " \t"


# Single character-class regexes: matched in C, linear time, no backtracking.
_TOKEN_MATCH = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+").fullmatch
_HOST_MATCH = re.compile(r"[A-Za-z0-9\-._]+").fullmatch
_IPV6_MATCH = re.compile(r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]").fullmatch
_CALLID_MATCH = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}@]+").fullmatch
_URI_BAD_SEARCH = re.compile(r"[ \t\r\n<>\"]").search
_PARAM_VALUE_MATCH = re.compile(r"[A-Za-z0-9\-.!%*_+`'~\[\]:]+").fullmatch


def _is_token(s: str) -> bool:
    return _TOKEN_MATCH(s) is not None


def _is_digits(s: str) -> bool:
    # str.isdigit() accepts non-ASCII digits such as "²"; SIP wants DIGIT.
    return bool(s) and s.isascii() and s.isdigit()


# --- Header names ------------------------------------------------------------

COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL: dict[str, str] = {
    n.lower(): n
    for n in (
        "Accept",
        "Accept-Contact",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "Identity",
        "Identity-Info",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "MIME-Version",
        "Organization",
        "Path",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Reject-Contact",
        "Reply-To",
        "Request-Disposition",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Service-Route",
        "Session-Expires",
        "Subject",
        "Subscription-State",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
        "P-Asserted-Identity",
        "Privacy",
        "Min-SE",
    )
}
for _short, _long in COMPACT_FORMS.items():
    _CANONICAL[_short] = _long

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1) and which we
# therefore split into one entry per element.  Authorization-style headers and
# Date/Warning are deliberately absent: commas occur inside their grammar.
LIST_HEADERS = frozenset(
    n.lower()
    for n in (
        "Via",
        "Contact",
        "Route",
        "Record-Route",
        "Path",
        "Service-Route",
        "Allow",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Allow-Events",
        "Content-Encoding",
        "Content-Language",
        "In-Reply-To",
        "Alert-Info",
        "Call-Info",
        "Error-Info",
        "Reply-To",
        "P-Asserted-Identity",
        "Accept-Contact",
        "Reject-Contact",
        "Request-Disposition",
        "Privacy",
    )
)

# List headers whose whole value may be empty (RFC 3261 §25.1: `[ element *(COMMA element) ]`);
# baresip sends `Supported:` with nothing after it.
EMPTY_LIST_HEADERS = frozenset(("allow", "supported", "accept", "accept-encoding", "accept-language"))

# Headers that may appear at most once (RFC 3261 §20 and torture test multi01).
SINGLE_HEADERS = frozenset(("to", "from", "call-id", "cseq", "max-forwards", "content-length", "content-type"))


def canonical_name(name: str) -> str:
    """Return the conventional spelling of a header name (compact forms expanded)."""
    return _CANONICAL.get(name.lower(), name)


# --- URIs --------------------------------------------------------------------


@dataclass(eq=True)
class URI:
    """A SIP/SIPS/tel URI, or any other absolute URI kept opaque.

    For ``sip``/``sips`` all fields are used.  For ``tel`` the subscriber
    number is in ``user`` and ``host`` is empty.  Other schemes keep the
    part after ``scheme:`` in ``opaque``.  Escaped octets (``%41``) are kept
    as written, so serialisation is faithful.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None
    opaque: str | None = None

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def host_port(self) -> tuple[str, int | None]:
        return self.host, self.port

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.scheme == "tel":
                parts.append(_format_params(self.params))
                return "".join(parts)
            if self.password is not None:
                parts.append(":")
                parts.append(self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        parts.append(_format_params(self.params))
        if self.headers is not None:
            parts.append("?")
            parts.append(self.headers)
        return "".join(parts)


def _format_params(params: dict[str, str | None]) -> str:
    if not params:
        return ""
    return "".join([f";{k}" if v is None else f";{k}={v}" for k, v in params.items()])


def _parse_port(text: str) -> int:
    if not _is_digits(text) or len(text) > 5 or int(text) > 65535:
        raise ParseError(f"invalid port {text!r}")
    return int(text)


def _parse_host_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError("unterminated IPv6 reference")
        host = text[: end + 1]
        if _IPV6_MATCH(host) is None:
            raise ParseError(f"invalid IPv6 reference {host!r}")
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise ParseError(f"junk after IPv6 reference {text!r}")
        return host, _parse_port(rest[1:])
    host, colon, port = text.partition(":")
    if _HOST_MATCH(host) is None:
        raise ParseError(f"invalid host {host!r}")
    return host, (_parse_port(port) if colon else None)


def _parse_uri_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    if not text:
        return params
    for item in text.split(";"):
        if not item:
            raise ParseError("empty URI parameter")
        name, eq, value = item.partition("=")
        if not name or _URI_BAD_SEARCH(item) is not None:
            raise ParseError(f"invalid URI parameter {item!r}")
        params[name.lower() if name.isascii() else name] = value if eq else None
    return params


_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


def parse_uri(text: str) -> URI:
    """Parse a URI.  Unknown schemes are accepted and kept opaque."""
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme):
        raise ParseError(f"invalid URI {text!r}")
    if not rest or _URI_BAD_SEARCH(rest) is not None:
        raise ParseError(f"invalid URI {text!r}")
    scheme = scheme.lower()
    if scheme == "tel":
        number, _, params = rest.partition(";")
        if not number:
            raise ParseError(f"invalid tel URI {text!r}")
        return URI(scheme="tel", user=number, params=_parse_uri_params(params))
    if scheme not in ("sip", "sips"):
        return URI(scheme=scheme, opaque=rest)
    user = password = None
    # '@' cannot appear unescaped outside userinfo, so the first one ends it;
    # userinfo itself may hold ';', '?' and '/' (RFC 4475 intmeth, semiuri).
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, pcolon, pw = userinfo.partition(":")
        if not user:
            raise ParseError(f"empty user in {text!r}")
        if pcolon:
            password = pw
    hostport, qmark, headers = rest.partition("?")
    hostport, _, params = hostport.partition(";")
    host, port = _parse_host_port(hostport)
    return URI(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=_parse_uri_params(params),
        headers=headers if qmark else None,
    )


# --- Quoted strings, lists, generic parameters -------------------------------


def _scan_quoted(text: str, start: int) -> int:
    """Index just past the closing quote of the quoted-string at ``start``."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise ParseError("unterminated quoted string")


def unquote(text: str) -> str:
    """Strip the quotes of a quoted-string and resolve its quoted-pairs."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        if "\\" not in inner:
            return inner
        out: list[str] = []
        i = 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner):
                i += 1
            out.append(inner[i])
            i += 1
        return "".join(out)
    return text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_header_list(value: str) -> list[str]:
    """Split a header value at top-level commas (not in quotes or ``<...>``)."""
    if "," not in value:
        return [value.strip()]
    parts: list[str] = []
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == '"':
            i = _scan_quoted(value, i)
            continue
        if c == "<":
            end = value.find(">", i)
            if end < 0:
                raise ParseError("unterminated '<'")
            i = end + 1
            continue
        if c == ",":
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    parts.append(value[start:].strip())
    return parts


def _parse_generic_params(text: str) -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )``; ``text`` starts at the first ';'."""
    params: dict[str, str | None] = {}
    text = text.strip(_WS)
    if not text:
        return params
    if text[0] != ";":
        raise ParseError(f"expected ';' in {text!r}")
    items: list[str]
    if '"' not in text:
        items = text[1:].split(";")
    else:
        items = []
        start = 1
        i = 1
        n = len(text)
        while i < n:
            c = text[i]
            if c == '"':
                i = _scan_quoted(text, i)
                continue
            if c == ";":
                items.append(text[start:i])
                start = i + 1
            i += 1
        items.append(text[start:])
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip(_WS)
        if not _is_token(name):
            raise ParseError(f"invalid parameter {item.strip()!r}")
        if eq:
            value = value.strip(_WS)
            if value.startswith('"'):
                if _scan_quoted(value, 0) != len(value):
                    raise ParseError(f"invalid quoted parameter value {value!r}")
            elif _PARAM_VALUE_MATCH(value) is None:
                raise ParseError(f"invalid parameter value {value!r}")
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


# --- name-addr / addr-spec (From, To, Contact, Route, ...) -------------------


@dataclass(eq=True)
class NameAddr:
    """``[display-name] <URI> *(;param)`` or ``addr-spec *(;param)``.

    ``display_name`` is unquoted (quoted-pairs resolved).  ``params`` are
    header parameters such as ``tag``, ``expires`` or ``q``; values are raw
    (a quoted value keeps its quotes).  ``wildcard`` is the ``Contact: *``
    form of REGISTER.
    """

    uri: URI
    display_name: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @tag.setter
    def tag(self, value: str | None) -> None:
        if value is None:
            self.params.pop("tag", None)
        else:
            self.params["tag"] = value

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        if self.display_name:
            head = f"{quote(self.display_name)} <{self.uri}>"
        else:
            head = f"<{self.uri}>"
        return head + _format_params(self.params)


_WILDCARD_URI = URI(scheme="sip", host="*")


def parse_name_addr(value: str) -> NameAddr:
    """Parse one From/To/Contact/Route element."""
    s = value.strip(_WS)
    if not s:
        raise ParseError("empty address")
    if s == "*":
        return NameAddr(uri=_WILDCARD_URI, wildcard=True)
    display: str | None = None
    if s[0] == '"':
        end = _scan_quoted(s, 0)
        display = unquote(s[:end])
        s = s[end:].lstrip(_WS)
        if not s.startswith("<"):
            raise ParseError("quoted display name not followed by '<'")
    lt = s.find("<")
    semi = s.find(";")
    if lt >= 0 and (semi < 0 or lt < semi or display is not None):
        if display is None and lt > 0:
            words = s[:lt].split()
            if not all(_is_token(w) for w in words):
                raise ParseError(f"display name must be tokens or quoted: {s[:lt]!r}")
            display = " ".join(words)
        gt = s.find(">", lt)
        if gt < 0:
            raise ParseError("unterminated '<'")
        inner = s[lt + 1 : gt]
        if inner != inner.strip(_WS):
            raise ParseError("whitespace inside '<...>'")
        uri = parse_uri(inner)
        rest = s[gt + 1 :]
    else:
        # addr-spec form: the URI ends at the first ';', everything after it
        # belongs to the header (RFC 3261 §20.10), and '?' or ',' would have
        # required name-addr form.
        uri_text = s if semi < 0 else s[:semi]
        rest = "" if semi < 0 else s[semi:]
        uri_text = uri_text.rstrip(_WS)
        if "?" in uri_text or "," in uri_text:
            raise ParseError(f"URI with headers needs '<...>': {uri_text!r}")
        if "\t" in uri_text or " " in uri_text:
            raise ParseError(f"display name without '<...>': {uri_text!r}")
        uri = parse_uri(uri_text)
    return NameAddr(uri=uri, display_name=display, params=_parse_generic_params(rest))


# --- Via ---------------------------------------------------------------------


@dataclass(eq=True)
class Via:
    """One Via element: ``SIP/2.0/UDP host:port;branch=...;received=...;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value filled in by the server (RFC 3581), if any."""
        value = self.params.get("rport")
        return int(value) if value else None

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    @property
    def is_rfc3261_branch(self) -> bool:
        """True if the branch carries the RFC 3261 magic cookie (and more)."""
        b = self.branch
        return b is not None and b.startswith(BRANCH_MAGIC_COOKIE) and len(b) > 7

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"


# Every group is delimited by characters it cannot contain, so matching is
# linear (no nested or overlapping quantifiers).
_TOKEN_RE = r"[A-Za-z0-9\-.!%*_+`'~]+"
_VIA_RE = re.compile(
    rf"({_TOKEN_RE})[ \t]*/[ \t]*({_TOKEN_RE})[ \t]*/[ \t]*({_TOKEN_RE})[ \t]+([^;]+)(.*)",
    re.S,
)


def parse_via(value: str) -> Via:
    """Parse one Via element (after comma splitting)."""
    m = _VIA_RE.fullmatch(value.strip(_WS))
    if m is None:
        raise ParseError(f"invalid Via {value.strip()!r}")
    name, version, transport, sent_by, rest = m.groups()
    sent_by = sent_by.strip(_WS)
    if " " in sent_by or "\t" in sent_by:
        # COLON = SWS ":" SWS, so "host : 5060" is legal.
        sent_by = ":".join(p.strip(_WS) for p in sent_by.split(":"))
    host, port = _parse_host_port(sent_by)
    params = _parse_generic_params(rest)
    rport = params.get("rport")
    if rport is not None and not _is_digits(rport):
        raise ParseError(f"invalid rport {rport!r}")
    branch = params.get("branch", "")
    if branch is None:
        raise ParseError("branch parameter without value")
    return Via(
        transport=transport.upper(),
        host=host,
        port=port,
        params=params,
        protocol=f"{name.upper()}/{version}",
    )


# --- CSeq --------------------------------------------------------------------


@dataclass(frozen=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not _is_digits(parts[0]) or not _is_token(parts[1]):
        raise ParseError(f"invalid CSeq {value!r}")
    seq = int(parts[0])
    if seq > MAX_CSEQ:
        raise ParseError(f"CSeq number too large: {parts[0]}")
    return CSeq(seq, parts[1])


def _parse_small_int(name: str, value: str, limit: int) -> int:
    value = value.strip(_WS)
    if not _is_digits(value) or len(value) > 12 or int(value) > limit:
        raise ParseError(f"invalid {name} {value!r}")
    return int(value)


# --- Headers container -------------------------------------------------------

HeaderValue = str | Via | NameAddr | CSeq

# Header name as asked for -> its key (lower case, compact forms expanded).
_KEYS: dict[str, str] = {}
_KEYS_KEPT = 512


class Headers:
    """Ordered, case-insensitive multi-map of header fields.

    Values are strings, or parsed objects (:class:`Via`, :class:`NameAddr`,
    :class:`CSeq`) that serialise with ``str()``.  Names given in compact
    form are stored in their long form.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, HeaderValue]] = ()) -> None:
        self._items: list[tuple[str, str, HeaderValue]] = []
        for name, value in items:
            self.add(name, value)

    @staticmethod
    def _key(name: str) -> str:
        key = _KEYS.get(name)
        if key is None:
            key = name.lower()
            long = COMPACT_FORMS.get(key)
            key = long.lower() if long else key
            if len(_KEYS) < _KEYS_KEPT:  # the names the code asks for: a few dozen
                _KEYS[name] = key
        return key

    def add(self, name: str, value: HeaderValue) -> None:
        self._items.append((self._key(name), canonical_name(name), value))

    def get(self, name: str, default: HeaderValue | None = None) -> HeaderValue | None:
        key = self._key(name)
        for k, _, v in self._items:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[HeaderValue]:
        key = self._key(name)
        return [v for k, _, v in self._items if k == key]

    def set(self, name: str, value: HeaderValue | list[HeaderValue]) -> None:
        """Replace every field of that name, keeping the position of the first."""
        key = self._key(name)
        values = value if isinstance(value, list) else [value]
        canon = canonical_name(name)
        new: list[tuple[str, str, HeaderValue]] = []
        inserted = False
        for item in self._items:
            if item[0] == key:
                if not inserted:
                    new.extend((key, canon, v) for v in values)
                    inserted = True
            else:
                new.append(item)
        if not inserted:
            new.extend((key, canon, v) for v in values)
        self._items = new

    def insert_first(self, name: str, value: HeaderValue) -> None:
        """Insert before any existing field of that name (for a new top Via)."""
        key = self._key(name)
        for i, item in enumerate(self._items):
            if item[0] == key:
                self._items.insert(i, (key, canonical_name(name), value))
                return
        self._items.append((key, canonical_name(name), value))

    def remove(self, name: str) -> None:
        key = self._key(name)
        self._items = [item for item in self._items if item[0] != key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self._key(name)
        return any(k == key for k, _, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, HeaderValue]]:
        return ((n, v) for _, n, v in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, str(v)) for k, _, v in self._items] == [(k, str(v)) for k, _, v in other._items]

    def __repr__(self) -> str:
        return f"Headers({[(n, str(v)) for _, n, v in self._items]!r})"

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h


# --- Messages ----------------------------------------------------------------


class _MessageBase:
    headers: Headers
    body: bytes

    @property
    def vias(self) -> list[Via]:
        out: list[Via] = []
        for v in self.headers.get_all("Via"):
            out.append(v if isinstance(v, Via) else parse_via(str(v)))
        return out

    @property
    def top_via(self) -> Via:
        v = self.headers.get("Via")
        if v is None:
            raise ParseError("missing Via")
        return v if isinstance(v, Via) else parse_via(str(v))

    @property
    def cseq(self) -> CSeq:
        v = self.headers.get("CSeq")
        if v is None:
            raise ParseError("missing CSeq")
        return v if isinstance(v, CSeq) else parse_cseq(str(v))

    @property
    def call_id(self) -> str:
        v = self.headers.get("Call-ID")
        if v is None:
            raise ParseError("missing Call-ID")
        return str(v)

    def _address(self, name: str) -> NameAddr:
        v = self.headers.get(name)
        if v is None:
            raise ParseError(f"missing {name}")
        return v if isinstance(v, NameAddr) else parse_name_addr(str(v))

    @property
    def from_(self) -> NameAddr:
        return self._address("From")

    @property
    def to(self) -> NameAddr:
        return self._address("To")

    def _addresses(self, name: str) -> list[NameAddr]:
        out: list[NameAddr] = []
        for v in self.headers.get_all(name):
            if isinstance(v, NameAddr):
                out.append(v)
            else:
                out.extend(parse_name_addr(p) for p in split_header_list(str(v)))
        return out

    @property
    def contacts(self) -> list[NameAddr]:
        return self._addresses("Contact")

    @property
    def routes(self) -> list[NameAddr]:
        return self._addresses("Route")

    @property
    def record_routes(self) -> list[NameAddr]:
        return self._addresses("Record-Route")

    @property
    def paths(self) -> list[NameAddr]:
        return self._addresses("Path")

    @property
    def max_forwards(self) -> int | None:
        v = self.headers.get("Max-Forwards")
        return None if v is None else _parse_small_int("Max-Forwards", str(v), 255)

    @property
    def content_type(self) -> str | None:
        v = self.headers.get("Content-Type")
        return None if v is None else str(v)

    def validate(self) -> None:
        """Parse every structured header we know, raising :class:`ParseError`.

        :func:`parse_datagram` and :class:`StreamParser` already check what
        transactions and dialogs depend on (Via, CSeq, Call-ID, From, To,
        Max-Forwards, Content-Length); Contact and Route-like headers are
        parsed here or lazily by their accessors.
        """
        self.vias  # noqa: B018
        self.contacts  # noqa: B018
        self.routes  # noqa: B018
        self.record_routes  # noqa: B018

    def _serialise(self, start_line: str) -> bytes:
        lines = [start_line]
        for _, name, value in self.headers._items:
            if name == "Content-Length":
                continue
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body


@dataclass(eq=False)
class Request(_MessageBase):
    method: str
    uri: URI
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def serialise(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri} {self.version}")

    def __bytes__(self) -> bytes:
        return self.serialise()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return self.serialise() == other.serialise()

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


@dataclass(eq=False)
class Response(_MessageBase):
    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    version: str = "SIP/2.0"

    def serialise(self) -> bytes:
        return self._serialise(f"{self.version} {self.status} {self.reason}")

    def __bytes__(self) -> bytes:
        return self.serialise()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return self.serialise() == other.serialise()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


Message = Request | Response


# --- Parsing -----------------------------------------------------------------

_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)", re.I)


def _check_version(text: str) -> str:
    m = _VERSION_RE.fullmatch(text)
    if m is None:
        raise ParseError(f"invalid SIP version {text!r}")
    if m.group(1).lstrip("0") != "2" or m.group(2).lstrip("0") != "":
        raise ParseError(f"unsupported SIP version {text}", 505)
    return "SIP/2.0"


def _parse_start_line(line: str) -> Request | Response:
    if line[:4].upper() == "SIP/":
        version, sp, rest = line.partition(" ")
        version = _check_version(version)
        code, _, reason = rest.partition(" ")
        if not sp or len(code) != 3 or not _is_digits(code) or not 100 <= int(code) <= 699:
            raise ParseError(f"invalid status line {line!r}")
        return Response(status=int(code), reason=reason, version=version)
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        # Also catches the LWS torture cases (lwsruri, lwsstart, trws): the
        # request-line separator is exactly one SP.
        raise ParseError(f"invalid request line {line!r}")
    method, uri_text, version = parts
    version = _check_version(version)
    if not _is_token(method):
        raise ParseError(f"invalid method {method!r}")
    if uri_text.startswith("<"):
        raise ParseError("Request-URI must not be enclosed in '<>'")
    uri = parse_uri(uri_text)
    if uri.scheme not in ("sip", "sips", "tel"):
        raise ParseError(f"unsupported URI scheme {uri.scheme!r}", 416)
    if uri.headers is not None:
        raise ParseError("Request-URI must not carry headers")
    return Request(method=method, uri=uri, version=version)


def _split_head(head: str) -> tuple[str, list[tuple[str, str]]]:
    """Split the header section into the start line and unfolded fields."""
    lines = head.replace("\r\n", "\n").split("\n")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in _WS:
            if not fields:
                raise ParseError("continuation line before first header")
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip(_WS))
            continue
        colon = line.find(":")
        if colon <= 0:
            raise ParseError(f"header line without ':' {line[:40]!r}")
        name = line[:colon].rstrip(_WS)
        if not _is_token(name):
            raise ParseError(f"invalid header name {name!r}")
        fields.append((name, line[colon + 1 :].strip(_WS)))
    return lines[0], fields


def _parse_head(head: str) -> tuple[Request | Response, int | None]:
    """Parse start line and headers; returns the message and Content-Length."""
    start, fields = _split_head(head)
    msg = _parse_start_line(start)
    headers = msg.headers
    items = headers._items
    content_length: int | None = None
    seen: set[str] = set()
    for name, value in fields:
        lname = name.lower()
        long = COMPACT_FORMS.get(lname)
        if long is not None:
            key, canon = long.lower(), long
        else:
            key, canon = lname, _CANONICAL.get(lname, name)
        if key in SINGLE_HEADERS:
            if key in seen:
                raise ParseError(f"duplicate {canon} header")
            seen.add(key)
        if key == "via":
            for part in split_header_list(value):
                items.append((key, canon, parse_via(part)))
        elif key in ("from", "to"):
            items.append((key, canon, parse_name_addr(value)))
        elif key == "cseq":
            items.append((key, canon, parse_cseq(value)))
        elif key == "content-length":
            content_length = _parse_small_int("Content-Length", value, 10**12)
            items.append((key, canon, str(content_length)))
        elif key == "max-forwards":
            items.append((key, canon, str(_parse_small_int("Max-Forwards", value, 255))))
        elif key == "call-id":
            if _CALLID_MATCH(value) is None:
                raise ParseError(f"invalid Call-ID {value!r}")
            items.append((key, canon, value))
        elif key in LIST_HEADERS:
            if not value.strip() and key in EMPTY_LIST_HEADERS:
                items.append((key, canon, ""))
                continue
            for part in split_header_list(value):
                if not part:
                    raise ParseError(f"empty element in {canon}")
                items.append((key, canon, part))
        else:
            items.append((key, canon, value))
    missing = [n for n in _MANDATORY if n not in seen]
    if not items or (items[0][0] != "via" and not any(k == "via" for k, _, _ in items)):
        missing.insert(0, "via")
    if missing:
        raise ParseError(f"missing mandatory header(s): {', '.join(missing)}")
    if isinstance(msg, Request):
        cseq = msg.cseq
        if cseq.method != msg.method:
            raise ParseError(f"CSeq method {cseq.method} does not match {msg.method}")
    return msg, content_length


_MANDATORY = ("from", "to", "call-id", "cseq")


def _decode_head(raw: bytes) -> str:
    # surrogateescape keeps any non-UTF-8 octets (seen from real devices) and
    # lets serialisation reproduce them byte for byte.
    return raw.decode("utf-8", "surrogateescape")


def parse_datagram(data: bytes, max_size: int = MAX_DATAGRAM_SIZE) -> Request | Response:
    """Parse one message received as a datagram (UDP, RFC 3261 §18.3)."""
    if len(data) > max_size:
        raise ParseError("message too large", 513)
    start = 0
    n = len(data)
    while start < n and data[start] in (13, 10):
        start += 1
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        body_start = end + 4
    else:
        end = data.find(b"\n\n", start)
        if end < 0:
            raise ParseError("no end of header section")
        body_start = end + 2
    msg, content_length = _parse_head(_decode_head(data[start:end]))
    body = data[body_start:]
    if content_length is not None:
        if content_length > len(body):
            raise ParseError("Content-Length larger than the datagram body")
        body = body[:content_length]
    msg.body = body
    return msg


class StreamParser:
    """Frame messages from a byte stream (TCP, TLS) by Content-Length.

    ``feed()`` bytes as they arrive, then call ``next_message()`` until it
    returns ``None``.  A :class:`ParseError` whose ``fatal`` attribute is
    False consumed the bad message and the stream can continue; when framing
    itself is lost (bad or oversize Content-Length, header section too
    large) the error is fatal and the connection should be closed.
    CRLF keep-alives between messages (RFC 5626 §3.5.1) are skipped.
    """

    def __init__(self, max_header_size: int = MAX_HEADER_SIZE, max_body_size: int = MAX_BODY_SIZE) -> None:
        self._buf = bytearray()
        self._scan_from = 0
        self._max_header = max_header_size
        self._max_body = max_body_size
        self._pending: tuple[Request | Response | ParseError, int, int] | None = None
        self._broken: ParseError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def messages(self) -> Iterator[Request | Response]:
        """Yield every complete message; raises on the first bad one."""
        while (msg := self.next_message()) is not None:
            yield msg

    def _fatal(self, reason: str, status: int = 400, head: str | None = None) -> ParseError:
        err = ParseError(reason, status)
        err.fatal = True
        err.head = head
        self._broken = err
        return err

    def next_message(self) -> Request | Response | None:
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        if self._pending is None:
            skip = 0
            while skip < len(buf) and buf[skip] in (13, 10):
                skip += 1
            if skip:
                del buf[:skip]
                self._scan_from = 0
            end = buf.find(b"\r\n\r\n", max(0, self._scan_from - 3))
            if end < 0:
                self._scan_from = len(buf)
                if len(buf) > self._max_header:
                    raise self._fatal("header section too large", 513)
                return None
            if end > self._max_header:
                raise self._fatal("header section too large", 513)
            head = _decode_head(bytes(buf[:end]))
            try:
                msg, length = _parse_head(head)
            except ParseError as err:
                length = _salvage_content_length(head)
                if length is None:
                    raise self._fatal(err.reason, err.status, head) from None
                err.fatal = False
                err.head = head
                self._pending = (err, end + 4, length)
            else:
                if length is None:
                    # RFC 3261 §18.3 requires Content-Length on streams; a
                    # missing one is read as an empty body, as most stacks do.
                    length = 0
                if length > self._max_body:
                    raise self._fatal("body too large", 513, head)
                self._pending = (msg, end + 4, length)
        item, body_start, length = self._pending
        if len(buf) < body_start + length:
            return None
        body = bytes(buf[body_start : body_start + length])
        del buf[: body_start + length]
        self._pending = None
        self._scan_from = 0
        if isinstance(item, ParseError):
            raise item
        item.body = body
        return item


_CL_RE = re.compile(r"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,9})[ \t]*$", re.I | re.M)


def _salvage_content_length(head: str) -> int | None:
    """Content-Length of a message that failed to parse, if unambiguous."""
    found = _CL_RE.findall(head.replace("\r\n", "\n"))
    if len(found) == 1 and int(found[0]) <= MAX_BODY_SIZE:
        return int(found[0])
    return None


# --- Builders ----------------------------------------------------------------


def generate_branch() -> str:
    return BRANCH_MAGIC_COOKIE + secrets.token_hex(8)


def generate_tag() -> str:
    return secrets.token_hex(6)


_REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
}


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "")


def build_response(request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6.2 (Via, From, To, Call-ID, CSeq copied).

    ``to_tag`` is added to To unless it already has one; RFC 3261 says a
    100 Trying need not carry one.
    """
    headers = Headers()
    for via in request.vias:
        headers.add("Via", Via(via.transport, via.host, via.port, dict(via.params), via.protocol))
    frm = request.from_
    headers.add("From", NameAddr(frm.uri, frm.display_name, dict(frm.params)))
    to = request.to
    to_copy = NameAddr(to.uri, to.display_name, dict(to.params))
    if to_tag is not None and to_copy.tag is None:
        to_copy.tag = to_tag
    headers.add("To", to_copy)
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", request.cseq)
    return Response(status=status, reason=reason if reason is not None else reason_phrase(status), headers=headers)
