"""Each hostile class fired at a live API (real HTTP, PostgreSQL, auth on) while /healthz is
probed: no answer is a 5xx, and the figures (cases, 5xx, worst /healthz latency) are printed
for docs/reliability.md (`pytest -s tests/api/test_attack_load.py`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from api.app import create_app
from api.deps import Runtime
from core.config import Settings
from tests.api import hostile_requests as corpus
from tests.support import LiveServer
from tests.support.api import b64, make_key, png_bytes
from tests.support.drip_server import dripping_headers

Attack = Callable[[httpx.Client, int], httpx.Response]
pytestmark = pytest.mark.slow


class HealthProbe:
    """GET /healthz every 50 ms in a thread; the worst latency and any failure."""

    def __init__(self, url: str) -> None:
        self.url, self.worst_s, self.failures = url, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                ok = client.get(f"{self.url}/healthz").status_code == 200
                self.worst_s = max(self.worst_s, time.monotonic() - started)
                self.failures += 0 if ok else 1
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=130)


@pytest.fixture
def live(service_settings: Settings) -> Iterator[tuple[str, dict[str, str]]]:
    settings = service_settings.model_copy(
        update={
            "auth_enabled": True,
            "image_fetch_allow_private": True,
            "image_fetch_timeout_s": 2.0,
            "key_rate_per_s": 0.0,
        }
    )
    runtime = Runtime.from_settings(settings)
    with LiveServer(create_app(runtime=runtime)) as server:
        yield server.url, make_key(runtime, "attacker")
    runtime.close()


def _fire(url: str, attack: Attack, cases: int, workers: int) -> tuple[int, int, float]:
    """(cases, 5xx answers, worst /healthz seconds) for `cases` requests, `workers` at once."""
    with (
        HealthProbe(url) as probe,
        httpx.Client(base_url=url, timeout=120) as client,
        ThreadPoolExecutor(workers) as pool,
    ):
        answers = list(pool.map(lambda n: attack(client, n), range(cases)))
    errors = sum(1 for a in answers if a.status_code >= 500)
    assert probe.failures == 0
    return cases, errors, probe.worst_s


def test_no_attack_class_gets_a_5xx_or_stalls_healthz(live: tuple[str, dict[str, str]]) -> None:
    url, key = live
    json_key = {**key, "content-type": "application/json"}
    jsonl_key = {**key, "content-type": "application/jsonl"}
    image = b64(png_bytes())
    refs = [{"type": "image", "image": 0}] * 20_000
    chat = {
        "task": "chat",
        "images": [{"data": image}],
        "messages": [{"role": "user", "content": refs}],
    }
    jsonl = b'{"custom_id": "x", "task": "caption"}\n' * 200_000
    deep = corpus.deeply_nested()
    with dripping_headers(every_s=0.5) as drip:
        attacks: dict[str, tuple[Attack, int, int]] = {
            "1 dripping image URLs": (
                lambda c, n: c.post(
                    "/v1/jobs",
                    json={"task": "caption", "images": [{"url": f"{drip}/{n}"}]},
                    headers=key,
                ),
                45,
                45,
            ),
            "3 20,000 image references": (
                lambda c, n: c.post("/v1/jobs", json=chat, headers=key),
                10,
                5,
            ),
            "4 JSONL of 200,000 lines": (
                lambda c, n: c.post("/v1/batches", content=jsonl, headers=jsonl_key),
                4,
                2,
            ),
            "6 nesting 100,000 deep": (
                lambda c, n: c.post("/v1/jobs", content=deep, headers=json_key),
                20,
                5,
            ),
            "7/8 cursors and NUL targets": (
                lambda c, n: c.get(
                    corpus.NUL_TARGETS[n % len(corpus.NUL_TARGETS)]
                    if n % 2
                    else f"/v1/jobs?cursor={corpus.BAD_CURSORS[n % 3]}",
                    headers=key,
                ),
                200,
                10,
            ),
            "9 NaN and Infinity": (
                lambda c, n: c.post("/v1/jobs", content=corpus.NON_FINITE[n % 5], headers=json_key),
                100,
                10,
            ),
            "10 anonymous 8 MB bodies": (
                lambda c, n: c.post(
                    "/v1/webhooks/secret/rotate",
                    content=b"[" * (8 << 20),
                    headers={"content-type": "application/json"},
                ),
                20,
                5,
            ),
        }
        figures = {name: _fire(url, *spec) for name, spec in attacks.items()}
    print("\nattack | cases | 5xx | worst /healthz ms")  # noqa: T201 - the figures
    for name, (cases, errors, worst_s) in figures.items():
        print(f"{name} | {cases} | {errors} | {worst_s * 1000:.0f}")  # noqa: T201
    assert all(errors == 0 for _, errors, _ in figures.values()), figures
