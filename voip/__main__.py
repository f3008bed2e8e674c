"""Command line: `python -m voip run` starts a node; `python -m voip token USER` mints a
development token; `python -m voip demo` plays the README story with simulated phones."""

from __future__ import annotations

import argparse
import sys

from voip.settings import Settings, SettingsError, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"voip: invalid setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> None:
    import structlog
    import uvicorn

    from voip import banner, heap, logs
    from voip.app import create_app
    from voip.drain import DrainingServer
    from voip.http_limits import server_options
    from voip.redis_server import PrivateRedis
    from voip.ws_protocol import LeanWebSocketProtocol

    settings = _settings()
    logs.configure(settings.log_level)
    private_redis = None
    if not (settings.redis_url or settings.redis_sentinels or settings.redis_cluster_nodes):
        private_redis = PrivateRedis().start()
        settings.redis_url = private_redis.url
        structlog.get_logger("voip").warning(
            "redis.private", url=private_redis.url, note="REDIS_URL not set: a private Redis for this node"
        )
    try:
        app = create_app(settings)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            ws=LeanWebSocketProtocol,
            ws_max_size=settings.ws_max_frame_bytes,
            ws_ping_interval=20,
            ws_ping_timeout=20,
            log_config=None,
            access_log=False,
            lifespan="on",
            **server_options(settings),
        )

        # The node exists once the server has started it (its lifespan).
        def ready(port: int) -> None:
            base_url = settings.public_url or f"http://{settings.host}:{port}"
            banner.show(app.state.node, base_url, private_redis=private_redis is not None)

        async def drain() -> None:
            await app.state.node.drain()

        heap.settle()
        # SIGTERM drains the node, then the process exits 0 through this `finally`.
        DrainingServer(config, drain=drain, on_ready=ready).run()
    finally:
        if private_redis:
            private_redis.stop()


def token(args: argparse.Namespace) -> None:
    from voip.auth import Authenticator

    settings = _settings()
    print(Authenticator(settings.jwt_secret).mint(args.user, args.role, ttl=args.ttl, name=args.name))


def demo(args: argparse.Namespace) -> None:
    from voip.demo import main as play

    raise SystemExit(play())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m voip")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run a node (HTTP + WebSocket)").set_defaults(func=run)
    minting = commands.add_parser("token", help="mint a bearer token for development")
    minting.add_argument("user")
    minting.add_argument("--role", choices=["device", "operator"], default="device")
    minting.add_argument("--ttl", type=float, default=86400, help="seconds (default a day)")
    minting.add_argument("--name", default=None, help="the claim `name`: the display name callees see")
    minting.set_defaults(func=token)
    commands.add_parser(
        "demo", help="simulated phones against a node and the bundled APNs and FCM simulators"
    ).set_defaults(func=demo)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
