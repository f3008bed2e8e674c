"""fcmsim: a stand-in for Firebase Cloud Messaging's HTTP v1 API and Google's OAuth2
token endpoint, on loopback. There is no official FCM emulator."""

from fcmsim.accounts import GOOGLE_TOKEN_URI, Accounts, generate_service_account
from fcmsim.devices import Delivery, Device, Drop, DropCause
from fcmsim.errors import ErrorCode
from fcmsim.faults import Fault, InjectedFault
from fcmsim.records import RecordedMessage
from fcmsim.server import DEFAULT_PROJECT, FCMSimulator, new_token
from fcmsim.validation import Message

__all__ = [
    "DEFAULT_PROJECT",
    "GOOGLE_TOKEN_URI",
    "Accounts",
    "Delivery",
    "Device",
    "Drop",
    "DropCause",
    "ErrorCode",
    "FCMSimulator",
    "Fault",
    "InjectedFault",
    "Message",
    "RecordedMessage",
    "generate_service_account",
    "new_token",
]
