"""The project's own SIP stack (RFC 3261), sans-I/O.

Parsing (:mod:`sip.message`), transactions (:mod:`sip.transaction`),
dialogs and the 2xx/ACK pieces of the UA core (:mod:`sip.dialog`) and digest
authentication (:mod:`sip.digest`) take bytes, messages and ``now`` in and
give messages, events and timer deadlines out.  Sockets and clocks belong to
the thin asyncio edge, :mod:`sip.endpoint` (imported on its own, so the
pure modules never pull in asyncio).  See docs/sip.md.
"""

from .dialog import (
    AckTimeout,
    Dialog,
    DialogError,
    DialogId,
    DialogState,
    DialogTable,
    Invite2xxRetransmitter,
    build_ack_for_2xx,
)
from .digest import (
    AuthResult,
    Challenge,
    Credentials,
    DigestError,
    DigestServer,
    answer_challenge,
    authorize,
    compute_ha1,
)
from .message import (
    CSeq,
    Headers,
    NameAddr,
    ParseError,
    Request,
    Response,
    StreamParser,
    URI,
    Via,
    build_response,
    generate_branch,
    generate_tag,
    parse_datagram,
    parse_name_addr,
    parse_uri,
    parse_via,
)
from .transaction import (
    RequestReceived,
    ResponseReceived,
    SendMessage,
    State,
    TimerConfig,
    TransactionKey,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
    build_cancel,
)

__all__ = [
    "AckTimeout", "AuthResult", "Challenge", "Credentials", "Dialog", "DialogError", "DialogId",
    "DialogState", "DialogTable", "DigestError", "DigestServer", "answer_challenge", "authorize",
    "compute_ha1", "CSeq", "Headers", "Invite2xxRetransmitter", "NameAddr", "ParseError",
    "Request", "RequestReceived", "Response", "ResponseReceived", "SendMessage", "State",
    "StreamParser", "TimerConfig", "TransactionKey", "TransactionLayer", "TransactionTimeout",
    "TransportError", "URI", "Via", "build_ack_for_2xx", "build_cancel", "build_response",
    "generate_branch", "generate_tag", "parse_datagram", "parse_name_addr", "parse_uri",
    "parse_via",
]
