"""The launcher's plan: which worker processes run where, pinned before CUDA is touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ModelSpec, Settings
from worker.launcher import (
    Slot,
    child_command,
    child_env,
    cpu_threads_per_worker,
    parse_devices,
    plan_slots,
    prepare_processes_per_worker,
    visible_gpus,
)


def model(alias: str, gpus: int = 1) -> ModelSpec:
    return ModelSpec(alias=alias, checkpoint=f"OpenGVLab/{alias}", gpus_per_worker=gpus)


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ("all", ["0", "1", "2", "3"]),
        ("1,3", ["1", "3"]),
        (" 2 ", ["2"]),
        ("cpu", ["cpu0"]),
        ("cpu:3", ["cpu0", "cpu1", "cpu2"]),
    ],
)
def test_devices_option(devices: str, expected: list[str]) -> None:
    assert parse_devices(devices, ["0", "1", "2", "3"]) == expected


@pytest.mark.parametrize(
    ("devices", "available", "message"),
    [
        ("all", [], "no GPU found"),
        ("0,7", ["0", "1"], "not found"),
        ("cpu:0", [], "cpu:N"),
        ("cpu:two", [], "cpu:N"),
    ],
)
def test_bad_devices_are_refused_with_a_reason(
    devices: str, available: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_devices(devices, available)


def test_one_worker_per_gpu() -> None:
    assert plan_slots([model("a")], ["0", "1"]) == [
        Slot("a", "gpu0", "0"),
        Slot("a", "gpu1", "1"),
    ]


def test_a_model_bigger_than_one_gpu_gets_groups_of_gpus() -> None:
    big = model("internvl3-78b", gpus=2)
    assert plan_slots([big], ["0", "1", "2", "3", "4"]) == [
        Slot("internvl3-78b", "gpu0-1", "0,1"),
        Slot("internvl3-78b", "gpu2-3", "2,3"),
    ]
    with pytest.raises(ValueError, match="needs 4 GPUs"):
        plan_slots([model("huge", gpus=4)], ["0", "1"])


def test_every_model_gets_its_own_workers() -> None:
    slots = plan_slots([model("a"), model("b", gpus=2)], ["0", "1"])
    assert slots == [Slot("a", "gpu0", "0"), Slot("a", "gpu1", "1"), Slot("b", "gpu0-1", "0,1")]
    cpu = plan_slots([model("a"), model("b", gpus=2)], ["cpu0"])
    assert cpu == [Slot("a", "cpu0", None), Slot("b", "cpu0", None)]


def test_child_processes_are_pinned_through_their_environment() -> None:
    settings = Settings(_env_file=None, models=[model("a")])  # type: ignore[call-arg]
    base = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    group = child_env(settings, Slot("a", "gpu2-3", "2,3"), base)
    assert group["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert group["PATH"] == "/usr/bin"
    assert json.loads(group["INTERNVL_JOBS_MODELS"])[0]["alias"] == "a"
    assert child_env(settings, Slot("a", "cpu0", None), base)["CUDA_VISIBLE_DEVICES"] == ""
    command = child_command(Slot("a", "gpu2-3", "2,3"), "INFO")
    assert command[1:] == [
        "-m",
        "worker",
        "--model",
        "a",
        "--device",
        "gpu2-3",
        "--loglevel",
        "INFO",
    ]


def test_gpus_are_found_with_nvidia_smi_or_in_proc(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    smi.chmod(0o755)
    assert visible_gpus(str(smi), proc_root=tmp_path) == ["0", "1", "2"]
    broken = tmp_path / "broken-smi"
    broken.write_text("#!/bin/sh\nexit 9\n")
    broken.chmod(0o755)
    for index in range(2):
        (tmp_path / "driver" / "nvidia" / "gpus" / f"0000:0{index}:00.0").mkdir(parents=True)
    assert visible_gpus(str(broken), proc_root=tmp_path) == ["0", "1"]


def test_the_launcher_never_imports_torch() -> None:
    code = (
        "import sys; from worker.launcher import parse_devices, plan_slots; "
        "from cli.main import cmd_worker; "
        "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_workers_share_the_hosts_cores_through_thread_caps() -> None:
    settings = Settings(_env_file=None, models=[model("a")])  # type: ignore[call-arg]
    assert cpu_threads_per_worker(settings, workers=4, cores=16) == 4
    assert cpu_threads_per_worker(settings, workers=8, cores=4) == 1  # never zero
    env = child_env(settings, Slot("a", "gpu0", "0"), {}, cpu_threads=4)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4"
    assert env["INTERNVL_JOBS_WORKER_CPU_THREADS"] == "4"
    fixed = Settings(_env_file=None, models=[model("a")], worker_cpu_threads=3)  # type: ignore[call-arg]
    assert cpu_threads_per_worker(fixed, workers=4, cores=16) == 3


def test_prepare_processes_default_to_the_workers_cores_but_one() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert prepare_processes_per_worker(settings, cpu_threads=8) == 7
    assert prepare_processes_per_worker(settings, cpu_threads=4) == 3
    # on fewer cores a prepare process would compete with the model loop: task threads
    assert prepare_processes_per_worker(settings, cpu_threads=3) == 0
    assert prepare_processes_per_worker(settings, cpu_threads=1) == 0
    env = child_env(settings, Slot("a", "gpu0", "0"), {}, cpu_threads=4)
    assert env["INTERNVL_JOBS_PREPARE_PROCESSES"] == "3"
    threads = Settings(_env_file=None, prepare_processes=0)  # type: ignore[call-arg]
    assert prepare_processes_per_worker(threads, cpu_threads=8) == 0
    fixed = Settings(_env_file=None, prepare_processes=2)  # type: ignore[call-arg]
    assert prepare_processes_per_worker(fixed, cpu_threads=8) == 2
