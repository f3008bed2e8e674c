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
from .useragent import (
    AckTimeout,
    Invite2xxRetransmitter,
    InviteCancelled,
    StrayResponse,
    UserAgentCore,
)

__all__ = [
    "AckTimeout", "AuthResult", "Challenge", "Credentials", "Dialog", "DialogError", "DialogId",
    "DialogState", "DialogTable", "DigestError", "DigestServer", "answer_challenge", "authorize",
    "compute_ha1", "CSeq", "Headers", "Invite2xxRetransmitter", "InviteCancelled", "NameAddr", "ParseError",
    "Request", "RequestReceived", "Response", "ResponseReceived", "SendMessage", "State",
    "StrayResponse", "StreamParser", "TimerConfig", "TransactionKey", "TransactionLayer", "TransactionTimeout",
    "TransportError", "URI", "UserAgentCore", "Via", "build_ack_for_2xx", "build_cancel", "build_response",
    "generate_branch", "generate_tag", "parse_datagram", "parse_name_addr", "parse_uri",
    "parse_via",
]
