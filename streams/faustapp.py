"""The one ``faust.App`` configuration: the worker (``streams.app``) and the benchmark's baseline apps
build their apps here, so that a baseline differs from the worker only in what its agent does.

Also installs what must be in place before Faust makes its loop and consumer: the event loop
policy, eager delivery and the fetch limits.
"""
from __future__ import annotations

import os

import faust
from faust.sensors.monitor import Monitor

from streams import eager, fetch
from streams.kafka_clients import faust_credentials
from streams.sensors import LeanMonitor
from streams.settings import Settings, use_event_loop


def make_faust_app(settings: Settings, datadir_name: str = "{conf.name}-data",
                   offset_reset: str = "earliest") -> faust.App:
    """A Faust app for ``settings``; ``datadir_name`` is its data folder under
    ``$ATTNFLOW_STATE_DIR/faust``."""
    use_event_loop(settings)
    eager.install(settings.eager_delivery)
    fetch.install(settings.fetch_min_bytes, settings.fetch_max_wait_ms)
    faust_dir = os.path.join(os.environ.get("ATTNFLOW_STATE_DIR", ".attnflow"), "faust")
    os.makedirs(faust_dir, exist_ok=True)
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        # Faust keeps a small data folder per app id; keep it out of the working directory.
        datadir=os.path.join(faust_dir, datadir_name),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True,
        consumer_auto_offset_reset=offset_reset,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        # An exception escaping the agent must not ack (and later commit) the events it was handling.
        stream_ack_exceptions=False,
        stream_ack_cancelled_tasks=False,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        producer_linger_ms=5,
        # Outputs go out as per-partition record batches (streams/outbox.py): let a batch hold a whole
        # rank batch's records for one partition (the broker's default limit is 1 MiB).
        producer_max_batch_size=256 * 1024,
        producer_acks=-1,
        cython_optimizations=settings.faust_cython_optimizations,
        Monitor=Monitor if settings.faust_message_stats else LeanMonitor,
    )
