"""Prometheus metrics. Names follow Prometheus conventions; labels stay low-cardinality
(no user, device or call ids)."""

from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# A `voip_calls_created` series reads as "calls created"; it is only the counter's birth time.
disable_created_metrics()

CALLS = Counter("voip_calls_total", "Calls that reached a state, by the reason given to devices", ["state", "reason"])
CALLS_TURNED_AWAY = Counter(
    "voip_calls_turned_away_total",
    "New calls the callee's availability turned away before anything rang (reason: dnd, busy)",
    ["reason"],
)
STATUS_CHECKS = Counter(
    "voip_status_checks_total",
    "Call-status requests by verdict; state unknown_call: the 404 for a call unknown or past retention",
    ["state", "end_call"],
)
# The 404 answers are the very late pushes: a call already past its retention.
UNKNOWN_CALL_STATE = "unknown_call"
_STATUS_CHILDREN: dict[tuple[str, bool], Any] = {}


def status_check_counter(state: str, end_call: bool) -> Any:
    """The labelled child, resolved once: `labels()` takes a lock on every call, and this
    runs on every status request."""
    child = _STATUS_CHILDREN.get((state, end_call))
    if child is None:
        child = _STATUS_CHILDREN[(state, end_call)] = STATUS_CHECKS.labels(state, str(end_call).lower())
    return child


# GET /v1/ice-servers (issue 13, part 3): "turn" when the answer carried a TURN credential.
ICE_SERVERS = Counter(
    "voip_ice_servers_total", "ICE server lists handed to devices, by what they held: turn, stun or none", ["servers"]
)
WS_CONNECTIONS = Gauge("voip_ws_connections", "Device WebSocket connections open on this node")
SIP_WS_CONNECTIONS = Gauge("voip_sip_ws_connections", "SIP-over-WebSocket (/v1/sip) connections open on this node")
SIP_WS_CLOSED = Counter(
    "voip_sip_ws_closed_total",
    "SIP-over-WebSocket connections refused or closed by the node, by reason",
    ["reason"],
)
WS_ERRORS = Counter("voip_ws_errors_total", "Error frames sent to devices", ["code"])
# Redis unavailable or busy (issue 9): requests answered 503, sockets closed 1013,
# WebSocket requests answered `unavailable`.
REDIS_UNAVAILABLE = Counter(
    "voip_redis_unavailable_total", "Requests refused because Redis was unavailable or busy", ["channel"]
)
REDIS_LATENCY = Histogram(
    "voip_redis_seconds",
    "Redis round trip of the call-status endpoint",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
)
DELIVERY_LOG_DROPPED = Counter(
    "voip_delivery_log_dropped_total",
    '"delivered" timeline entries never written: queue_full (Redis away too long), unwritten (retries ran out)',
    ["reason"],
)
# `app`: whose credentials sent the push, the iOS bundle id (one per configured app, or
# per bundle registered under the bundled simulator) or the FCM project.
PUSHES = Counter(
    "voip_pushes_total",
    "Pushes by platform (ios: APNs, android: FCM), app (bundle id, FCM project), kind, outcome and reason",
    ["platform", "app", "kind", "outcome", "reason"],
)
PUSH_LATENCY = Histogram(
    "voip_push_seconds",
    "From handing a push to the sender to the push service's final answer",
    ["platform", "app", "kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SIP_MESSAGES = Counter(
    "voip_sip_messages_total",
    "SIP messages by direction, method (a response's from its CSeq) and status (responses only)",
    ["direction", "method", "status"],
)


_SIP_CHILDREN: dict[tuple[str, str, str], Any] = {}
_CALLS_CHILDREN: dict[tuple[str, str], Any] = {}
# Children remembered at most: the methods and statuses peers send are theirs to choose.
_CHILDREN_KEPT = 512


def calls_counter(state: str, reason: str) -> Any:
    """CALLS' labelled child, resolved once (`labels()` takes a lock on every call)."""
    child = _CALLS_CHILDREN.get((state, reason))
    if child is None:
        child = _CALLS_CHILDREN[(state, reason)] = CALLS.labels(state, reason)
    return child


def count_sip_message(direction: str, message: Any) -> None:
    """The SIP endpoint's observer: requests by method, responses by method and status."""
    status = getattr(message, "status", None)
    if status is None:
        labels = (direction, message.method, "")
    else:
        try:
            method = message.cseq.method
        except Exception:  # a response without a usable CSeq is still counted
            method = "?"
        labels = (direction, method, str(status))
    child = _SIP_CHILDREN.get(labels)
    if child is None:
        child = SIP_MESSAGES.labels(*labels)
        if len(_SIP_CHILDREN) < _CHILDREN_KEPT:
            _SIP_CHILDREN[labels] = child
    child.inc()


# Webhooks (docs/webhooks.md): every attempt to deliver an event, and the call hook.
WEBHOOK_DELIVERIES = Counter(
    "voip_webhook_deliveries_total",
    "Webhook delivery attempts: delivered (2xx), failed (retried later), dropped (failing for 24 h)",
    ["outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "voip_webhook_seconds",
    "One webhook POST, sent to answered or failed",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBHOOK_FAILING = Gauge(
    "voip_webhook_failing",
    "1 while this node's last attempt to a webhook URL failed; `url` is the URL's hash (as on /ops)",
    ["url"],
)
CALL_HOOK = Counter(
    "voip_call_hook_total",
    "Call-hook answers: ring, reject; failed_open / failed_closed: no usable answer, the policy applied",
    ["outcome"],
)
CALL_HOOK_SECONDS = Histogram(
    "voip_call_hook_seconds",
    "The call hook's round trip",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
