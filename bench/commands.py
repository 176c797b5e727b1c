"""`internvl-jobs bench engine|service|submit|prepare`: the benchmarks' options and commands.

Only argparse at import time: the parsers are built for every command, and `python -m bench`
builds the engine one on machines that have torch but no web stack.
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
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per mode, the best reported; schedulers: interleaved repeats of the whole "
        "comparison, each ratio within one repeat, their median and range reported",
    )
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    p.add_argument(
        "--compare",
        default="naive",
        choices=["naive", "schedulers", "staging"],
        help="naive: the guide's loop vs the batched engine; schedulers: continuous vs static "
        "batching on a mixed burst, a mixed stream and a uniform burst of one-tile jobs; "
        "staging: a group's pixels copied at its prefill vs staged ahead (13-tile photos)",
    )
    p.add_argument(
        "--stage-mb", type=int, default=256, help="staging: pinned MiB (stage_pixels_mb)"
    )
    p.add_argument("--jobs", type=int, default=48, help="schedulers: jobs per workload")
    p.add_argument("--lengths", default="8,32,128", help="schedulers: mixed new-token lengths")
    p.add_argument("--uniform-length", type=int, default=32, help="schedulers: uniform length")
    p.add_argument(
        "--stream-rate",
        type=float,
        default=0.0,
        help="schedulers: jobs/s; 0: 1.5x the faster burst's",
    )


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
        "--device",
        default="",
        choices=["", "cpu", "cuda"],
        help="instead of the simulated device, the real engine (--preset or --checkpoint) on "
        "this device, with the same rounds and report (on a GPU: NVML's utilization too)",
    )
    p.add_argument("--dtype", default="auto", help="--device: auto | bfloat16 | float16 | float32")
    p.add_argument("--attention", default="auto", help="--device: auto | sdpa | eager | ...")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="--simulated-device/--device: the embedded defaults (SQLite, filesystem broker, "
        "local files) instead of PostgreSQL, Redis and S3, for a machine with no servers",
    )
    p.add_argument(
        "--sizes",
        default="448x448,640x480",
        help="JPEG sizes of the --simulated-device/--device rounds",
    )
    p.add_argument(
        "--prepare-processes",
        type=int,
        default=-1,
        help="the worker's prepare processes (0: prepare in its task threads; -1: automatic)",
    )
    p.add_argument(
        "--worker-threads",
        type=int,
        default=0,
        help="the worker's Celery task threads (0: twice the batch)",
    )
    p.add_argument(
        "--model-process",
        default="auto",
        help="the worker's model_process setting (auto, on, off); several, "
        "comma-separated (off,on), run one after another and are reported side by side",
    )
    p.add_argument(
        "--warm-up",
        type=int,
        default=2000,
        help="--simulated-device/--device: before each size's round, at most this many other "
        "photos of the size, uncounted, until the worker's prepare cache is full (0: none)",
    )
    p.add_argument("--json", default="", help="also write the figures to this JSON file")


def prepare_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the prepare benchmark."""
    p.add_argument("--repeats", type=int, default=7, help="interleaved runs; the median is given")
    p.add_argument("--max-tiles", type=int, default=12)
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    p.add_argument(
        "--interference",
        action="store_true",
        help="instead: the model loop's decode-step time (bench preset, fp32) while jobs are "
        "prepared beside it, idle vs in-process threads vs prepare processes",
    )
    _model_arguments(p)
    p.add_argument("--rate", type=float, default=20.0, help="interference: jobs/s prepared")
    p.add_argument("--seconds", type=float, default=5.0, help="interference: seconds per phase")
    p.add_argument("--rounds", type=int, default=3, help="interference: interleaved rounds")
    p.add_argument("--rows", type=int, default=8, help="interference: rows being decoded")
    p.add_argument("--processes", type=int, default=1, help="interference: prepare processes")


def cmd_bench_prepare(args: argparse.Namespace) -> int:
    """Preparing one job, CPU ms per image on one thread: the processor's way against ours."""
    if args.interference:
        return _bench_interference(args)
    from bench.prepare import format_prepare_report, run_prepare_bench

    report = run_prepare_bench(repeats=args.repeats, max_tiles=args.max_tiles)
    print(format_prepare_report(report))  # noqa: T201 - the command's output
    _write_json(report, args.json)
    return 0


def _bench_interference(args: argparse.Namespace) -> int:
    from bench.engine import bench_checkpoint
    from bench.interference import format_interference_report, run_interference_bench

    report = run_interference_bench(
        checkpoint=args.checkpoint or str(bench_checkpoint(args.preset, Path(args.cache_dir))),
        rate=args.rate,
        seconds=args.seconds,
        rounds=args.rounds,
        rows=args.rows,
        processes=args.processes,
    )
    print(format_interference_report(report))  # noqa: T201 - the command's output
    _write_json(report, args.json)
    return 0


