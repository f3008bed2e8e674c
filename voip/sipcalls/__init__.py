"""SIP calls: a SIP peer or a registered SIP phone is one more participant device of a
call, driven through the same controller and bus as the apps (docs/sip-gateway.md)."""

from voip.sipcalls.config import SipConfig
from voip.sipcalls.gateway import SipGateway

__all__ = ["SipConfig", "SipGateway"]
