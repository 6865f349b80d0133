"""Faust agents: thin loops that batch events, hand them to ``RankWorker`` and ship what it returns.

``RankWorker`` is the glue: decode and validate, run the engine off the event loop, send outputs,
then commit state. The order matters: outputs are delivered before the fenced state write, and a
batch's events are acked (so Faust may commit their offsets) only after both, so a crash at any
point replays events whose effects are either absent or fenced off.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mode import CrashingSupervisor

from models.engine import BatchResult, Engine, SourcedEvent
from models.kernels import enable_compile_cache
from models.params import from_bytes, mismatch, to_bytes
from models.training import Trainer, examples_from_bytes, examples_to_messages
from models.store import FATAL_STORE_ERRORS, TRANSIENT_ERRORS
from streams.codec import (BadEvent, decode_events, encode_deadletter, encode_event, encode_feedback,
                           encode_recommendation)
from streams.metrics import PipelineMetrics, TrainerMetrics
from streams.catalogue import CatalogueWorker
from streams.market import market_for
from streams.outbox import Outbox
from streams.settings import restore_root_log_level
from streams.threadnames import name_worker_threads, set_native_name

log = logging.getLogger(__name__)


def reason_code(reason: str) -> str:
    """A short label for a dead-letter reason (the metric label; the full reason goes in the record).

    >>> reason_code("field 'ts' must be a finite number of seconds, got 'x'")
    'wrong_type'
    """
    for prefix, code in (("not valid JSON", "invalid_json"), ("event must be", "not_an_object"),
                         ("timestamp out of range", "bad_timestamp"),
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
    index: int | None = None  # the event's place in its message; None: the record is the whole message

    @classmethod
    def of(cls, sourced: SourcedEvent, reason: str, topic: str) -> "DeadLetter":
        return cls(encode_event(sourced.event), reason, topic, sourced.partition, sourced.offset, sourced.index)


@dataclass(slots=True)
class _InFlight:
    """One micro-batch between ``RankWorker.handle`` and its acks."""

    events: list
    batch: list[SourcedEvent]
    dead: list[DeadLetter]
    produced: list[float]
    started: float
    processed: asyncio.Future  # done once the engine has finished with the batch
    queued: asyncio.Future     # done once its outputs are queued on the producer
    task: asyncio.Task | None = None
    taken_sum: float = 0.0     # sum over its events of when they were taken (for the ``queued`` stage)
    sealed: bool = False       # the engine has it: no more events may join

    def absorb(self, events: list, batch: list[SourcedEvent], dead: list[DeadLetter], produced: list[float],
               started: float) -> None:
        """Later events, taken at ``started`` (``perf_counter``), join a batch still waiting for the engine."""
        self.events += events
        self.batch += batch
        self.dead += dead
        self.produced += produced
        self.taken_sum += started * len(events)


class RankWorker:
    """Everything the rank agent does per micro-batch, without any ``async for`` in it.

    Batches are pipelined: while batch N's outputs are delivered and its states written, the engine
    already ranks batch N+1 on top of N's uncommitted states (``Engine`` keeps them until
    ``commit``). Every stage still runs in batch order, and a batch's events are acked, so that Faust
    may commit their offsets, only after its outputs were delivered and its states written. Batch
    N+1's outputs may leave while N's states are still being written; if N then fails, N+1 is
    neither written nor acked, and both are redelivered (outputs are at least once, state exactly once).
    With the default depth of 3, the agent also takes and decodes batch N+2 meanwhile;
    ``ATTNFLOW_PIPELINE_DEPTH=1`` processes one batch at a time.

    Batches are sized by the engine, not by the take window alone (dynamic batching): events taken
    while the newest batch still waits for the engine join that batch, up to ``batch_size``. The
    engine then ranks everything that arrived while it was busy in one call, instead of working
    through a queue of small batches, each paying the per-call cost and waiting for the one before.
    """

    def __init__(self, settings, recommendations, feedback, deadletter, train=None, store=None):
        self.settings = settings
        self.cfg = settings.engine_config()
        self.outputs = (recommendations, feedback, deadletter)
        self.train_topic = train if settings.train_enabled else None
        self.store = store
        self.outbox = Outbox(lambda: recommendations.app.producer._ensure_producer())
        self.engine: Engine | None = None
        self.metrics = PipelineMetrics(k=self.cfg.k)
        self.depth = settings.pipeline_depth
        self.merge = settings.batch_merge
        self._inflight: deque[_InFlight] = deque()
        self.activity = RankActivity()
        self.on_failure = None  # called with the exception of the first batch that fails
        self.catalogue: CatalogueWorker | None = None  # the catalogue agent beside this rank agent (register)
        self._failed = False
        # One thread each: engine calls, and state writes, must run in batch order, and JAX/Redis work
        # must not block the loop. Writes mostly wait on Redis (and its fsync): on their own thread
        # they overlap with ranking the next batch.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnflow-engine",
                                           initializer=set_native_name, initargs=("af-engine",))
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnflow-write",
                                         initializer=set_native_name, initargs=("af-write",))

    async def start(self) -> None:
        if self.engine is not None:
            return
        loop = asyncio.get_running_loop()
        enable_compile_cache(self.settings.compile_cache_dir)
        self.store = self.store or self.settings.store()
        self.engine = Engine(self.cfg, self.store, emit_examples=self.train_topic is not None,
                             market=market_for(self.settings))
        seconds = await loop.run_in_executor(self.executor, self.engine.warmup)
        outputs = [t.get_topic_name() for t in self.outputs] + ([self.train_topic.get_topic_name()]
                                                                if self.train_topic is not None else [])
        try:
            await asyncio.wait_for(self.outbox.prepare(outputs), timeout=10.0)
        except Exception as exc:  # noqa: BLE001 -- only an optimisation: the first delivery fetches what it needs
            log.warning("could not prepare the output topics' metadata (%s: %s); the first batch will",
                        type(exc).__name__, exc)
        log.info("rank worker ready: kernels compiled and run over the catalogue in %.1fs (k=%d, history=%d, dim=%d, scenes=%s, loop=%s, "
                 "pipeline depth %d)", seconds, self.cfg.k, self.cfg.history, self.cfg.dim,
                 ",".join(self.cfg.scenes), type(loop).__module__.split(".")[0], self.depth)
        freeze_heap()
        restore_root_log_level(self.settings.log_level)
        self.metrics.ready = True

    async def handle(self, events) -> None:
        """Take one micro-batch of Faust events; returns once fewer than ``depth`` batches are in flight.

        The events stay referenced (Faust's own ack after the loop body does not make them
        committable) until :meth:`_complete` acks them. A take of batched messages that holds more than
        ``batch_size`` events is cut into batches of at most that many (a message is never cut), so that
        batches still overlap in the pipeline and are acked as they finish.
        """
        started, taken = time.perf_counter(), time.time()
        limit = self.settings.batch_size
        groups = [([], [], [], [])]  # (Faust events, sourced events, dead letters, produce times) per batch
        scenes, max_future_s = self.cfg.scenes, self.settings.max_future_s
        for event in events:
            messages, batch, dead, produced = groups[-1]
            before = (len(batch), len(dead), len(produced))
            messages.append(event)
            message = event.message
            message.incref()
            try:
                # ts is bounded by the record's own timestamp, not by this worker's clock: a replay later
                # on decides the same
                decoded, bad = decode_events(event.value, scenes, message.timestamp, max_future_s)
            except BadEvent as exc:
                dead.append(DeadLetter(event.value, str(exc), message.topic, message.partition, message.offset))
                continue
            except Exception as exc:  # a decoder bug must cost one message, not the worker
                log.exception("undecodable message at %s[%d]@%d", message.topic, message.partition, message.offset)
                dead.append(DeadLetter(event.value, f"undecodable: {type(exc).__name__}: {exc}", message.topic,
                                       message.partition, message.offset))
                continue
            # a batched message: each event keeps its own fence (partition, offset, index), and a bad
            # one goes to the dead letters alone while its neighbours apply
            for index, raw, reason in bad:
                dead.append(DeadLetter(raw, reason, message.topic, message.partition, message.offset, index))
            if len(decoded) == 1:
                batch.append(SourcedEvent(decoded[0][1], message.partition, message.offset, decoded[0][0]))
                produced.append(message.timestamp)
                continue
            batch += [SourcedEvent(e, message.partition, message.offset, i) for i, e in decoded]
            produced += [message.timestamp] * len(decoded)
            if len(batch) + len(dead) > limit and len(messages) > 1:  # this message starts the next batch
                b, d, t = before
                groups.append(([messages.pop()], batch[b:], dead[d:], produced[t:]))
                del batch[b:], dead[d:], produced[t:]
        self.metrics.stages.add_each("to_agent", [taken - ts for group in groups for ts in group[3] if ts])
        for group in groups:
            if group[0]:
                await self._enqueue(*group, started)

    async def _enqueue(self, events: list, batch: list[SourcedEvent], dead: list[DeadLetter], produced: list[float],
                       started: float) -> None:
        """One batch into the pipeline: joins the newest batch still waiting for the engine when both fit
        in ``batch_size`` events, else starts its own; waits while ``depth`` batches are in flight."""
        newest = self._inflight[-1] if self._inflight else None
        if (self.merge and newest is not None and not newest.sealed
                and len(newest.batch) + len(newest.dead) + len(batch) + len(dead) <= self.settings.batch_size):
            newest.absorb(events, batch, dead, produced, started)
            return
        loop = asyncio.get_running_loop()
        item = _InFlight(events, batch, dead, produced, started, loop.create_future(), loop.create_future(),
                         taken_sum=started * len(events))
        self.activity.enter()
        item.processed.add_done_callback(lambda _: self.activity.leave())
        item.task = loop.create_task(self._complete(item, newest, events[0].message.topic))
        # a task cancelled before it ran never resolves its futures: resolve them, so the batch leaves
        item.task.add_done_callback(lambda _: _fail(asyncio.CancelledError(), item.processed, item.queued))
        item.task.add_done_callback(self._report_failure)
        self._inflight.append(item)
        while len(self._inflight) >= self.depth:
            oldest = self._inflight.popleft()
            try:
                await asyncio.shield(oldest.task)
            except asyncio.CancelledError:
                raise  # shutting down: batches in flight finish and ack; Faust waits for the acks
            except Exception:
                await self._abandon()
                raise

    def _report_failure(self, task: asyncio.Task) -> None:
        """A failed batch surfaces in ``handle`` once later batches push it out of the pipeline; when
        no more events come, that is never, and its events stay unacked while the worker looks alive.
        ``on_failure`` (the agent's crash, see ``register``) hears of it at once instead."""
        exc = None if task.cancelled() else task.exception()
        if exc is None or self._failed:
            return  # batches after a failed one fail with it: the first one tells
        self._failed = True
        log.error("a batch failed (%s: %s): the worker stops, so that it restarts and its events are redelivered",
                  type(exc).__name__, exc)
        if self.on_failure is not None:
            self.on_failure(exc)

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait for the batches in flight (the agent is stopping)."""
        tasks = [item.task for item in self._inflight]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def _abandon(self) -> None:
        """A batch failed after processing: later batches built on its uncommitted states, so none of
        them is delivered or committed; their events stay unacked and come back on redelivery."""
        tasks = [item.task for item in self._inflight]
        self._inflight.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self.executor, self.engine.discard_pending)

    async def _complete(self, item: _InFlight, previous: _InFlight | None, topic: str) -> None:
        """Engine, then delivery, then the fenced write, then acks; each stage in batch order.

        A batch's outputs wait only until the previous batch's outputs are queued (the producer
        keeps each partition's records in order), not until its state write: the write, and its
        fsync, stay off the path to the user. Writes and acks still wait for the previous batch.
        """
        stages = self.metrics.stages
        try:
            if previous is not None:
                await previous.processed
            item.sealed = True  # from here on the batch is the engine's; later events start a new one
            n = len(item.events)
            engine_started = time.perf_counter()
            stages.add("queued", engine_started - item.taken_sum / n, n)
            results, dead = await self._process(item.batch, topic)
        except BaseException as exc:
            item.sealed = True  # a failed batch takes no more events: they start a new one, which fails too
            _fail(exc, item.processed, item.queued)
            raise
        item.processed.set_result(None)
        processed = time.perf_counter()
        stages.add("engine", processed - engine_started, n)
        try:
            if previous is not None:
                await previous.queued  # outputs leave in batch order; a failed predecessor fails this one too
            pending = await self._queue_outputs(results, item.dead + dead, topic)
        except BaseException as exc:
            _fail(exc, item.queued)
            raise
        item.queued.set_result(None)
        await asyncio.gather(*pending)
        delivered = time.perf_counter()
        stages.add("deliver", delivered - processed, n)
        if previous is not None:
            await previous.task  # written and acked in batch order; a failed predecessor fails this one too
        for result in results:
            written = await self._run(self.engine.commit, result, executor=self.writer)
            self.metrics.fenced_skips += written.count(False)
            self.metrics.replayed += result.replayed
            self.metrics.migrated += result.migrated
            self.metrics.kernel_seconds.add(result.kernel_s)
            self.metrics.recommendations += len(result.recommendations)
        stages.add("write", time.perf_counter() - delivered, n)
        for event in item.events:
            event.ack()
        # counted once done, so a rate over it is end to end; events, not messages (a message may hold many)
        self.metrics.events += len(item.batch) + len(item.dead)
        now = time.time()
        self.metrics.latency_seconds.extend([now - ts for ts in item.produced if ts])
        self.metrics.model_version = self.engine.model_version
        self.metrics.n_items = self.engine.n_items
        self.metrics.batches += 1
        if self.metrics.batches == 1:
            freeze_heap()  # what the first batch set up (consumer, producer, buffers) lives as long, too
            name_worker_threads()  # all of them run by now
        self.metrics.batch_sizes.add(len(item.events))
        self.metrics.batch_seconds.add(time.perf_counter() - item.started)

    async def _process(self, batch: list[SourcedEvent], topic: str) -> tuple[list[BatchResult], list[DeadLetter]]:
        """Run the engine; an unexpected error splits the batch until the poison event is alone."""
        if not batch:
            return [], []
        limit = self.cfg.max_batch
        if len(batch) > limit:  # batched messages: the kernels are compiled for up to max_batch events a call
            results, dead = [], []
            for start in range(0, len(batch), limit):
                part, part_dead = await self._process(batch[start:start + limit], topic)
                results += part
                dead += part_dead
            return results, dead
        try:
            return [await self._run(self.engine.process, batch)], []
        except FATAL_STORE_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 -- anything but a store outage is a per-event problem
            if len(batch) == 1:
                s = batch[0]
                log.exception("event at %s[%d]@%d failed processing", topic, s.partition, s.offset)
                return [], [DeadLetter.of(s, f"processing error: {type(exc).__name__}: {exc}", topic)]
            mid = len(batch) // 2
            first, first_dead = await self._process(batch[:mid], topic)
            second, second_dead = await self._process(batch[mid:], topic)
            return first + second, first_dead + second_dead

    async def _run(self, fn, *args, executor=None):
        return await run_retrying(executor or self.executor, self.metrics, fn, *args)

    async def _queue_outputs(self, results: list[BatchResult], dead: list[DeadLetter], topic: str) -> list:
        """Queue a batch's recommendations, feedback, dead letters and training examples in one go, so
        that each (topic, partition) gets one record batch; returns their delivery futures."""
        recommendations, feedback = (t.get_topic_name() for t in self.outputs[:2])
        train = self.train_topic.get_topic_name() if self.train_topic is not None else None
        emitted = time.time()
        records = self._deadletter_records(dead)
        for result in results:
            records += [(recommendations, rec.user_id.encode(), encode_recommendation(rec, emitted))
                        for rec in result.recommendations]
            records += [(feedback, fb.user_id.encode(), encode_feedback(fb)) for fb in result.feedback]
            self.metrics.observe_feedbacks(result.feedback)
            records += self._deadletter_records([DeadLetter.of(r.event, r.reason, topic) for r in result.rejected])
            if train is not None and result.examples is not None and len(result.examples):
                # examples are fixed-size binary records, not JSON: one message per batch, or a few
                records += [(train, None, blob) for blob in examples_to_messages(result.examples, self.cfg)]
        return await self.outbox.send(records)

    def _deadletter_records(self, dead: list[DeadLetter]) -> list[tuple[str, None, bytes]]:
        """Dead-letter records to queue, each logged and counted by reason."""
        deadletter = self.outputs[2].get_topic_name()
        records = []
        for d in dead:
            log.warning("dead letter %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.reason)
            self.metrics.deadletters[reason_code(d.reason)] += 1
            records.append((deadletter, None, encode_deadletter(d.raw, d.reason, d.topic, d.partition, d.offset,
                                                                d.index)))
        return records


async def run_retrying(executor, metrics, fn, *args):
    """Run ``fn`` in ``executor``, retrying store outages (``TRANSIENT_ERRORS``) with backoff until
    they pass; each retry is counted in ``metrics.retries``."""
    loop = asyncio.get_running_loop()
    delay = 0.1
    while True:
        try:
            return await loop.run_in_executor(executor, fn, *args)
        except TRANSIENT_ERRORS as exc:
            metrics.retries += 1
            log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _fail(exc: BaseException, *futures: asyncio.Future) -> None:
    """Pass a batch's failure (or cancellation) on to the later batches waiting on its futures."""
    for future in futures:
        if future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
            future.exception()  # retrieved: the next batch or the agent reports it


def freeze_heap() -> None:
    """Put every object alive now out of the cyclic garbage collector's reach (``gc.freeze``).

    After start-up a worker holds some 180k tracked objects (JAX, Faust, the compiled kernels) that
    live as long as the process. Each full collection scanned them all again: 100-160 ms, holding
    the GIL, every few seconds under load, which stalled the event loop and the engine alike. Frozen,
    they are never scanned; later garbage is collected as before.
    """
    gc.collect()
    gc.freeze()
    log.info("heap frozen: %d objects out of the collector's scans", gc.get_freeze_count())


class RankActivity:
    """Counts rank batches between being taken and leaving the engine, so that an in-process trainer
    can run its steps in the gaps: ranking first, learning with what is left over.

    >>> activity = RankActivity()
    >>> activity.enter(); activity.wait_idle(0.01)   # busy: gives up after the timeout
    False
    >>> activity.leave(); activity.wait_idle(0.01)
    True
    """

    def __init__(self):
        self._busy = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self._busy += 1

    def leave(self) -> None:
        with self._idle:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no batch to be in the rank path; True if it went idle."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)


class TimeBudget:
    """Keeps background work to ``share`` of wall time in the long run, as a token bucket of seconds.

    The bucket refills at ``share`` seconds per second, up to ``share * burst_s``. Work is allowed
    while the bucket holds time, and the work's duration is taken out of it afterwards. A single slow
    call (a first-step compile, say) or a trickle of work never trips it; sustained work beyond the
    share is declined, and the caller counts what it declines.

    >>> budget = TimeBudget(0.25, burst_s=4.0)   # up to 1 s of work in hand
    >>> budget.ready(now=0.0)
    True
    >>> budget.spent(3.0, now=3.0)              # 3 s of work: the bucket is 2 s in debt
    >>> budget.ready(now=10.0), budget.ready(now=12.0)
    (False, True)
    """

    def __init__(self, share: float, burst_s: float = 10.0, clock=time.monotonic):
        self.share = share
        self.clock = clock
        self.capacity = share * burst_s
        self._tokens = self.capacity
        self._at: float | None = None

    def _refill(self, now: float | None) -> None:
        now = self.clock() if now is None else now
        if self._at is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.share)
        self._at = now

    def ready(self, now: float | None = None) -> bool:
        if self.share >= 1.0:
            return True
        self._refill(now)
        return self._tokens > 0.0

    def spent(self, seconds: float, now: float | None = None) -> None:
        if self.share < 1.0:
            self._refill(now)
            self._tokens -= seconds


class TrainWorker:
    """The single online trainer: learns from the train topic, publishes snapshots to the store.

    Every worker runs the agent, but the train topic has one partition, so exactly one worker of the
    group trains at a time; when the partition moves, the new owner resumes from the latest snapshot.
    ``clock`` (seconds, monotonic) times the snapshot interval, the waits for ranking's gaps and the
    training budget; tests pass one they control.
    """

    def __init__(self, settings, store=None, activity: RankActivity | None = None, clock=time.monotonic):
        self.settings = settings
        self.cfg = settings.engine_config()
        self.store = store
        self.activity = activity  # the rank path of this process, when there is one: steps wait for its gaps
        self.waited_s = 0.0       # time steps spent waiting for those gaps (written by the trainer thread)
        self.trainer: Trainer | None = None
        self.metrics = TrainerMetrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnflow-train",
                                           initializer=set_native_name, initargs=("af-train",))
        self._dirty = False
        self.clock = clock
        self._published_at = clock()
        # Beside a rank agent, learning must not starve ranking; a dedicated trainer uses all it has.
        self.budget = TimeBudget(settings.train_max_share if settings.role == "all" else 1.0, clock=clock)

    def _resume(self) -> None:
        """Start from the newest snapshot in the store (an offline bootstrap or a previous trainer)."""
        self.store = self.store or self.settings.store()
        version = self.store.params_version()
        if self.trainer is not None and version <= self.metrics.published_version:
            return
        params = None
        if version:
            blob = self.store.load_params(version)
            if blob is not None:
                params = from_bytes(blob)[0]
                reason = mismatch(params, self.cfg)
                if reason:
                    log.warning("snapshot %d does not fit this configuration (%s): the trainer starts from "
                                "fresh parameters", version, reason)
                    params = None
                else:
                    log.info("trainer resumes from snapshot %d", version)
        self.trainer = Trainer(self.cfg, self.settings.train_config(), params)
        if self.activity is not None and self.settings.train_yield_s > 0:
            self.trainer.before_step = self._wait_for_gap
        try:
            self.trainer.warmup()
        except Exception:  # noqa: BLE001 -- only an optimisation: the first step compiles instead
            log.exception("trainer warm-up failed; the first training step will compile")
        self.metrics.published_version = version

    def _wait_for_gap(self) -> None:
        """Before each step: let the batches in the rank path through first, for up to TRAIN_YIELD_S."""
        started = self.clock()
        if not self.activity.wait_idle(self.settings.train_yield_s):
            self.metrics.steps_without_gap += 1
        self.waited_s += self.clock() - started

    def learn(self, blobs: list[bytes]) -> None:
        if self.trainer is None or self.store.params_version() > self.metrics.published_version:
            self._resume()
        n_items = self.store.n_items()
        steps_before = self.trainer.steps
        for blob in blobs:
            examples = examples_from_bytes(blob, self.cfg)
            self.trainer.learn(examples, n_items)
            self.metrics.examples += len(examples)
            self.metrics.steps = self.trainer.steps
        self.metrics.loss = None if self.trainer.last_loss != self.trainer.last_loss else self.trainer.last_loss
        # Examples only queued (fewer than a training batch) leave the parameters as they are: no new
        # snapshot for them, or every worker would reload identical parameters under a new version.
        self._dirty = self._dirty or self.trainer.steps > steps_before
        if self.clock() - self._published_at >= self.settings.snapshot_interval_s:
            self.publish_or_defer()

    def publish_or_defer(self) -> None:
        """Publish, or during a store outage leave it to a later call: the steps are taken already,
        so retrying the whole ``learn`` would take them twice."""
        try:
            self.publish()
        except TRANSIENT_ERRORS as exc:
            self.metrics.retries += 1
            log.warning("store unavailable (%s); the snapshot is published later", exc)

    def publish(self) -> None:
        if not self._dirty or self.trainer is None:
            return
        meta = {"steps": self.trainer.steps, "examples": self.metrics.examples, "loss": self.metrics.loss,
                "n_items": self.store.n_items(), "created_ts": time.time()}
        version = self.store.publish_params(to_bytes(self.trainer.params, meta))
        self.metrics.published_version, self.metrics.published_ts = version, time.time()
        self._published_at = self.clock()
        self._dirty = False
        log.info("published parameter snapshot %d (%d steps, loss %s)", version, self.trainer.steps, self.metrics.loss)

    async def handle(self, events) -> None:
        if not self.budget.ready():
            # Over its share of the worker's time: these examples are skipped (counted); learning
            # resumes once the budget has refilled. The events themselves are ranked regardless.
            self.metrics.skipped_budget += len(events)
            return
        good = []
        horizon = time.time() - self.settings.train_max_lag_s
        for event in events:
            # A trainer that cannot keep up learns from the newest examples instead of an ever older
            # backlog; what it skips is counted, and the events themselves were applied long ago.
            if self.settings.train_max_lag_s > 0 and event.message.timestamp and event.message.timestamp < horizon:
                self.metrics.skipped_stale += 1
                continue
            good.append(event.value)
        if not good:
            return
        started, waited = self.clock(), self.waited_s
        try:
            # a store outage before the steps (resume, catalogue size) retries the whole call
            await run_retrying(self.executor, self.metrics, self.learn, good)
        except ValueError as exc:  # a message from a worker with another layout: skip it, loudly
            log.error("training messages skipped: %s", exc)
            self.metrics.skipped_error += len(good)
        except Exception:  # noqa: BLE001 -- learning is best effort: ranking and the partition's commits go on
            log.exception("training on %d messages failed; they are skipped", len(good))
            self.metrics.skipped_error += len(good)
        # the budget is for learning: time spent waiting for ranking's gaps is not charged
        self.budget.spent(self.clock() - started - (self.waited_s - waited))

    async def tick(self) -> None:
        if self._dirty and self.clock() - self._published_at >= self.settings.snapshot_interval_s:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.publish_or_defer)


