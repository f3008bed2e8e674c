"""``python -m fcmsim --port 0 --key-file KEY.json [--tls]``: run the simulator until
killed; it writes a service-account key for it to ``--key-file`` and prints its endpoint
(``FCM_ENDPOINT=...``) and, with ``--tls``, its CA (``FCM_CA_FILE=...``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from fcmsim.server import DEFAULT_PROJECT, FCMSimulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fcmsim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--project", default=DEFAULT_PROJECT)
    parser.add_argument("--key-file", type=Path, help="write a trusted service-account key here (mode 0600)")
    parser.add_argument("--strict", action="store_true", help="answer INVALID_ARGUMENT for tokens no phone registered")
    parser.add_argument("--tls", action="store_true", help="serve https, on a certificate from a CA of its own")
    parser.add_argument(
        "--dir", type=Path, help="with --tls: where the CA and server certificate are written (default: a temp dir)"
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    simulator = FCMSimulator(
        host=args.host, port=args.port, strict_tokens=args.strict, tls=args.tls, directory=args.dir
    )
    await simulator.start()
    if args.key_file is not None:
        key = simulator.create_service_account(args.project)
        args.key_file.touch(mode=0o600)
        args.key_file.write_text(json.dumps(key, indent=2))
    print(f"FCM_ENDPOINT={simulator.endpoint}", flush=True)
    if args.tls:
        print(f"FCM_CA_FILE={simulator.ca_file}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await simulator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dir is not None and not args.tls:
        parser.error("--dir: only with --tls")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
