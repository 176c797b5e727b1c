#!/usr/bin/env python3
"""Run docker/compose.yaml with plain podman commands, where no Docker engine is at hand.

It translates what the project's compose files use: image, command, entrypoint, environment,
env_file, volumes, ports (published on 127.0.0.1 only), working_dir, healthcheck, depends_on,
restart and stop_grace_period. `up SERVICE...` starts those services and what they depend on,
in order, waiting on each condition as compose does: service_healthy runs the service's own
health check (`podman healthcheck run`, since no systemd timer runs it here) until it passes;
service_completed_successfully waits for the one-shot to exit 0. `down` removes the project's
containers (dependents first, as compose stops them), its network and, with --volumes, its
volumes. Files merge like `compose -f a -f b` (mappings merge, other values are replaced),
after ${VAR} interpolation from --env-file and the environment.

  scripts/compose_podman.py -f docker/compose.yaml --env-file docker/.env up api
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z0-9_]+)(?:(:?[-?])([^}]*))?\})")
LABEL = "com.docker.compose.project"


class ComposeError(RuntimeError):
    """The compose files cannot be run as written, or a service failed its condition."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and $$ in every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, rest = match.groups()
        unset = name not in env or (operator and operator.startswith(":") and not env[name])
        if not unset:
            return env[name]
        if operator in (":?", "?"):
            raise ComposeError(f"${name} is required: {rest}")
        return rest if operator in (":-", "-") else ""

    return VARIABLE.sub(one, value)


