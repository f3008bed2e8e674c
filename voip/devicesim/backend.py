"""Where a simulated app reaches the service, and the APNs (and FCM) it receives pushes from."""

from __future__ import annotations

from dataclasses import dataclass

from apnsim import APNsSimulator
from fcmsim import FCMSimulator
from voip.auth import Authenticator
from voip.node import Node
from voip.push.payloads import voip_topic


@dataclass(frozen=True, slots=True)
class Backend:
    base_url: str
    auth: Authenticator
    """Mints the bearer tokens an app would get from the operator's login service."""
    apns: APNsSimulator
    """Must be the simulator the node pushes to: deliveries are objects in its memory."""
    bundle_id: str
    fcm: FCMSimulator | None = None
    """The FCM simulator the node pushes to, for Android phones (`AndroidPhone`)."""

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http", "ws", 1) + "/v1/ws"

    @property
    def voip_topic(self) -> str:
        return voip_topic(self.bundle_id)

    @classmethod
    def of_node(cls, node: Node, base_url: str) -> Backend:
        """A started node that pushes to its embedded simulator (no APNS_KEY_FILE)."""
        if node.apns_simulator is None:
            raise ValueError("this node pushes to a real APNs; simulated phones need its bundled simulator")
        return cls(
            base_url.rstrip("/"), node.auth, node.apns_simulator, node.settings.apns_bundle_id, node.fcm_simulator
        )
