"""`internvl-jobs bench engine|service|prepare`: the benchmarks (figures printed).

Only argparse at import time: the parsers are built for every command, and `python -m
worker.bench` builds the engine one on machines that have torch but no web stack.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _model_arguments(p: argparse.ArgumentParser) -> None:
    """Which model both benchmarks run: a tiny preset, built once, or a checkpoint."""
    p.add_argument("--preset", default="bench", help="tiny preset: test | bench | internvl3-1b")
    p.add_argument("--checkpoint", default="", help="a checkpoint directory instead of a preset")
    p.add_argument("--cache-dir", default=".bench/models", help="where presets are built")


def engine_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the engine benchmark."""
    _model_arguments(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32")
    p.add_argument("--attention", default="auto", help="auto | sdpa | flash_attention_2 | eager")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--tiles", default="1,13", help="tiles per image, comma-separated: 1 and/or 13")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="runs per mode; the best is reported")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")


def service_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the service benchmark."""
    _model_arguments(p)
    p.add_argument("--database-url", default="", help="a scratch database (migrated by the bench)")
    p.add_argument("--broker-url", default="", help="redis://... (a database of its own)")
    p.add_argument("--s3-endpoint-url", default="", help="S3 server; empty: start a moto server")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument(
        "--repeats", type=int, default=3, help="alternating rounds; the median ratio is reported"
    )
    p.add_argument("--max-batch-wait-ms", type=int, default=500)
    p.add_argument("--batch-gap-ms", type=int, default=50)
    p.add_argument("--log-dir", default=".bench/service", help="logs of the started processes")
    p.add_argument(
        "--simulated-device",
        default="",
        choices=["", "h100"],
        help="run the worker on a simulated accelerator (InternVL3-1B timed as on it) and "
        "report device busy fraction, jobs/s and host CPU per job by process",
    )
    p.add_argument(
        "--sizes", default="448x448,640x480", help="JPEG sizes of the simulated-device rounds"
    )
    p.add_argument("--json", default="", help="also write the figures to this JSON file")


def prepare_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the prepare benchmark."""
    p.add_argument("--repeats", type=int, default=7, help="interleaved runs; the median is given")
    p.add_argument("--max-tiles", type=int, default=12)
    p.add_argument("--json", default="", help="also write the figures to this JSON file")


def cmd_bench_prepare(args: argparse.Namespace) -> int:
    """Preparing one job, CPU ms per image on one thread: the processor's way against ours."""
    from worker.bench_prepare import format_prepare_report, run_prepare_bench

    report = run_prepare_bench(repeats=args.repeats, max_tiles=args.max_tiles)
    print(format_prepare_report(report))  # noqa: T201 - the command's output
    _write_json(report, args.json)
    return 0


def cmd_bench_engine(args: argparse.Namespace) -> int:
    """The guide's naive loop versus the batched engine on the same model and images."""
    from worker.bench import bench_checkpoint, format_report, run_engine_bench

    checkpoint = args.checkpoint or str(bench_checkpoint(args.preset, Path(args.cache_dir)))
    report = run_engine_bench(
        checkpoint=checkpoint,
        device=args.device,
        dtype=args.dtype,
        attention=args.attention,
        images=args.images,
        tiles=[int(t) for t in args.tiles.split(",")],
        new_tokens=args.new_tokens,
        max_batch_size=args.max_batch_size,
        repeats=args.repeats,
    )
    print(format_report(report))  # noqa: T201 - the command's output
    _write_json(report, args.json)
    return 0


def cmd_bench_service(args: argparse.Namespace) -> int:
    """The same work through HTTP, Redis, PostgreSQL, S3 and a worker, against the bare engine."""
    from core.config import get_settings
    from worker.bench import bench_checkpoint
    from worker.bench_service import format_service_report, run_service_bench

    settings = get_settings()
    if args.simulated_device:
        return _simulated_service_bench(args, settings)
    report = run_service_bench(
        checkpoint=args.checkpoint or str(bench_checkpoint(args.preset, Path(args.cache_dir))),
        database_url=args.database_url or settings.database_url,
        broker_url=args.broker_url or settings.broker_url,
        s3_endpoint_url=args.s3_endpoint_url or None,
        images=args.images,
        new_tokens=args.new_tokens,
        max_batch_size=args.max_batch_size,
        repeats=args.repeats,
        log_dir=Path(args.log_dir),
        batching={"max_batch_wait_ms": args.max_batch_wait_ms, "batch_gap_ms": args.batch_gap_ms},
    )
    print(format_service_report(report))  # noqa: T201 - the command's output
    _write_json(report, args.json)
    return 0 if report["succeeded"] == args.images else 1


def _simulated_service_bench(args: argparse.Namespace, settings: Any) -> int:
    from worker.bench_simulated import format_simulated_report, run_simulated_bench

    report = run_simulated_bench(
        device=args.simulated_device,
        cache_dir=Path(args.cache_dir),
        database_url=args.database_url or settings.database_url,
        broker_url=args.broker_url or settings.broker_url,
        s3_endpoint_url=args.s3_endpoint_url or None,
        jobs=args.images,
        sizes=[_size(text) for text in args.sizes.split(",")],
        new_tokens=args.new_tokens,
        max_batch_size=args.max_batch_size,
        log_dir=Path(args.log_dir),
    )
    print(format_simulated_report(report))  # noqa: T201 - the command's output
    _write_json(report, args.json)
    return 0


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def _write_json(report: dict[str, object], path: str) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2))


def register(bench: argparse._SubParsersAction) -> None:
    """Add `engine`, `service` and `prepare` to the `internvl-jobs bench` subcommands."""
    p = bench.add_parser("engine", help=cmd_bench_engine.__doc__)
    engine_arguments(p)
    p.set_defaults(func=cmd_bench_engine)
    p = bench.add_parser("service", help=cmd_bench_service.__doc__)
    service_arguments(p)
    p.set_defaults(func=cmd_bench_service)
    p = bench.add_parser("prepare", help=cmd_bench_prepare.__doc__)
    prepare_arguments(p)
    p.set_defaults(func=cmd_bench_prepare)
