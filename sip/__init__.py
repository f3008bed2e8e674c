"""The project's own SIP stack (RFC 3261), sans-I/O.

Parsing (:mod:`sip.message`), transactions (:mod:`sip.transaction`), the
user-agent core above them - 2xx retransmission, ACK repetition, CANCEL -
(:mod:`sip.useragent`), dialogs (:mod:`sip.dialog`) and digest
authentication (:mod:`sip.digest`) take bytes, messages and ``now`` in and
give messages, events and timer deadlines out.  Sockets and clocks belong to
the thin asyncio edge, :mod:`sip.endpoint` (imported on its own, so the
pure modules never pull in asyncio).  See docs/sip.md.
"""

from .dialog import (
    Dialog,
    DialogError,
    DialogId,
    DialogState,
    DialogTable,
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
    URI,
    CSeq,
    Headers,
    NameAddr,
    ParseError,
    Request,
    Response,
    StreamParser,
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
from .useragent import (
    AckTimeout,
    Invite2xxRetransmitter,
    InviteCancelled,
    StrayResponse,
    UserAgentCore,
)

__all__ = [
    "URI",
    "AckTimeout",
    "AuthResult",
    "CSeq",
    "Challenge",
    "Credentials",
    "Dialog",
    "DialogError",
    "DialogId",
    "DialogState",
    "DialogTable",
    "DigestError",
    "DigestServer",
    "Headers",
    "Invite2xxRetransmitter",
    "InviteCancelled",
    "NameAddr",
    "ParseError",
    "Request",
    "RequestReceived",
    "Response",
    "ResponseReceived",
    "SendMessage",
    "State",
    "StrayResponse",
    "StreamParser",
    "TimerConfig",
    "TransactionKey",
    "TransactionLayer",
    "TransactionTimeout",
    "TransportError",
    "UserAgentCore",
    "Via",
    "answer_challenge",
    "authorize",
    "build_ack_for_2xx",
    "build_cancel",
    "build_response",
    "compute_ha1",
    "generate_branch",
    "generate_tag",
    "parse_datagram",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
]
