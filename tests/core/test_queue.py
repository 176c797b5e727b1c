"""The Celery app's broker: kombu's Redis transport, one client per channel, hiredis parsing;
the embedded broker's messages written whole before they can be read."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from redis._parsers import _HiredisParser

import core.queue as queue_module
from core.config import Settings
from core.queue import FilesystemTransport, RedisTransport, make_celery, message_name


def test_a_redis_broker_channel_reuses_one_client_until_its_pool_is_replaced(
    service_settings: Settings,
) -> None:
    app = make_celery(service_settings)
    try:
        with app.connection_for_write() as connection:
            assert isinstance(connection.transport, RedisTransport)
            channel: Any = connection.default_channel
            with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
                assert first is second and first.connection_pool is channel.pool
                assert first.ping()
            channel._disconnect_pools()  # as after a fork: the channel builds a new pool
            with channel.conn_or_acquire() as third:
                assert third is not first and third.connection_pool is channel.pool
                assert third.ping()
            with channel.conn_or_acquire(first) as given:  # a client passed in is used as is
                assert given is first
    finally:
        app.close()


def test_a_tls_broker_keeps_kombus_own_transport(service_settings: Settings) -> None:
    tls = service_settings.model_copy(update={"broker_url": "rediss://cache.invalid:6380/0"})
    assert make_celery(tls).conf.broker_transport is None


@pytest.fixture
def embedded_channel(service_settings: Settings, tmp_path: Path) -> Iterator[Any]:
    embedded = service_settings.model_copy(update={"broker_url": f"filesystem://{tmp_path}"})
    app = make_celery(embedded)
    try:
        with app.connection_for_write() as connection:
            assert isinstance(connection.transport, FilesystemTransport)
            yield connection.default_channel
    finally:
        app.close()


def reading_while_writing(read: Callable[[], Any], seen: list[str]) -> Callable[[Any], str]:
    """A stand-in for the publisher's JSON encoder: it runs while the publisher writes its
    message, tries `read` (a consumer's read of the queue) and notes what it found."""

    def dumps(payload: Any) -> str:
        try:
            read()
            seen.append("read")
        except ValueError:
            seen.append("undecodable")
        except Empty:
            seen.append("empty")
        return json.dumps(payload)

    return dumps


def test_an_embedded_message_cannot_be_read_before_it_is_written_whole(
    embedded_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    read = partial(embedded_channel._get, "jobs")
    monkeypatch.setattr(queue_module, "dumps", reading_while_writing(read, seen))
    embedded_channel._put("jobs", {"body": "job_1"})
    assert seen == ["empty"]
    assert embedded_channel._get("jobs") == {"body": "job_1"}
    with pytest.raises(Empty):
        embedded_channel._get("jobs")


def test_kombus_own_filesystem_channel_hands_out_a_message_being_written(
    embedded_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Why the channel above exists (kombu issue #1551): if kombu's own writer no longer lets
    # a consumer take its file before the message is in it, this fails and the channel above
    # can go.
    import kombu.transport.filesystem as kombu_filesystem

    seen: list[str] = []
    read = partial(kombu_filesystem.Channel._get, embedded_channel, "jobs")
    monkeypatch.setattr(kombu_filesystem, "dumps", reading_while_writing(read, seen))
    kombu_filesystem.Channel._put(embedded_channel, "jobs", {"body": "job_1"})
    assert seen == ["undecodable"]  # the file was there, empty, and is now gone
    with pytest.raises(Empty):
        embedded_channel._get("jobs")


def test_an_undecodable_embedded_message_is_dropped_not_fatal(
    embedded_channel: Any, caplog: pytest.LogCaptureFixture
) -> None:
    folder = Path(embedded_channel.data_folder_in)
    (folder / message_name("jobs", 0)).write_bytes(b"")  # older than any message put now
    embedded_channel._put("jobs", {"body": "job_2"})
    with caplog.at_level(logging.WARNING, logger="core.queue"):
        assert embedded_channel._get("jobs") == {"body": "job_2"}
    assert "dropped an undecodable message of queue jobs" in caplog.text
    assert not [name for name in os.listdir(folder) if name.endswith(".jobs.msg")]


def test_embedded_messages_are_taken_in_the_order_they_were_put(
    embedded_channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 9,999 and 10,000 ms: unpadded, "10000_..." sorts first and the queue would not be FIFO.
    times = iter([9_999, 10_000, 10_001])
    monkeypatch.setattr(queue_module, "_now_ms", lambda: next(times))
    for body in ("first", "second", "third"):
        embedded_channel._put("jobs", {"body": body})
    taken = [embedded_channel._get("jobs")["body"] for _ in range(3)]
    assert taken == ["first", "second", "third"]


def test_a_message_named_the_old_way_is_still_delivered(embedded_channel: Any) -> None:
    # A message left by a version that named files by unpadded uptime (kombu's names).
    folder = Path(embedded_channel.data_folder_in)
    old_name = "291510_00000000-0000-0000-0000-000000000000.jobs.msg"
    (folder / old_name).write_text(json.dumps({"body": "left before the upgrade"}))
    embedded_channel._put("jobs", {"body": "put after"})
    taken = [embedded_channel._get("jobs")["body"] for _ in range(2)]
    assert taken == ["put after", "left before the upgrade"]


def test_broker_replies_are_parsed_by_hiredis(service_settings: Settings) -> None:
    app = make_celery(service_settings)
    try:
        with app.connection_for_write() as connection:
            channel: Any = connection.default_channel
            with channel.conn_or_acquire() as client:
                assert client.ping()
                pooled = client.connection_pool.get_connection()
                try:
                    assert isinstance(pooled._parser, _HiredisParser)
                finally:
                    client.connection_pool.release(pooled)
    finally:
        app.close()
