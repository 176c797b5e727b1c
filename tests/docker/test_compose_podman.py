"""scripts/compose_podman.py, the podman runner of the compose files, checked without podman.

scripts/containers runs the real stack with it; these tests pin what it makes of the files:
compose's interpolation and merge rules, the `podman run` arguments of each service, and the
local overlay's promise that the stand-ins change images and commands but not the start order.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "docker" / "compose.yaml", ROOT / "docker" / "local" / "compose.local.yaml"]
ENV = {"POSTGRES_PASSWORD": "pw", "MINIO_ROOT_USER": "user", "MINIO_ROOT_PASSWORD": "secret"}


@pytest.fixture(scope="module")
def cp() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "compose_podman", ROOT / "scripts/compose_podman.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model(cp: ModuleType) -> dict[str, Any]:
    return cp.load(FILES, ENV)


def test_interpolation_follows_compose(cp: ModuleType) -> None:
    env = {"SET": "a", "EMPTY": ""}
    cases = {
        "${SET}": "a",
        "${UNSET:-d}": "d",
        "${EMPTY:-d}": "d",
        "${EMPTY-d}": "",
        "${UNSET}": "",
        "$$HOME ${SET}$$": "$HOME a$",
    }
    for text, expected in cases.items():
        assert cp.interpolate(text, env) == expected, text
    with pytest.raises(cp.ComposeError, match="REQ is required: say so"):
        cp.interpolate({"k": ["${REQ:?say so}"]}, env)


def test_later_files_merge_mappings_and_replace_the_rest(cp: ModuleType) -> None:
    base = {"a": {"env": {"X": "1", "Y": "2"}, "command": ["one", "two"]}}
    over = {"a": {"env": {"Y": "3"}, "command": ["three"]}, "b": {}}
    assert cp.merge(base, over) == {
        "a": {"env": {"X": "1", "Y": "3"}, "command": ["three"]},
        "b": {},
    }


def test_run_arguments_of_the_api(cp: ModuleType, model: dict[str, Any]) -> None:
    args = cp.run_args("p", "api", model["services"]["api"], model["x-directory"])
    assert args[args.index("--name") + 1] == "p-api"
    assert args[args.index("--network-alias") + 1] == "api"
    assert args[args.index("--publish") + 1] == "127.0.0.1:8000:8000"  # loopback only
    assert "--pull" in args and args[args.index("--pull") + 1] == "never"
    health = json.loads(args[args.index("--health-cmd") + 1])
    assert health[0] == "python" and "127.0.0.1:8000/readyz" in health[-1]
    postgres = cp.run_args("p", "postgres", model["services"]["postgres"], model["x-directory"])
    shell = postgres[postgres.index("--health-cmd") + 1]
    assert shell == "pg_isready -h 127.0.0.1 -U internvl -d internvl"
    env = [args[i + 1] for i, a in enumerate(args) if a == "--env"]
    assert "INTERNVL_JOBS_BROKER_URL=redis://redis:6379/0" in env
    assert any(e.startswith("INTERNVL_JOBS_MODELS=") and "tiny" in e for e in env)
    image = args.index("internvl-jobs-api:latest")
    assert args[image + 1 :] == model["services"]["api"]["command"]


def test_named_volumes_belong_to_the_project(cp: ModuleType, model: dict[str, Any]) -> None:
    args = cp.run_args("p", "worker-cpu", model["services"]["worker-cpu"], model["x-directory"])
    assert args[args.index("--volume") + 1] == "p_models:/models"
    assert args[args.index("--stop-timeout") + 1] == "120"
    assert args[args.index("--restart") + 1] == "unless-stopped"


def test_one_shots_keep_their_shell_variables(cp: ModuleType, model: dict[str, Any]) -> None:
    services = model["services"]
    production = cp.load(FILES[:1], ENV)["services"]["create-bucket"]
    assert "$MINIO_ROOT_USER" in production["command"][0]  # $$ reaches the shell as $
    bucket = cp.run_args("p", "create-bucket", services["create-bucket"], model["x-directory"])
    assert bucket[bucket.index("--restart") + 1] == "no"
    entrypoint = json.loads(bucket[bucket.index("--entrypoint") + 1])
    assert entrypoint == ["/opt/moto/bin/python", "-c"]


def test_the_overlay_swaps_images_not_the_start_order(cp: ModuleType) -> None:
    production = cp.load(FILES[:1], ENV)["services"]
    local = cp.load(FILES, ENV)["services"]
    for name in ("redis", "postgres", "minio", "create-bucket"):
        assert local[name]["image"].startswith("internvl-jobs-standins:")
    for name, service in production.items():
        assert local[name].get("depends_on") == service.get("depends_on"), name
        assert local[name].get("volumes") == service.get("volumes"), name
    worker = local["worker-cpu"]
    assert set(production["worker-gpu0"]["depends_on"]) < set(worker["depends_on"])
    assert worker["depends_on"]["tiny-model"]["condition"] == "service_completed_successfully"
    assert worker["volumes"] == production["worker-gpu0"]["volumes"]
    assert worker["command"] == ["internvl-jobs", "worker", "--devices", "cpu"]


def test_a_missing_required_variable_stops_before_podman(cp: ModuleType) -> None:
    with pytest.raises(cp.ComposeError, match="POSTGRES_PASSWORD"):
        cp.load(FILES, {})


def test_down_stops_each_service_before_what_it_depends_on(
    cp: ModuleType, model: dict[str, Any]
) -> None:
    services = model["services"]
    running = ["redis", "postgres", "minio", "create-bucket", "migrate", "tiny-model"]
    running += ["api", "worker-cpu", "webhooks", "sweeper"]
    names = [f"p-{name}" for name in running] + ["p-left-over"]
    order = [name.removeprefix("p-") for name in cp.stop_order("p", services, names)]
    assert sorted(order) == sorted([*running, "left-over"])
    for name in running:
        for dependency in services[name].get("depends_on") or {}:
            assert order.index(name) < order.index(dependency), (name, dependency)
    assert order[0] == "left-over"
