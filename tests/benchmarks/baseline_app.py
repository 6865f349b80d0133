"""The Faust configuration the baseline apps share with ``streams.app``, and their ``/stats`` page.

Baselines must differ from the pipeline only in what the agent does, so the app is built by the
worker's own ``streams.faustapp.make_faust_app``: the same broker, consumer-group timing,
serializers, producer settings and Faust options; a variant that measures stock Faust says so in
its settings (``tests.benchmarks.bench_pipeline.VARIANT_SETTINGS``).
"""
from __future__ import annotations

import os
import time

from streams.faustapp import make_faust_app
from streams.settings import Settings
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
    names = TopicNames.of(settings)
    app = make_faust_app(settings, datadir_name=f"{kind}-{{conf.name}}-data",
                         offset_reset=os.environ.get("BENCH_OFFSET_RESET", "earliest"))
    events = app.topic(names.events, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    recommendations = app.topic(names.recommendations, key_type=bytes, value_type=bytes,
                                partitions=settings.partitions)
    counters = Counters()

    @app.page("/stats")
    async def stats(web, request):
        return web.json(counters.snapshot())

    @app.page("/ready")
    async def ready(web, request):
        return web.json({"ready": counters.ready}, status=200 if counters.ready else 503)

    return app, settings, events, recommendations, counters
