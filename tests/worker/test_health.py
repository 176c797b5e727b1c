"""A worker's probes over HTTP: readiness, last batch, and the stuck-generation watchdog."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.storage import ObjectStorage
from tests.support.worker import photo, queue_job
from worker.health import STUCK_EXIT_CODE, WorkerHealth, probe_port


class HungEngine:
    """The real engine, except that its model work hangs until released (a wedged GPU kernel)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, jobs: Any) -> Any:
        self.release.wait(120)
        return self._engine.generate(jobs)

    def prompt_embeddings(self, input_ids: Any, jobs: Any) -> Any:
        # The first model work of a continuous-batching step.
        self.release.wait(120)
        return self._engine.prompt_embeddings(input_ids, jobs)


@pytest.fixture
def hung_runtime(service_settings: Any, sessions: Any, storage: ObjectStorage, engine: Any):  # type: ignore[no-untyped-def]
    from worker.runtime import WorkerRuntime

    hung = HungEngine(engine)
    runtime = WorkerRuntime(
        settings=service_settings,
        spec=service_settings.default_model,
        sessions=sessions,
        storage=storage,
        engine=hung,  # type: ignore[arg-type]
        worker_id="cpu0.tiny@test",
    )
    runtime.batcher.start()
    yield runtime, hung
    hung.release.set()
    runtime.batcher.stop()


@pytest.fixture
def probed(hung_runtime: Any) -> Iterator[tuple[Any, Any, WorkerHealth, str, list[int]]]:
    from core.probe_server import ProbeServer

    runtime, hung = hung_runtime
    exits: list[int] = []
    health = WorkerHealth(
        worker_id=runtime.worker_id,
        model="tiny",
        stuck_after_s=0.5,
        exit_when_stuck=True,
        exit_process=exits.append,
    )
    health.watch(runtime, watchdog_interval_s=None)  # the test starts the watchdog itself
    health.state = "ready"
    server = ProbeServer(
        host="127.0.0.1", port=0, probes=health.probes(), registries=(health.registry(),)
    ).start()
    yield runtime, hung, health, f"http://127.0.0.1:{server.port}", exits
    health.stop_watchdog()
    server.stop()


def wait_for(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_ready_worker_reports_model_loaded_and_last_batch(
    probed: Any, sessions: Any, storage: ObjectStorage
) -> None:
    runtime, hung, _health, base, _exits = probed
    hung.release.set()
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["status"] == "ok" and ready["model_loaded"] and ready["last_batch_at"] is None
    job = queue_job(sessions, storage, runtime.spec, [photo()], params={"max_new_tokens": 3})
    assert runtime.run_job(job.id) == "succeeded"
    after = httpx.get(f"{base}/readyz")
    assert after.status_code == 200
    assert after.json()["last_batch_at"] is not None and after.json()["jobs_done"] == 1
    text = httpx.get(f"{base}/metrics").text
    assert 'internvl_jobs_batch_size_count{model="tiny"}' in text
    assert 'internvl_jobs_worker_jobs_done_total{model="tiny",worker="cpu0.tiny@test"} 1.0' in text
    # continuous batching: 3 tokens are a step that prefills and decodes, then one more step
    labels = '{model="tiny",worker="cpu0.tiny@test"}'
    assert f"internvl_jobs_worker_steps_total{labels} 2.0" in text
    assert f"internvl_jobs_worker_row_steps_total{labels} 2.0" in text
    assert f"internvl_jobs_worker_queue_waits_total{labels} 1.0" in text


def test_a_stuck_generation_fails_liveness_and_ends_the_process(
    probed: Any, sessions: Any, storage: ObjectStorage
) -> None:
    runtime, hung, health, base, exits = probed
    job = queue_job(sessions, storage, runtime.spec, [photo()], params={"max_new_tokens": 3})
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(runtime.run_job(job.id)))
    worker.start()
    wait_for(lambda: httpx.get(f"{base}/livez").status_code == 503)
    body = httpx.get(f"{base}/livez").json()
    assert body["stuck"] is True and body["running_batch_s"] > 0.5
    assert httpx.get(f"{base}/readyz").status_code == 503
    assert "internvl_jobs_worker_stuck{" in httpx.get(f"{base}/metrics").text
    health.start_watchdog(interval_s=0.05)
    wait_for(lambda: exits == [STUCK_EXIT_CODE])
    hung.release.set()  # the kernel comes back: the worker is healthy again
    worker.join(60)
    assert outcome == ["succeeded"]
    assert httpx.get(f"{base}/livez").status_code == 200


def test_probe_ports_follow_device_and_model_position() -> None:
    assert probe_port(9310, device="gpu0", model_position=0) == 9310
    assert probe_port(9310, device="gpu3", model_position=0) == 9313
    assert probe_port(9310, device="gpu2-3", model_position=1) == 9412
    assert probe_port(0, device="gpu1", model_position=0) == 0


def test_the_prepare_cache_is_reported_in_the_heartbeat_and_the_metrics(
    probed: Any, sessions: Any, storage: ObjectStorage
) -> None:
    from worker.process import heartbeat_stats

    runtime, hung, _health, base, _exits = probed
    hung.release.set()
    before = heartbeat_stats(runtime)["prepare_cache"]
    image = photo(57, size=(640, 480))
    for question in ("What is shown?", "What colour is it?"):
        job = queue_job(
            sessions, storage, runtime.spec, [image], task="vqa", question=question,
            params={"max_new_tokens": 3},
        )  # fmt: skip
        assert runtime.run_job(job.id) == "succeeded"
    after = heartbeat_stats(runtime)["prepare_cache"]
    # The first job prepared the photo and kept it; the second found it.
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 1)
    assert after["entries"] == before["entries"] + 1 and after["bytes"] > before["bytes"]
    assert after["max_bytes"] == runtime.spec.prepare_cache_mb * 2**20
    scraped = {
        sample.name: sample.value
        for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
        for sample in family.samples
        if sample.name.startswith("internvl_jobs_prepare_cache")
    }
    assert scraped == {
        "internvl_jobs_prepare_cache_hits_total": after["hits"],
        "internvl_jobs_prepare_cache_misses_total": after["misses"],
        "internvl_jobs_prepare_cache_bytes": after["bytes"],
        "internvl_jobs_prepare_cache_max_bytes": after["max_bytes"],
    }


def test_a_worker_without_its_model_yet_reports_no_jobs_done() -> None:
    from worker.process import heartbeat_stats

    assert heartbeat_stats(None) == {"jobs_done": 0}
