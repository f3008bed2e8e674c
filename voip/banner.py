"""What a newcomer needs once the node is up, in plain words on stderr: where the page,
the API and the status endpoint are, how to get tokens, where pushes go, whether SIP is
on. Not a log line: logs stay JSON, and the banner is printed only on a terminal (or with
VOIP_BANNER=on)."""

from __future__ import annotations

import sys
from typing import TextIO

from voip.node import Node

RULE = "─" * 72
TITLE = "voip node ready"


def wanted(setting: str, stream: TextIO) -> bool:
    if setting == "auto":
        return stream.isatty()
    return setting == "on"


def text(node: Node, base_url: str, private_redis: bool) -> str:
    simulator = node.apns_simulator
    lines = [
        RULE,
        f"  {TITLE}: node {node.node_id}",
        f"  API index      {base_url}/",
        f"  Operators      {base_url}/ops",
        f"  OpenAPI        {base_url}/openapi.json",
        f"  Call status    {base_url}/v1/calls/<call_id>/status",
        f"  WebSocket      {base_url.replace('http', 'ws', 1)}/v1/ws?device_id=<device>",
        "  Tokens         python3 dev.py token alice                 (a device's)",
        "                 python3 dev.py token ops --role operator   (for /ops and /metrics)",
    ]
    if simulator is not None:
        lines += [
            f"  Pushes         to the bundled APNs simulator ({simulator.endpoint}), no APNs credentials:",
            "                 NO REAL PHONE RECEIVES ANYTHING. What it received: /ops, section",
            f'                 "APNs simulator", or {base_url}/v1/ops/simulator/pushes',
        ]
    else:
        apps = node.apps.configured if node.apps is not None else [node.settings.apns_bundle_id]
        lines.append(
            f"  Pushes         to APNs ({node.settings.apns_endpoint or 'Apple'}), topic "
            + ", ".join(f"{bundle}.voip" for bundle in apps)
        )
    if node.fcm_simulator is not None:
        lines += [
            f"  Android        to the bundled FCM simulator ({node.fcm_simulator.endpoint}), no FCM credentials;",
            "                 what it received: /ops, section",
            f'                 "FCM simulator", or {base_url}/v1/ops/simulator/fcm',
        ]
    elif node.settings.fcm_credentials_file:
        endpoint = node.settings.fcm_endpoint or "Google"
        lines.append(f"  Android        to FCM ({endpoint}), project {node.settings.fcm_project_id}")
    else:
        lines.append("  Android        off: no FCM_CREDENTIALS_FILE")
    if node.sip is not None:
        transports = "/".join(t.lower() for t in node.settings.sip_transports)
        domain = node.settings.sip_domain or node.settings.sip_host
        lines.append(
            f"  SIP            on: {transports} {node.settings.sip_host}:{node.sip.port}, users sip:<user>@{domain}"
        )
        lines.append(
            f"  SIP WebSocket  {base_url.replace('http', 'ws', 1)}/v1/sip (subprotocol sip), for browser softphones"
        )
    else:
        lines.append("  SIP            off (SIP_ENABLED=true to turn it on)")
    if private_redis:
        lines.append("  Redis          a private redis-server for this node (REDIS_URL not set): data ends with it")
    lines.append(RULE)
    return "\n".join(lines)


def show(node: Node, base_url: str, private_redis: bool, stream: TextIO = sys.stderr) -> None:
    if wanted(node.settings.banner, stream):
        stream.write(text(node, base_url, private_redis) + "\n")
        stream.flush()
