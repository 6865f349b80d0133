"""Faust agents: thin loops that batch events, hand them to ``RankWorker`` and ship what it returns.

``RankWorker`` is the glue: decode and validate, run the engine off the event loop, send outputs,
then commit state. The order matters: outputs are delivered before the fenced state write, and
Kafka offsets are committed (by Faust, after the loop body acks) only after both, so a crash at
any point replays events whose effects are either absent or fenced off.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from models.engine import BatchResult, Engine, SourcedEvent
from models.kernels import enable_compile_cache
from models.store import TRANSIENT_ERRORS, RedisStore
from streams.codec import (BadEvent, decode_event, encode_deadletter, encode_event, encode_feedback,
                           encode_recommendation)
from streams.metrics import PipelineMetrics

log = logging.getLogger(__name__)


def reason_code(reason: str) -> str:
    """A short label for a dead-letter reason (the metric label; the full reason goes in the record).

    >>> reason_code("field 'ts' must be a finite number of seconds, got 'x'")
    'wrong_type'
    """
    for prefix, code in (("not valid JSON", "invalid_json"), ("event must be", "not_an_object"),
                         ("missing required", "missing_field"), ("unknown event type", "unknown_type"),
                         ("unknown scene", "unknown_scene"), ("stored state", "state_unreadable"),
                         ("processing error", "processing_error")):
        if reason.startswith(prefix):
            return code
    return "wrong_type" if "must be" in reason else "bad_value"


@dataclass(slots=True)
class DeadLetter:
    raw: bytes
    reason: str
    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, sourced: SourcedEvent, reason: str, topic: str) -> "DeadLetter":
        return cls(encode_event(sourced.event), reason, topic, sourced.partition, sourced.offset)


class RankWorker:
    """Everything the rank agent does per micro-batch, without any ``async for`` in it."""

    def __init__(self, settings, recommendations, feedback, deadletter, store=None):
        self.settings = settings
        self.cfg = settings.engine_config()
        self.outputs = (recommendations, feedback, deadletter)
        self.store = store
        self.engine: Engine | None = None
        self.metrics = PipelineMetrics(k=self.cfg.k)
        # One thread: batches are sequential anyway, and JAX/Redis work must not block the loop.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnflow-engine")

    async def start(self) -> None:
        if self.engine is not None:
            return
        loop = asyncio.get_running_loop()
        enable_compile_cache(self.settings.compile_cache_dir)
        self.store = self.store or RedisStore(self.settings.redis_url, self.settings.redis_prefix)
        self.engine = Engine(self.cfg, self.store)
        seconds = await loop.run_in_executor(self.executor, self.engine.warmup)
        log.info("rank worker ready: kernels compiled in %.1fs (k=%d, history=%d, dim=%d, scenes=%s)",
                 seconds, self.cfg.k, self.cfg.history, self.cfg.dim, ",".join(self.cfg.scenes))
        self.metrics.ready = True

    async def handle(self, events) -> None:
        """Process one micro-batch of Faust events end to end."""
        started = time.perf_counter()
        batch, produced = [], []
        dead: list[DeadLetter] = []
        for event in events:
            message = event.message
            try:
                decoded = decode_event(event.value, self.cfg.scenes)
            except BadEvent as exc:
                dead.append(DeadLetter(event.value, str(exc), message.topic, message.partition, message.offset))
                continue
            batch.append(SourcedEvent(decoded, message.partition, message.offset))
            produced.append(message.timestamp)
        self.metrics.events += len(events)
        await asyncio.gather(*await self._send_deadletters(dead))
        if batch:
            await self._apply(batch, events[0].message.topic)
        now = time.time()
        for ts in produced:
            if ts:
                self.metrics.latency_seconds.add(now - ts)
        self.metrics.batches += 1
        self.metrics.batch_sizes.add(len(events))
        self.metrics.batch_seconds.add(time.perf_counter() - started)

    async def _apply(self, batch: list[SourcedEvent], topic: str) -> None:
        """process → send → commit; an unexpected error splits the batch until the poison event is alone."""
        try:
            result = await self._run(self.engine.process, batch)
        except Exception as exc:  # noqa: BLE001 -- anything but a store outage is a per-event problem
            if len(batch) == 1:
                s = batch[0]
                log.exception("event at %s[%d]@%d failed processing", topic, s.partition, s.offset)
                reason = f"processing error: {type(exc).__name__}: {exc}"
                await asyncio.gather(*await self._send_deadletters([DeadLetter.of(s, reason, topic)]))
                return
            mid = len(batch) // 2
            await self._apply(batch[:mid], topic)
            await self._apply(batch[mid:], topic)
            return
        await self._send_outputs(result, topic)
        written = await self._run(self.engine.commit, result)
        self.metrics.fenced_skips += written.count(False)
        self.metrics.replayed += result.replayed
        self.metrics.kernel_seconds.add(result.kernel_s)
        self.metrics.model_version = self.engine.model_version
        self.metrics.n_items = self.engine.n_items

    async def _run(self, fn, *args):
        """Run engine work in the executor, retrying store outages with backoff until they pass."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            try:
                return await loop.run_in_executor(self.executor, fn, *args)
            except TRANSIENT_ERRORS as exc:
                self.metrics.retries += 1
                log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _send_outputs(self, result: BatchResult, topic: str) -> None:
        recommendations, feedback, _ = self.outputs
        emitted = time.time()
        pending = []
        for rec in result.recommendations:
            pending.append(await recommendations.send(
                key=rec.user_id.encode(), value=encode_recommendation(rec, emitted), force=True))
        for fb in result.feedback:
            pending.append(await feedback.send(key=fb.user_id.encode(), value=encode_feedback(fb), force=True))
            self.metrics.observe_feedback(fb.hit, fb.rank, fb.list_age_s is not None)
        pending += await self._send_deadletters([DeadLetter.of(r.event, r.reason, topic) for r in result.rejected])
        await asyncio.gather(*pending)
        self.metrics.recommendations += len(result.recommendations)

    async def _send_deadletters(self, dead: list[DeadLetter]) -> list:
        """Queue dead-letter records; returns their delivery futures."""
        deadletter = self.outputs[2]
        futures = []
        for d in dead:
            log.warning("dead letter %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.reason)
            self.metrics.deadletters[reason_code(d.reason)] += 1
            futures.append(await deadletter.send(
                key=None, value=encode_deadletter(d.raw, d.reason, d.topic, d.partition, d.offset), force=True))
        return futures


def register(app, settings, events_topic, recommendations_topic, feedback_topic, deadletter_topic) -> RankWorker:
    worker = RankWorker(settings, recommendations_topic, feedback_topic, deadletter_topic)

    @app.agent(events_topic, concurrency=1, name="rank")
    async def rank(stream):
        """Rank agent: micro-batches of events → recommendations, feedback, dead letters."""
        await worker.start()
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            await worker.handle(events)

    return worker
