"""apnsim: a faithful stand-in for Apple's APNs provider API, on loopback."""

from apnsim.auth import SigningKey, generate_signing_key
from apnsim.clock import Clock, ManualClock
from apnsim.connection import ConnectionInfo
from apnsim.devices import Delivery, Device, Drop, DropCause, Environment, Invalidation, Push
from apnsim.faults import Fault, FaultKind, InjectedFault
from apnsim.reasons import STATUS_OF, Reason
from apnsim.records import RecordedRequest
from apnsim.server import APNsSimulator
from apnsim.tls import client_ssl_context

__all__ = [
    "STATUS_OF",
    "APNsSimulator",
    "Clock",
    "ConnectionInfo",
    "Delivery",
    "Device",
    "Drop",
    "DropCause",
    "Environment",
    "Fault",
    "FaultKind",
    "InjectedFault",
    "Invalidation",
    "ManualClock",
    "Push",
    "Reason",
    "RecordedRequest",
    "SigningKey",
    "client_ssl_context",
    "generate_signing_key",
]
