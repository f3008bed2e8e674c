"""``python -m apnsim --port 0 --dir DIR``: run the simulator until killed."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from apnsim.devices import Environment
from apnsim.server import APNsSimulator


def _parse_key(spec: str) -> tuple[str, str, Path]:
    team_id, key_id, path = spec.split(":", 2)
    return team_id, key_id, Path(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m apnsim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--dir", required=True, type=Path, help="where the CA and server certificate are written")
    parser.add_argument("--environment", choices=[e.value for e in Environment], default=Environment.SANDBOX.value)
    parser.add_argument("--strict", action="store_true", help="answer BadDeviceToken for tokens no device registered")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        type=_parse_key,
        metavar="TEAM_ID:KEY_ID:PEM_PATH",
        help="trust provider tokens signed by this key (public or .p8 PEM)",
    )
    parser.add_argument(
        "--generate-key",
        action="append",
        default=[],
        metavar="TEAM_ID:KEY_ID",
        help="create a key pair, trust it, write AuthKey_<KEY_ID>.p8 into --dir",
    )
    return parser


async def run(args: argparse.Namespace) -> None:
    simulator = APNsSimulator(
        args.dir, host=args.host, port=args.port, environment=args.environment, strict_tokens=args.strict
    )
    for team_id, key_id, path in args.key:
        simulator.register_key(team_id, key_id, path.read_text())
    await simulator.start()
    print(f"APNS_ENDPOINT={simulator.endpoint}")
    print(f"APNS_CA_FILE={simulator.ca_file}")
    for spec in args.generate_key:
        team_id, key_id = spec.split(":", 1)
        key = simulator.create_key(team_id, key_id)
        key_file = args.dir / f"AuthKey_{key_id}.p8"
        key_file.write_text(key.private_pem)
        key_file.chmod(0o600)
        print(f"APNS_KEY_FILE={key_file} APNS_KEY_ID={key_id} APNS_TEAM_ID={team_id}")
    sys.stdout.flush()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await simulator.stop()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
