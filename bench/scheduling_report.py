"""The scheduler comparison as text: every run, then continuous against static per workload."""

from __future__ import annotations

from typing import Any

HEADER = (
    f"{'workload':13} {'scheduler':16} {'#':>2} {'s':>7} {'jobs/s':>7} {'tok/s':>7} "
    f"{'p50 s':>6} {'p50 by length (s)':>26} {'rows/step':>9} {'steps/s':>7} "
    f"{'prefill':>7} {'peak MiB':>8}"
)


def format_run(run: dict[str, Any]) -> str:
    """One scheduler's run on one workload, as a table row."""
    lengths = " ".join(f"{k}:{v:.2f}" for k, v in run["median_s_by_length"].items())
    b = run["batcher"]
    rows = b["mean_occupancy"] or b["mean_batch_size"]
    peak = "-" if run["peak_gpu_mib"] is None else f"{run['peak_gpu_mib']:.0f}"
    return (
        f"{run['workload']:13} {run['scheduler']:16} {run.get('repeat', 0):>2} "
        f"{run['seconds']:>7.2f} {run['jobs_per_s']:>7.2f} {run['tokens_per_s']:>7.1f} "
        f"{run['median_s']:>6.2f} {lengths:>26} {rows:>9.2f} {b['steps_per_s']:>7.1f} "
        f"{b['prefill_step_share']:>7.2f} {peak:>8}"
    )


def format_ratio(scheduler: str, entry: dict[str, Any]) -> str:
    """A scheduler's ratios to static: one run's, or the median of the repeats with the range."""

    def figure(key: str) -> str:
        summary = entry[f"{key}_summary"]
        if len(entry[key]) == 1:
            return f"{summary['median']:.2f}x"
        every = " ".join(f"{v:.2f}" for v in entry[key])
        return (
            f"{summary['median']:.2f}x (median of {len(entry[key])}: "
            f"{summary['min']:.2f}-{summary['max']:.2f}; {every})"
        )

    return (
        f"  {scheduler}/static: throughput {figure('throughput')},"
        f" median completion of the {entry['shortest']}-token jobs {figure('short_median')}"
    )


def format_comparison(report: dict[str, Any]) -> str:
    """The comparison as a plain-text table, continuous against static per workload."""
    lines = [f"stream rate {report['stream_rate']} jobs/s, {report.get('repeats', 1)} repeats"]
    lines.append(HEADER)
    workloads: dict[str, list[dict[str, Any]]] = {}
    for run in report["runs"]:
        workloads.setdefault(run["workload"], []).append(run)
    for workload, runs in workloads.items():
        lines += [format_run(run) for run in runs]
        for scheduler, entry in report["ratios"].get(workload, {}).items():
            lines.append(format_ratio(scheduler, entry))
        same = "identical" if report["identical"][workload] else "DIFFERENT"
        lines.append(f"  greedy outputs {same}")
    return "\n".join(lines)
