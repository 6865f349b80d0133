"""The Faust configuration the baseline apps share with ``streams.app``, and their ``/stats`` page.

Baselines must differ from the pipeline only in what the agent does, so the app is built with the
same broker, consumer-group timing, serializers and producer settings as ``streams/app.py``.
"""
from __future__ import annotations

import os
import time

import faust

from streams import eager, fetch
from streams.settings import Settings, use_event_loop
from streams.topics import TopicNames


class Counters:
    """What the benchmark polls: events consumed, batches, whether the agent runs, and when the first
    and the latest batch were done (so a short phase is timed exactly, not to the polling interval)."""

    def __init__(self):
        self.events = 0
        self.batches = 0
        self.recommendations = 0
        self.ready = False
        self.started = time.time()
        self.first_ts = self.last_ts = None
        self.first_events = 0

    def done(self, n: int, batches: int = 1) -> None:
        self.events += n
        self.batches += batches
        self.last_ts = time.time()
        if self.first_ts is None:
            self.first_ts, self.first_events = self.last_ts, self.events

    def snapshot(self) -> dict:
        return {"events": self.events, "batches": self.batches, "recommendations": self.recommendations,
                "ready": self.ready, "uptime_s": time.time() - self.started, "first_ts": self.first_ts,
                "first_events": self.first_events, "last_ts": self.last_ts}


def make_app(kind: str):
    """(app, settings, events topic, recommendations topic, counters) for a baseline worker."""
    settings = Settings.from_env()
    use_event_loop(settings)  # the same loop as the pipeline
    eager.install(settings.eager_delivery)  # as the pipeline does; the noop_faust variants run stock Faust
    fetch.install(settings.fetch_min_bytes, settings.fetch_max_wait_ms)
    names = TopicNames.of(settings)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=os.path.join(os.environ.get("ATTNFLOW_STATE_DIR", ".attnflow"), "faust", f"{kind}-{{conf.name}}-data"),
        key_serializer="raw", value_serializer="raw",
        topic_partitions=settings.partitions, topic_replication_factor=settings.replication_factor,
        topic_disable_leader=True, consumer_auto_offset_reset=os.environ.get("BENCH_OFFSET_RESET", "earliest"),
        broker_session_timeout=settings.session_timeout_s, broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        stream_ack_exceptions=False, stream_ack_cancelled_tasks=False,
        web_host=settings.web_host, web_bind=settings.web_host, web_port=settings.web_port,
        producer_linger_ms=5, producer_acks=-1,
    )
    events = app.topic(names.events, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    recommendations = app.topic(names.recommendations, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    counters = Counters()

    @app.page("/stats")
    async def stats(web, request):
        return web.json(counters.snapshot())

    @app.page("/ready")
    async def ready(web, request):
        return web.json({"ready": counters.ready}, status=200 if counters.ready else 503)

    return app, settings, events, recommendations, counters
