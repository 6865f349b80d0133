"""The rank worker: what the rank agent does per micro-batch, without any ``async for`` in it.

Decode and validate, run the engine off the event loop, send outputs, then commit state. The order
matters: outputs are delivered before the fenced state write, and a batch's events are acked (so
Faust may commit their offsets) only after both, so a crash at any point replays events whose
effects are either absent or fenced off.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from models.engine import BatchResult, Engine, SourcedEvent
from models.kernels import enable_compile_cache
from models.store import FATAL_STORE_ERRORS
from models.training import examples_to_messages
from streams.catalogue import CatalogueWorker
from streams.codec import BadEvent, decode_events, encode_deadletter, encode_feedback, encode_recommendation
from streams.deadletters import DeadLetter, reason_code
from streams.lifecycle import freeze_heap, run_retrying
from streams.market import market_for
from streams.metrics import PipelineMetrics
from streams.outbox import Outbox
from streams.settings import restore_root_log_level
from streams.threadnames import name_worker_threads, set_native_name
from streams.timeshare import RankActivity

log = logging.getLogger(__name__)


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
        """Later events, taken at ``started`` (``perf_counter``), join a batch
        still waiting for the engine."""
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
        except Exception as exc:  # noqa: BLE001
            # only an optimisation: the first delivery fetches what it needs
            log.warning("could not prepare the output topics' metadata (%s: %s); the first batch will",
                        type(exc).__name__, exc)
        log.info("rank worker ready: kernels compiled and run over the catalogue in %.1fs (k=%d, history=%d, "
                 "dim=%d, scenes=%s, loop=%s, pipeline depth %d)", seconds, self.cfg.k, self.cfg.history,
                 self.cfg.dim, ",".join(self.cfg.scenes), type(loop).__module__.split(".")[0], self.depth)
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
                dead.append(DeadLetter(event.value, str(exc), message.topic, message.partition,
                                       message.offset))
                continue
            except Exception as exc:  # a decoder bug must cost one message, not the worker
                log.exception("undecodable message at %s[%d]@%d", message.topic, message.partition,
                              message.offset)
                dead.append(DeadLetter(event.value, f"undecodable: {type(exc).__name__}: {exc}",
                                       message.topic, message.partition, message.offset))
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

    async def _enqueue(self, events: list, batch: list[SourcedEvent], dead: list[DeadLetter],
                       produced: list[float], started: float) -> None:
        """One batch into the pipeline: joins the newest batch still waiting for the engine when both fit
        in ``batch_size`` events, else starts its own; waits while ``depth`` batches are in flight."""
        newest = self._inflight[-1] if self._inflight else None
        joined = (len(newest.batch) + len(newest.dead) + len(batch) + len(dead)) if newest is not None else 0
        if self.merge and newest is not None and not newest.sealed and joined <= self.settings.batch_size:
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
        log.error("a batch failed (%s: %s): the worker stops, so that it restarts and its "
                  "events are redelivered", type(exc).__name__, exc)
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

    async def _process(self, batch: list[SourcedEvent],
                       topic: str) -> tuple[list[BatchResult], list[DeadLetter]]:
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
            records += self._deadletter_records([DeadLetter.of(r.event, r.reason, topic)
                                                 for r in result.rejected])
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
            record = encode_deadletter(d.raw, d.reason, d.topic, d.partition, d.offset, d.index)
            records.append((deadletter, None, record))
        return records


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
