"""The autoscaling gauges when the database cannot answer: the scrape still succeeds."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from core.config import Settings
from core.db import make_engine, make_session_factory
from core.queue_stats import QueueStatsCollector


def test_a_database_outage_reports_stats_down_instead_of_failing_the_scrape() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing?connect_timeout=2")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        QueueStatsCollector(
            sessions=make_session_factory(engine),
            settings=Settings(_env_file=None),  # type: ignore[call-arg]
        )
    )
    text = generate_latest(registry).decode()
    engine.dispose()
    assert "internvl_jobs_queue_stats_up 0.0" in text
    assert "internvl_jobs_queue_depth" not in text
