"""The `internvl-jobs` command. Subcommands import their side lazily: `api` never loads torch."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from cli import keys as cli_keys
from cli import submit as cli_submit
from core.config import Settings, get_settings
from core.exposure import UnsafeBind
from core.logs import setup_logging

log = logging.getLogger("internvl_jobs.cli")
Command = Callable[[argparse.Namespace], int]


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the database migrations."""
    from core.migrations import upgrade

    settings = get_settings()
    upgrade(settings.database_url, args.revision)
    log.info("database at %s is at revision %s", _safe_url(settings.database_url), args.revision)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the submit API."""
    import uvicorn

    from api.app import create_app
    from core.exposure import check_bind

    settings = get_settings()
    check_bind(settings, args.host)  # auth off and private targets: loopback only
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,  # api.telemetry writes one structured line per request instead
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        timeout_graceful_shutdown=30,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Start one worker process per device for the chosen models."""
    from worker.launcher import Supervisor, parse_devices, plan_slots, visible_gpus

    settings = get_settings()
    aliases = args.models.split(",") if args.models else [settings.default_model.alias]
    models = []
    for alias in aliases:
        model = settings.model(alias)
        if model is None:
            log.error("model '%s' is not in the registry", alias)
            return 2
        models.append(model)
    devices = parse_devices(args.devices, [] if args.devices.startswith("cpu") else visible_gpus())
    slots = plan_slots(models, devices)
    loglevel = args.loglevel or args.log_level or settings.log_level
    return Supervisor(settings, slots, loglevel=loglevel).run()


def cmd_sweeper(args: argparse.Namespace) -> int:
    """Run the recovery sweeper (and the retention pass) until stopped; safe to run twice."""
    import signal
    import threading

    from core.db import make_engine, make_session_factory
    from core.hooks import install_job_hooks
    from core.notify import job_feed
    from core.queue import make_celery
    from core.storage import settings_storage
    from core.sweeper import run_forever

    settings = get_settings()
    from core.probe_server import serve_process_probes

    serve_process_probes(settings, role="sweeper", port=settings.sweeper_probe_port)
    install_job_hooks(job_feed(settings))
    sessions = make_session_factory(
        make_engine(settings.database_url, pool_size=settings.pool_size(2))
    )
    storage = settings_storage(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_forever(
        sessions=sessions,
        celery=make_celery(settings),
        settings=settings,
        storage=storage,
        stop=stop,
    )
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    """Send webhooks: a CPU worker on the webhook queue, with its due-delivery poller."""
    from sender.process import serve_webhooks

    settings = get_settings()
    loglevel = args.loglevel or args.log_level or settings.log_level
    serve_webhooks(settings=settings, concurrency=args.concurrency, loglevel=loglevel)
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    """Build the small offline InternVL checkpoint used by tests, the demo and CPU benchmarks."""
    if args.trained:
        from devtools.tiny_training import build_seeing_model

        path = build_seeing_model(args.directory)
    else:
        from devtools.tiny_model import build_tiny_model

        path = build_tiny_model(args.directory, preset=args.preset, seed=args.seed)
    print(path)  # noqa: T201 - the command's output
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """Run API, worker, webhook sender and sweeper on embedded defaults (no servers)."""
    from devtools.embedded import run_dev

    return run_dev(host=args.host, port=args.port, auth=args.auth, devices=args.devices)


def cmd_config_docs(args: argparse.Namespace) -> int:
    """Write docs/configuration.md from the settings class."""
    from pathlib import Path

    from devtools.config_docs import write

    print(write(Path(args.output)))  # noqa: T201 - the command's output
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="internvl-jobs", description=__doc__)
    parser.add_argument("--log-level", default=None, help="override INTERNVL_JOBS_LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help=cmd_migrate.__doc__)
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("api", help=cmd_api.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help=cmd_worker.__doc__)
    p.add_argument("--devices", default="all", help="all | 0,1,... | cpu | cpu:N")
    p.add_argument("--models", default="", help="comma-separated aliases (default model if empty)")
    p.add_argument("--loglevel", default=None, help="default: INTERNVL_JOBS_LOG_LEVEL")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("sweeper", help=cmd_sweeper.__doc__)
    p.set_defaults(func=cmd_sweeper)

    p = sub.add_parser("webhooks", help=cmd_webhooks.__doc__)
    p.add_argument("--concurrency", type=int, default=0, help="sends in flight (0: settings)")
    p.add_argument("--loglevel", default=None, help="default: INTERNVL_JOBS_LOG_LEVEL")
    p.set_defaults(func=cmd_webhooks)

    p = sub.add_parser("tiny-model", help=cmd_tiny_model.__doc__)
    p.add_argument("directory")
    p.add_argument("--preset", default="test", help="test | bench | internvl3-1b")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--trained",
        action="store_true",
        help="the checkpoint trained on drawn shapes and words (ignores --preset and --seed)",
    )
    p.set_defaults(func=cmd_tiny_model)

    _add_bench_parsers(sub)

    p = sub.add_parser("config-docs", help=cmd_config_docs.__doc__)
    p.add_argument("--output", default="docs/configuration.md")
    p.set_defaults(func=cmd_config_docs)

    p = sub.add_parser("dev", help=cmd_dev.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--devices", default="cpu")
    p.add_argument("--auth", action="store_true", help="require API keys even in dev")
    p.set_defaults(func=cmd_dev)

    cli_keys.register(sub)
    cli_submit.register(sub)
    return parser


def _add_bench_parsers(sub: argparse._SubParsersAction) -> None:
    """`internvl-jobs bench ...` where the bench package is installed (not in the API image)."""
    try:
        from bench import commands as bench_commands
    except ModuleNotFoundError as exc:
        if exc.name != "bench":
            raise
        return
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_commands.register(bench.add_subparsers(dest="bench", required=True))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `internvl-jobs` console script."""
    args = build_parser().parse_args(argv)
    settings: Settings = get_settings()
    setup_logging(args.log_level or settings.log_level, json_lines=settings.log_json)
    try:
        sys.exit(args.func(args))
    except UnsafeBind as exc:
        log.error("refusing to start: %s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
