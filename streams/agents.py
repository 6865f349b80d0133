"""Faust agents: thin loops that batch events, hand them to ``RankWorker`` and ship what it returns.

``register`` puts the rank, catalogue and train agents on the app, each a loop over its topic around
a worker object: ``streams.rank_worker.RankWorker``, ``streams.catalogue.CatalogueWorker`` and
``streams.train_worker.TrainWorker``. The names below are re-exported for the modules and tests that
import them from here.
"""
from __future__ import annotations

import asyncio
import logging

from mode import CrashingSupervisor

from models.kernels import enable_compile_cache
from models.store import TRANSIENT_ERRORS
from streams.catalogue import CatalogueWorker
from streams.deadletters import DeadLetter, reason_code
from streams.lifecycle import EX_SOFTWARE, crash_agent, exit_unless_stopped_within, freeze_heap, run_retrying
from streams.rank_worker import RankWorker
from streams.timeshare import RankActivity, TimeBudget
from streams.train_worker import TrainWorker

__all__ = ["DeadLetter", "EX_SOFTWARE", "RankActivity", "RankWorker", "TimeBudget", "TrainWorker",
           "crash_agent", "exit_unless_stopped_within", "freeze_heap", "reason_code", "register",
           "run_retrying"]

log = logging.getLogger(__name__)


def register(app, settings, events_topic, recommendations_topic, feedback_topic, deadletter_topic,
             train_topic, catalogue_topic=None):
    worker = RankWorker(settings, recommendations_topic, feedback_topic, deadletter_topic, train_topic)
    trainer = TrainWorker(settings, activity=worker.activity if settings.role == "all" else None)

    if settings.role in ("all", "rank"):
        @app.agent(events_topic, concurrency=1, name="rank", supervisor_strategy=CrashingSupervisor)
        async def rank(stream):
            """Rank agent: micro-batches of events → recommendations, feedback, dead letters."""
            await worker.start()
            try:
                async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
                    await worker.handle(events)
            finally:
                await worker.drain()

        worker.on_failure = lambda exc: asyncio.ensure_future(crash_agent(rank, exc, settings.crash_exit_s))

        if catalogue_topic is not None:
            async def deadletter(value: bytes) -> None:
                await (await deadletter_topic.send(value=value))  # delivered before the batch is acked

            worker.catalogue = catalogue = CatalogueWorker(settings, deadletter)

            @app.agent(catalogue_topic, concurrency=1, name="catalogue")
            async def apply_catalogue(stream):
                """Catalogue agent: item add / update / hide → the store's per-scene catalogues."""
                async for events in stream.take_events(500, within=0.2):
                    await catalogue.handle(events)
    else:
        worker.metrics.ready = True  # nothing to warm up for ranking in a dedicated trainer

    if settings.train_enabled and settings.role in ("all", "train"):
        @app.task
        async def warm_trainer():
            """Load the latest snapshot and compile the optimiser step before examples arrive."""
            enable_compile_cache(settings.compile_cache_dir)
            try:
                await asyncio.get_running_loop().run_in_executor(trainer.executor, trainer._resume)
            except TRANSIENT_ERRORS as exc:  # the first training batch resumes instead
                log.warning("trainer could not resume yet (%s); will retry with the first examples", exc)

        @app.agent(train_topic, concurrency=1, name="train")
        async def train(stream):
            """Train agent: training examples → optax steps → parameter snapshots in Redis."""
            async for events in stream.take_events(16, within=1.0):
                await trainer.handle(events)

        @app.timer(interval=max(1.0, settings.snapshot_interval_s / 4))
        async def publish_snapshot():
            await trainer.tick()

    return worker, trainer
