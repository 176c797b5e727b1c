"""`internvl-jobs dev`: the whole service on one machine with no servers to install.

SQLite holds the jobs, a directory holds the images, kombu's filesystem transport carries the
messages, and the tiny offline InternVL answers unless a model registry is configured. The
API, one worker, the webhook sender and the sweeper run as child processes, exactly as they
would in production.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from core.config import ModelSpec, Settings, get_settings
from core.exposure import check_bind
from core.migrations import upgrade

log = logging.getLogger("devtools.embedded")
TINY_ALIAS = "tiny-internvl"
TINY_TILE_SIZE = 64


def tiny_model_dir(settings: Settings) -> Path:
    """Where dev mode keeps its tiny checkpoint."""
    return settings.data_dir.resolve() / "models" / TINY_ALIAS


def dev_settings(base: Settings, *, auth: bool) -> Settings:
    """The base settings with development relaxations and, unless configured, the tiny model."""
    update: dict[str, object] = {
        "environment": "development",
        "auth_enabled": auth,
        "webhook_allow_private": True,  # receivers on this machine, for trying webhooks out
        "webhook_allow_http": True,
    }
    if "probe_host" not in base.model_fields_set:
        update["probe_host"] = "127.0.0.1"  # a laptop's metrics stay on the laptop
    if "log_json" not in base.model_fields_set:
        update["log_json"] = False
    if "models" not in base.model_fields_set:
        update["models"] = [
            ModelSpec(
                alias=TINY_ALIAS,
                checkpoint=str(tiny_model_dir(base)),
                default=True,
                tile_size=TINY_TILE_SIZE,
            )
        ]
    return base.model_copy(update=update)


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def ensure_tiny_model(settings: Settings) -> None:
    """Build the trained tiny checkpoint, again whenever its training code has changed.

    Seconds from the shipped weights; minutes of CPU when they are out of date and it trains.
    """
    from devtools.tiny_training import is_current

    target = tiny_model_dir(settings)
    if (target / "config.json").is_file() and is_current(target):
        return
    log.info("building the trained tiny InternVL checkpoint in %s", target)
    subprocess.run(_python("tiny-model", "--trained", str(target)), check=True)  # noqa: S603


def run_dev(*, host: str, port: int, auth: bool, devices: str) -> int:
    """Prepare the embedded stack and run it until interrupted."""
    settings = dev_settings(get_settings(), auth=auth)
    check_bind(settings, host)  # before anything starts: `dev --host 0.0.0.0` is guarded
    if settings.default_model.alias == TINY_ALIAS:
        ensure_tiny_model(settings)
    upgrade(settings.database_url)
    env = {**_inherited_env(), **settings.as_env()}
    commands = {
        "api": _python("api", "--host", host, "--port", str(port)),
        "worker": _python("worker", "--devices", devices),
        "sweeper": _python("sweeper"),
        "webhooks": _python("webhooks", "--concurrency", "4"),
    }
    children = {
        name: subprocess.Popen(command, env=env)  # noqa: S603
        for name, command in commands.items()
    }
    log.info(
        "internvl-jobs dev: http://%s:%d (docs at /docs), data in %s",
        host,
        port,
        settings.data_dir.resolve(),
    )
    return _wait(children)


def _inherited_env() -> dict[str, str]:
    # Children need PATH, HOME and the like; the service's own settings are passed explicitly.
    return dict(os.environ)


def _wait(children: dict[str, subprocess.Popen[bytes]]) -> int:
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                log.error("%s exited with %s; stopping the others", name, child.returncode)
                stop(signal.SIGTERM, None)
                break
        time.sleep(0.5)
    for child in children.values():
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0
