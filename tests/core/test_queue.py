"""The Celery app's broker: kombu's Redis transport, one client per channel, hiredis parsing."""

from __future__ import annotations

from typing import Any

from redis._parsers import _HiredisParser

from core.config import Settings
from core.queue import RedisTransport, make_celery


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


def test_tls_and_embedded_brokers_keep_kombus_own_transports(service_settings: Settings) -> None:
    tls = service_settings.model_copy(update={"broker_url": "rediss://cache.invalid:6380/0"})
    assert make_celery(tls).conf.broker_transport is None
    embedded = service_settings.model_copy(
        update={"broker_url": f"filesystem://{service_settings.data_dir / 'broker'}"}
    )
    assert make_celery(embedded).conf.broker_transport is None


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
