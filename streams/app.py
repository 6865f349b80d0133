"""The Faust application: settings → app, topics, and the agents and web views registered on it.

Run a worker with ``attnflow worker`` (or ``faust -A streams.app worker``). One rank worker owns
some partitions of ``events``; add processes to the consumer group to scale out.
"""
from __future__ import annotations

import os

import faust
from faust.sensors.monitor import Monitor

from streams import eager, fetch
from streams.sensors import LeanMonitor
from streams.settings import Settings, use_event_loop
from streams.topics import RawSchema, TopicNames

settings = Settings.from_env()
use_event_loop(settings)
eager.install(settings.eager_delivery)
fetch.install(settings.fetch_min_bytes, settings.fetch_max_wait_ms)
names = TopicNames.of(settings)
faust_dir = os.path.join(os.environ.get("ATTNFLOW_STATE_DIR", ".attnflow"), "faust")
os.makedirs(faust_dir, exist_ok=True)

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store="memory://",
    # Faust keeps a small data folder per app id; keep it out of the working directory.
    datadir=os.path.join(faust_dir, "{conf.name}-data"),
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
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

events_topic = app.topic(names.events, schema=RawSchema(), partitions=settings.partitions)
recommendations_topic = app.topic(names.recommendations, key_type=bytes, value_type=bytes,
                                  partitions=settings.partitions)
feedback_topic = app.topic(names.feedback, key_type=bytes, value_type=bytes, partitions=settings.partitions)
deadletter_topic = app.topic(names.deadletter, key_type=bytes, value_type=bytes, partitions=1)
train_topic = app.topic(names.train, schema=RawSchema(), partitions=1)

from streams import agents, views  # noqa: E402  (after ``app`` exists: they register on it)

rank_worker, train_worker = agents.register(app, settings, events_topic, recommendations_topic, feedback_topic,
                                            deadletter_topic, train_topic)
views.register(app, rank_worker, train_worker)
