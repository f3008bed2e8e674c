"""Simulated iPhones and Android phones running the calling app, against a real node and
the APNs and FCM simulators.

A `Phone` registers a PushKit token, receives VoIP pushes from apnsim, reports calls to a
model of CallKit, checks `status_url`, connects the WebSocket and answers, declines or
ignores. Everything it sees and does goes into an `EventLog`. The simulator's deliveries
are objects in memory, so phones run in the process that runs the simulator.
"""

from voip.devicesim.android import AndroidPhone
from voip.devicesim.backend import Backend
from voip.devicesim.callkit import END_REASONS, CXCallEndedReason, ReportedCall, cx_reason
from voip.devicesim.events import Event, EventLog
from voip.devicesim.phone import CallRefused, MustReport, Phone, Policy, StatusRetry, always_report

__all__ = [
    "END_REASONS",
    "AndroidPhone",
    "Backend",
    "CXCallEndedReason",
    "CallRefused",
    "Event",
    "EventLog",
    "MustReport",
    "Phone",
    "Policy",
    "ReportedCall",
    "StatusRetry",
    "always_report",
    "cx_reason",
]