def cmd_bench_engine(args: argparse.Namespace) -> int:
    """The guide's naive loop versus the batched engine on the same model and images."""
    from bench.engine import bench_checkpoint, format_report, run_engine_bench

    checkpoint = args.checkpoint or str(bench_checkpoint(args.preset, Path(args.cache_dir)))
    if args.compare == "schedulers":
        return _bench_schedulers(args, checkpoint)
    if args.compare == "staging":
        return _bench_staging(args, checkpoint)
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


def _bench_schedulers(args: argparse.Namespace, checkpoint: str) -> int:
    from bench.scheduling import run_scheduling_bench
    from bench.scheduling_report import format_comparison

    report = run_scheduling_bench(
        checkpoint=checkpoint,
        device=args.device,
        dtype=args.dtype,
        attention=args.attention,
        jobs=args.jobs,
        lengths=[int(n) for n in args.lengths.split(",")],
        uniform_length=args.uniform_length,
        max_batch_size=args.max_batch_size,
        stream_rate=args.stream_rate,
        repeats=args.repeats,
    )
    print(  # noqa: T201 - the command's output
        f"model {checkpoint}, {report['device_name']}, {report['dtype']}, "
        f"attention {report['attention']}, max_batch_size {report['max_batch_size']}"
    )
    print(format_comparison(report))  # noqa: T201 - the command's output
    _write_json(report, args.json)
    return 0


def _bench_staging(args: argparse.Namespace, checkpoint: str) -> int:
    from bench.staging import format_staging, run_staging_bench

    report = run_staging_bench(
        checkpoint=checkpoint,
        device=args.device,
        dtype=args.dtype,
        attention=args.attention,
        jobs=args.jobs,
        new_tokens=args.new_tokens,
        max_batch_size=args.max_batch_size,
        stage_mb=args.stage_mb,
        repeats=args.repeats,
    )
    print(format_staging(report))  # noqa: T201 - the command's output
    _write_json(report, args.json)
    return 0 if all(report["identical"].values()) else 1


def cmd_bench_service(args: argparse.Namespace) -> int:
    """The same work through HTTP, Redis, PostgreSQL, S3 and a worker, against the bare engine."""
    from bench.engine import bench_checkpoint
    from bench.service import format_service_report, run_service_bench
    from core.config import get_settings

    settings = get_settings()
    if args.simulated_device or args.device:
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
    from bench.simulated import Accelerator, format_simulated_report, run_simulated_bench

    if args.simulated_device:
        accelerator = Accelerator(simulated=args.simulated_device)
    else:
        from bench.engine import bench_checkpoint

        checkpoint = args.checkpoint or str(bench_checkpoint(args.preset, Path(args.cache_dir)))
        accelerator = Accelerator(
            checkpoint=checkpoint, device=args.device, dtype=args.dtype, attention=args.attention
        )
    reports = []
    for mode in args.model_process.split(","):  # one stack after another, in one run
        load_before = _load_average()
        report = run_simulated_bench(
            accelerator=accelerator,
            cache_dir=Path(args.cache_dir),
            database_url=args.database_url or settings.database_url,
            broker_url=args.broker_url or settings.broker_url,
            s3_endpoint_url=args.s3_endpoint_url or None,
            jobs=args.images,
            sizes=[_size(text) for text in args.sizes.split(",")],
            new_tokens=args.new_tokens,
            max_batch_size=args.max_batch_size,
            log_dir=Path(args.log_dir),
            prepare_processes=args.prepare_processes,
            model_process=mode,
            worker_threads=args.worker_threads,
            embedded=args.embedded,
            warm_up=args.warm_up,
        )
        report["load_average"] = {"before": load_before, "after": _load_average()}
        print(format_simulated_report(report))  # noqa: T201 - the command's output
        print(f"load average before {load_before}, after {_load_average()}")  # noqa: T201
        reports.append(report)
    _write_json(reports[0] if len(reports) == 1 else {"runs": reports}, args.json)
    finished = all(row["succeeded"] == args.images for r in reports for row in r["rows"])
    return 0 if finished else 1  # a job that did not succeed fails the run (scripts/gpu-bench)


