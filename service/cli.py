"""`kling-relay`: the command line (web, worker, simulator, dev, and the API client commands
from `service.cli_client`)."""

from __future__ import annotations

import argparse
import logging
import sys

from service import cli_client
from service.logs import WithoutCallbackAccess, configure_logging
from service.settings import SettingsError, get_settings


def _web(args: argparse.Namespace) -> int:
    import uvicorn

    from service.http_server import LimitedHttpToolsProtocol

    settings = get_settings()
    settings.require("redis_url", "callback_secret", "kling_relay_api_keys")
    logging.getLogger().setLevel(settings.log_level)
    logging.getLogger("uvicorn.access").addFilter(WithoutCallbackAccess())
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        http=LimitedHttpToolsProtocol,
        # uvicorn counts the connection asking among those open: one more lets HTTP_MAX_CONNECTIONS be served.
        limit_concurrency=settings.http_max_connections + 1,
        timeout_keep_alive=settings.http_keepalive_s,
        log_level=settings.log_level.lower(),
        # Leave logging to ours (configure_logging): uvicorn's lines become JSON lines too.
        log_config=None,
        proxy_headers=True,
        # Event streams end as shutdown begins (service/http_server.py ON_SHUTDOWN); dashboard
        # streams do not: don't let them hold a shutdown up for long.
        timeout_graceful_shutdown=5,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from service.metrics_http import serve_worker_metrics
    from workers.main import run_worker

    settings = get_settings()
    logging.getLogger().setLevel(settings.log_level)
    serve_worker_metrics(settings)
    run_worker(burst=args.burst)
    return 0


def _simulator(args: argparse.Namespace) -> int:
    import uvicorn

    from service.simulator.app import create_simulator_app

    uvicorn.run(create_simulator_app(api_key=args.api_key or None), host=args.host, port=args.port, log_level="warning")
    return 0


def _dev(args: argparse.Namespace) -> int:
    from service.dev import run_dev

    return run_dev(port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kling-relay",
        description="Webhook-driven Kling V2.1 Master video relay",
        epilog=cli_client.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    web = sub.add_parser("web", help="serve the HTTP API and the callback receiver (uvicorn)")
    web.add_argument("--host", default=None, help="bind address (default: $HOST or 127.0.0.1)")
    web.add_argument("--port", type=int, default=None, help="port (default: $PORT or 8000)")
    web.set_defaults(run=_web)

    worker = sub.add_parser("worker", help="run an RQ worker for the submit, poll, deliver and store queues")
    worker.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    worker.set_defaults(run=_worker)

    sim = sub.add_parser("simulator", help="run the provider simulator (Apikley and Novita endpoints)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8100)
    sim.add_argument("--api-key", default="sandbox", help="bearer key the simulator accepts ('' accepts any)")
    sim.set_defaults(run=_simulator)

    dev = sub.add_parser("dev", help="run everything for a first try: redis, simulator, web and worker")
    dev.add_argument("--port", type=int, default=None, help="web port (default: $PORT or 8000)")
    dev.set_defaults(run=_dev, log_level="WARNING")

    cli_client.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Client commands keep stderr for people (httpx would log every request at INFO).
    configure_logging(getattr(logging, getattr(args, "log_level", "INFO")))
    try:
        return int(args.run(args) or 0)
    except SettingsError as exc:
        print(f"kling-relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