EX_SOFTWARE = 70  # the exit status of a worker that had to end itself after a failed batch


def exit_unless_stopped_within(grace_s: float, reason: BaseException) -> threading.Timer | None:
    """End the process with ``EX_SOFTWARE`` if it is still alive ``grace_s`` seconds from now.

    A worker whose batch failed must exit so that its supervisor restarts it and its unacked events are
    redelivered; Faust's orderly stop normally takes a few seconds, but one stuck stage of it (a producer
    flush, an agent that does not drain) would leave a live worker that consumes nothing. Nothing is lost
    by the hard exit: the events were never committed and the state fence skips what was written.
    ``grace_s <= 0`` turns the guard off."""
    if grace_s <= 0:
        return None

    def hard_exit() -> None:
        log.critical("the worker did not stop within %.0fs of a failed batch (%s: %s): exiting with status %d",
                     grace_s, type(reason).__name__, reason, EX_SOFTWARE)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EX_SOFTWARE)

    timer = threading.Timer(grace_s, hard_exit)
    timer.daemon = True
    timer.start()
    return timer


async def crash_agent(agent, exc: BaseException, grace_s: float = 0.0) -> None:
    """Crash ``agent`` as if its body had raised ``exc``: what Faust does then (``Agent._execute_actor``),
    and with a ``CrashingSupervisor`` the worker stops and exits with the error; if that stop takes
    longer than ``grace_s``, the process ends itself (see ``exit_unless_stopped_within``)."""
    exit_unless_stopped_within(grace_s, exc)
    for actor in list(agent._actors):
        await actor.crash(exc)
    agent.supervisor.wakeup()


def register(app, settings, events_topic, recommendations_topic, feedback_topic, deadletter_topic, train_topic,
             catalogue_topic=None):
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