def _load_average() -> str:
    """The host's load averages (1, 5, 15 minutes), as /proc/loadavg says them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def cmd_bench_submit(args: argparse.Namespace) -> int:
    """Jobs/s and p50/p99 latency of POST /v1/jobs on the configured PostgreSQL, Redis and S3."""
    from bench.submit import format_table, run_submit_bench, write_json
    from core.config import get_settings

    settings = get_settings()
    results = run_submit_bench(
        settings,
        levels=[int(level) for level in args.concurrency.split(",")],
        requests=args.requests,
        same_image=args.same_image,
        s3_server=args.s3_server,
        url=args.url,
        api_key=args.api_key,
        api_pid=args.api_pid,
    )
    print(format_table(results))  # noqa: T201 - the command's output
    write_json(results, args.json)
    return 0


def cmd_bench_pieces(args: argparse.Namespace) -> int:
    """CPU per call of each piece of a job's path (API requests, submission, worker's work)."""
    from bench.pieces import format_pieces, run_pieces

    if not args.database_url or not args.broker_url:
        raise SystemExit("--database-url and --broker-url are required (scratch ones)")
    load_before = _load_average()
    pieces = run_pieces(
        database_url=args.database_url,
        broker_url=args.broker_url,
        s3_endpoint_url=args.s3_endpoint_url or None,
        calls=args.calls,
    )
    print(format_pieces(pieces))  # noqa: T201 - the command's output
    print(f"load average before {load_before}, after {_load_average()}")  # noqa: T201
    _write_json({"pieces": [{"piece": n, "cpu_ms": ms} for n, ms in pieces]}, args.json)
    return 0


def cmd_bench_commits(args: argparse.Namespace) -> int:
    """Jobs/s a worker's group commit records with the database a round trip away."""
    from bench.commits import format_commits, run_commits

    if not args.database_url:
        raise SystemExit("--database-url is required (a scratch PostgreSQL database)")
    load_before = _load_average()
    rows = run_commits(
        database_url=args.database_url,
        rtts_ms=[float(v) for v in args.rtt_ms.split(",")],
        concurrencies=[int(v) for v in args.concurrency.split(",")],
        jobs=args.jobs,
        threads=args.threads,
    )
    print(format_commits(rows))  # noqa: T201 - the command's output
    print(f"load average before {load_before}, after {_load_average()}")  # noqa: T201
    _write_json({"commits": rows}, args.json)
    return 0


def _write_json(report: dict[str, object], path: str) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2))


def register(bench: argparse._SubParsersAction) -> None:
    """Add the `internvl-jobs bench` subcommands: engine, service, submit, prepare, pieces,
    commits."""
    p = bench.add_parser("engine", help=cmd_bench_engine.__doc__)
    engine_arguments(p)
    p.set_defaults(func=cmd_bench_engine)
    p = bench.add_parser("service", help=cmd_bench_service.__doc__)
    service_arguments(p)
    p.set_defaults(func=cmd_bench_service)
    p = bench.add_parser("prepare", help=cmd_bench_prepare.__doc__)
    prepare_arguments(p)
    p.set_defaults(func=cmd_bench_prepare)
    p = bench.add_parser("submit", help=cmd_bench_submit.__doc__)
    p.add_argument("--concurrency", default="1,4,16,64", help="levels, comma-separated")
    p.add_argument("--requests", type=int, default=400, help="requests per level")
    p.add_argument("--same-image", action="store_true", help="one image for every request")
    p.add_argument("--s3-server", default="", help="'moto': start a local S3 server (dev)")
    p.add_argument("--url", default="", help="an API already running (default: start one)")
    p.add_argument("--api-key", default="", help="its API key, with --url")
    p.add_argument("--api-pid", type=int, default=None, help="its pid, to report CPU per job")
    p.add_argument("--json", default="", help="also write the figures to this file")
    p.set_defaults(func=cmd_bench_submit)
    p = bench.add_parser("pieces", help=cmd_bench_pieces.__doc__)
    p.add_argument("--database-url", default="", help="a scratch database (migrated by the bench)")
    p.add_argument("--broker-url", default="", help="redis://... (a database of its own)")
    p.add_argument("--s3-endpoint-url", default="", help="S3 server; empty: start a moto server")
    p.add_argument("--calls", type=int, default=200, help="calls of each piece")
    p.add_argument("--json", default="", help="also write the figures to this file")
    p.set_defaults(func=cmd_bench_pieces)
    p = bench.add_parser("commits", help=cmd_bench_commits.__doc__)
    p.add_argument("--database-url", default="", help="a scratch PostgreSQL database")
    p.add_argument("--rtt-ms", default="0,1,2,5", help="round trips added, comma-separated")
    p.add_argument("--concurrency", default="1,2,4", help="database_commit_concurrency values")
    p.add_argument("--jobs", type=int, default=1000, help="jobs claimed and completed per cell")
    p.add_argument("--threads", type=int, default=32, help="task threads (a worker's automatic)")
    p.add_argument("--json", default="", help="also write the figures to this file")
    p.set_defaults(func=cmd_bench_commits)