def merge(base: Any, over: Any) -> Any:
    """Lay `over` on `base`: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return over


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (quotes around a value are dropped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip().strip("'\"")
    return values


def load(files: list[Path], env: dict[str, str]) -> dict[str, Any]:
    """The merged, interpolated compose model of `files` (the first one names the project)."""
    model: dict[str, Any] = {}
    for path in files:
        model = merge(model, interpolate(yaml.safe_load(path.read_text()), env))
    model["x-directory"] = str(files[0].resolve().parent)
    return model


def _duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))


def _health_args(check: dict[str, Any]) -> list[str]:
    kind, *test = check["test"]
    # podman takes a JSON list as the exec form (it reads "CMD" as the program), else a shell.
    args = ["--health-cmd", json.dumps(test) if kind == "CMD" else test[0]]
    for key in ("interval", "timeout", "start_period", "retries"):
        if key in check:
            args += [f"--health-{key.replace('_', '-')}", str(check[key])]
    return args


def _volume_args(project: str, directory: str, volumes: list[str]) -> list[str]:
    args = []
    for volume in volumes:
        source, _, target = volume.partition(":")
        if source.startswith("."):
            source = str(Path(directory, source).resolve())
        elif not source.startswith("/"):
            source = f"{project}_{source}"
        args += ["--volume", f"{source}:{target}"]
    return args


def run_args(project: str, name: str, service: dict[str, Any], directory: str) -> list[str]:
    """`podman run` arguments (after `run`) for one service of the merged model."""
    args = ["--detach", "--pull", "never", "--name", f"{project}-{name}"]
    args += ["--label", f"{LABEL}={project}", "--label", f"com.docker.compose.service={name}"]
    args += ["--network", f"{project}_default", "--network-alias", name]
    args += ["--restart", service.get("restart", "no")]
    if "stop_grace_period" in service:
        args += ["--stop-timeout", str(_duration_s(service["stop_grace_period"]))]
    for entry in service.get("env_file", []):
        path = Path(directory, entry if isinstance(entry, str) else entry["path"])
        if path.is_file() or (isinstance(entry, dict) and entry.get("required") is False):
            args += ["--env-file", str(path)] if path.is_file() else []
        else:
            raise ComposeError(f"{name}: env_file {path} does not exist")
    for key, value in (service.get("environment") or {}).items():
        args += ["--env", f"{key}={value}"]
    args += _volume_args(project, directory, service.get("volumes", []))
    for port in service.get("ports", []):
        args += ["--publish", f"127.0.0.1:{port}"]
    if "working_dir" in service:
        args += ["--workdir", service["working_dir"]]
    if "healthcheck" in service:
        args += _health_args(service["healthcheck"])
    entrypoint = service.get("entrypoint")
    if entrypoint is not None:
        args += ["--entrypoint", json.dumps(entrypoint)]
    return [*args, service["image"], *service.get("command", [])]


def stop_order(project: str, services: dict[str, Any], containers: list[str]) -> list[str]:
    """`containers` in the order compose stops them: every service before what it depends on
    (a worker before its broker and database, so its shutdown can still hand jobs back)."""
    order: list[str] = []

    def visit(name: str, chain: list[str]) -> None:
        if name in order or name in chain or name not in services:
            return
        for dependency in services[name].get("depends_on") or {}:
            visit(dependency, [*chain, name])
        order.append(name)

    for name in services:
        visit(name, [])
    rank = {f"{project}-{name}": index for index, name in enumerate(order)}
    return sorted(containers, key=lambda container: -rank.get(container, len(order)))


class Project:
    """The containers of one compose project, driven through the podman command."""

    def __init__(
        self, name: str, model: dict[str, Any], podman: list[str], run_options: list[str]
    ) -> None:
        self.name, self.model, self.podman = name, model, podman
        self.run_options = run_options
        self.started: set[str] = set()

    def _podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self.podman, *args]
        result = subprocess.run(command, capture_output=True, text=True)  # noqa: S603 - no shell
        if check and result.returncode != 0:
            raise ComposeError(f"podman {' '.join(args[:2])}: {result.stderr.strip()}")
        return result

    def up(self, names: list[str]) -> None:
        """Start `names` and their dependencies in order (containers left from before are kept)."""
        network = f"{self.name}_default"
        if self._podman("network", "exists", network, check=False).returncode != 0:
            self._podman("network", "create", network)
        for name in names:
            self._start(name, [])

    def _start(self, name: str, chain: list[str]) -> None:
        if name in self.started:
            return
        if name in chain:
            raise ComposeError(f"depends_on cycle: {' -> '.join([*chain, name])}")
        service = self.model["services"][name]
        for dependency, rule in (service.get("depends_on") or {}).items():
            self._start(dependency, [*chain, name])
            self._wait(dependency, rule.get("condition", "service_started"))
        container = f"{self.name}-{name}"
        if self._podman("container", "exists", container, check=False).returncode == 0:
            self._podman("start", container)
        else:
            self._volumes(service)
            args = run_args(self.name, name, service, self.model["x-directory"])
            self._podman("run", *self.run_options, *args)
        print(f"compose: started {name}", file=sys.stderr)
        self.started.add(name)

    def _volumes(self, service: dict[str, Any]) -> None:
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                full = f"{self.name}_{source}"
                if self._podman("volume", "exists", full, check=False).returncode != 0:
                    self._podman("volume", "create", full)

    def _wait(self, name: str, condition: str, timeout_s: float = 900.0) -> None:
        container = f"{self.name}-{name}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self._podman(
                "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container
            ).stdout.split()
            if condition == "service_started" and state[0] == "running":
                return
            if condition == "service_completed_successfully" and state[0] == "exited":
                if state[1] == "0":
                    return
                raise ComposeError(f"{name} exited with {state[1]}\n{self.logs(name)}")
            if condition == "service_healthy":
                if self._podman("healthcheck", "run", container, check=False).returncode == 0:
                    print(f"compose: {name} is healthy", file=sys.stderr)
                    return
                if state[0] == "exited":
                    raise ComposeError(f"{name} exited with {state[1]}\n{self.logs(name)}")
            time.sleep(2)
        raise ComposeError(f"{name}: {condition} not met in {timeout_s:.0f} s\n{self.logs(name)}")

    def logs(self, name: str, lines: int = 60) -> str:
        """The last lines a service wrote."""
        result = self._podman("logs", "--tail", str(lines), f"{self.name}-{name}", check=False)
        return result.stdout + result.stderr

    def containers(self) -> list[str]:
        """The project's containers, running or not."""
        out = self._podman(
            "ps", "--all", "--filter", f"label={LABEL}={self.name}", "--format", "{{.Names}}"
        ).stdout
        return out.split()

    def down(self, volumes: bool) -> None:
        """Stop (each within its grace period, dependents first) and remove everything the
        project made."""
        services = self.model.get("services") or {}
        for container in stop_order(self.name, services, self.containers()):
            self._podman("stop", container, check=False)
            self._podman("rm", "--force", container, check=False)
        self._podman("network", "rm", "--force", f"{self.name}_default", check=False)
        if volumes:
            for volume in self.model.get("volumes") or {}:
                self._podman("volume", "rm", "--force", f"{self.name}_{volume}", check=False)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run `up`, `down`, `logs` or `healthy`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--file", action="append", type=Path, required=True)
    parser.add_argument("-p", "--project-name", default="")
    parser.add_argument("--env-file", type=Path)
    parser.add_argument("--podman", default="podman", help="the podman command and its options")
    parser.add_argument("--run-options", default="", help="more `podman run` options")
    parser.add_argument("action", choices=["up", "down", "logs", "healthy"])
    parser.add_argument("services", nargs="*")
    parser.add_argument("--volumes", action="store_true", help="down: remove volumes too")
    args = parser.parse_args(argv)
    env = read_env_file(args.env_file) if args.env_file else {}
    env.update(os.environ)
    model = load(args.file, env)
    name = args.project_name or model.get("name", "compose")
    project = Project(name, model, args.podman.split(), args.run_options.split())
    try:
        if args.action == "up":
            project.up(args.services)
        elif args.action == "down":
            project.down(args.volumes)
        elif args.action == "healthy":
            for name in args.services:
                project._wait(name, "service_healthy")
        else:
            for name in args.services or [c.split("-", 1)[1] for c in project.containers()]:
                print(f"--- {name}\n{project.logs(name)}")
    except ComposeError as exc:
        print(f"compose: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
