"""streams/agents.py: the order of a pipelined rank worker's stages across batches.

Outputs leave in batch order but do not wait for the previous batch's state write; writes and
acks stay in batch order; a batch whose outputs fail is neither written nor acked, and neither is
any batch after it; events taken while a batch waits for the engine join it, up to the batch size. The engine
and the producer are stand-ins: the real ones are covered by the integration tests, this is about the agent's
bookkeeping.
"""
import asyncio
import threading
from types import SimpleNamespace

import orjson
import pytest

from models.engine import BatchResult
from streams.agents import RankWorker
from streams.settings import Settings


class FakeEvent:
    def __init__(self, batch: int, n: int, log: list):
        self.batch, self.log = batch, log
        self.value = orjson.dumps({"user_id": f"u{n}", "item_id": "i1", "type": "view", "ts": 1.0})
        self.message = SimpleNamespace(incref=lambda: None, topic="events", partition=0,
                                       offset=batch * 10 + n, timestamp=None)

    def ack(self):
        self.log.append(("ack", self.batch))


class FakeEngine:
    """Tags each result with its batch; ``commit`` of the batches in ``slow`` blocks until released."""

    model_version, n_items = 0, 0

    def __init__(self, log: list, slow=(), held=()):
        self.log, self.slow, self.held = log, set(slow), set(held)
        self.release = threading.Event()   # lets the slow writes finish
        self.resume = threading.Event()    # lets the held batches leave the engine
        self.calls: list[list[int]] = []   # the batches of each engine call

    def process(self, batch):
        result = BatchResult()
        result.batch = batch[0].offset // 10
        self.calls.append(sorted({s.offset // 10 for s in batch}))
        if result.batch in self.held:
            assert self.resume.wait(10), "the held batch was never resumed"
        return result

    def commit(self, result):
        if result.batch in self.slow:
            assert self.release.wait(10), "the slow write was never released"
        self.log.append(("write", result.batch))
        return []

    def discard_pending(self):
        self.log.append(("discard", None))


def rank_worker(log: list, engine: FakeEngine, deliveries: dict, **settings) -> RankWorker:
    """A worker whose outputs are recorded in ``log`` and delivered when ``deliveries[batch]`` resolves."""
    topic = SimpleNamespace(get_topic_name=lambda: "out", app=None)
    worker = RankWorker(Settings(train_enabled=False, compile_cache_dir="", **settings), topic, topic, topic)
    worker.engine = engine

    async def queue_outputs(results, _dead, _topic):
        for result in results:
            log.append(("queued", result.batch))
        return [deliveries.setdefault(result.batch, asyncio.get_running_loop().create_future())
                for result in results]

    worker._queue_outputs = queue_outputs
    return worker


def batch(b: int, log: list) -> list[FakeEvent]:
    return [FakeEvent(b, n, log) for n in range(2)]


async def until(condition, timeout=10.0):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def deliver_all(worker: RankWorker, deliveries: dict, pending: asyncio.Task, batches: int) -> None:
    """Deliver every batch's outputs as they are queued until ``batches`` were, then finish ``pending``
    (a ``handle`` waiting for room) and drain the worker."""
    def deliver():
        for future in list(deliveries.values()):
            if not future.done():
                future.set_result(None)
        return len(deliveries) == batches

    await until(deliver)
    await pending
    deliver()
    await worker.drain()


async def handle_alone(worker: RankWorker, events: list) -> None:
    """Hand over a batch and wait until the engine has it, so that the next one cannot join it."""
    await worker.handle(events)
    await until(lambda: worker._inflight and worker._inflight[-1].sealed)


def test_outputs_do_not_wait_for_the_previous_write_but_writes_and_acks_keep_batch_order():
    async def main():
        log, deliveries = [], {}
        engine = FakeEngine(log, slow={1})
        worker = rank_worker(log, engine, deliveries)
        await handle_alone(worker, batch(1, log))
        await until(lambda: ("queued", 1) in log)
        deliveries[1].set_result(None)                      # batch 1 delivered: its (slow) write starts
        await handle_alone(worker, batch(2, log))
        await until(lambda: ("queued", 2) in log)
        assert ("write", 1) not in log, "batch 2's outputs waited for batch 1's write"
        deliveries[2].set_result(None)
        await asyncio.sleep(0.05)
        assert ("write", 2) not in log and ("ack", 2) not in log, "batch 2 was written before batch 1"
        engine.release.set()
        await worker.drain()
        done = [entry for entry in log if entry[0] in ("write", "ack")]
        assert done == [("write", 1), ("ack", 1), ("ack", 1), ("write", 2), ("ack", 2), ("ack", 2)]
        assert worker.metrics.events == 4
        stages = worker.metrics.stages.snapshot()
        assert all(stages[name]["events"] == 4 for name in ("queued", "engine", "deliver", "write"))

    asyncio.run(main())


def test_outputs_are_queued_in_batch_order():
    async def main():
        log, deliveries = [], {}
        worker = rank_worker(log, FakeEngine(log), deliveries)
        real = worker._queue_outputs

        async def slow_first(results, dead, topic):
            if results[0].batch == 1:
                await asyncio.sleep(0.2)                     # batch 2's engine finishes long before this
            return await real(results, dead, topic)

        worker._queue_outputs = slow_first
        await handle_alone(worker, batch(1, log))
        await handle_alone(worker, batch(2, log))
        await until(lambda: ("queued", 2) in log)
        for future in deliveries.values():
            future.set_result(None)
        await worker.drain()
        assert [entry for entry in log if entry[0] == "queued"] == [("queued", 1), ("queued", 2)]

    asyncio.run(main())


def test_failed_outputs_leave_that_batch_and_every_later_one_unwritten_and_unacked():
    async def main():
        log, deliveries = [], {}
        worker = rank_worker(log, FakeEngine(log), deliveries)
        await handle_alone(worker, batch(1, log))
        await handle_alone(worker, batch(2, log))
        await until(lambda: ("queued", 2) in log)
        deliveries[1].set_exception(RuntimeError("broker refused the batch"))
        deliveries[2].set_result(None)                      # delivered, but built on batch 1's states
        third = asyncio.create_task(worker.handle(batch(3, log)))  # depth 3: waits on batch 1, which failed
        await until(lambda: ("queued", 3) in log)            # already on its way when batch 1 failed
        deliveries[3].set_result(None)
        with pytest.raises(RuntimeError, match="broker refused"):
            await third
        assert not [entry for entry in log if entry[0] in ("write", "ack")]
        assert ("discard", None) in log                     # uncommitted states are forgotten

    asyncio.run(main())


def test_events_taken_while_the_engine_is_busy_join_the_waiting_batch():
    async def main():
        log, deliveries = [], {}
        engine = FakeEngine(log, held={1})
        worker = rank_worker(log, engine, deliveries)
        await handle_alone(worker, batch(1, log))           # in the engine, held there
        for b in (2, 3, 4):
            await worker.handle(batch(b, log))               # all wait for the engine: one batch
        engine.resume.set()
        await until(lambda: len(engine.calls) == 2)
        for future in list(deliveries.values()):
            future.set_result(None)
        await worker.drain()
        assert engine.calls == [[1], [2, 3, 4]]
        assert [entry for entry in log if entry[0] == "ack"] == [("ack", b) for b in (1, 1, 2, 2, 3, 3, 4, 4)]
        assert worker.metrics.events == 8 and worker.metrics.batches == 2
        assert worker.metrics.stages.snapshot()["queued"]["events"] == 8

    asyncio.run(main())


def test_with_merging_off_every_take_is_a_batch():
    async def main():
        log, deliveries = [], {}
        engine = FakeEngine(log, held={1})
        worker = rank_worker(log, engine, deliveries, batch_merge=False)
        await handle_alone(worker, batch(1, log))
        await worker.handle(batch(2, log))
        third = asyncio.create_task(worker.handle(batch(3, log)))  # depth 3: waits for the first
        await until(lambda: worker._inflight[-1].events[0].batch == 3)
        engine.resume.set()
        await deliver_all(worker, deliveries, third, batches=3)
        assert engine.calls == [[1], [2], [3]]

    asyncio.run(main())


def test_a_waiting_batch_never_grows_past_the_batch_size():
    async def main():
        log, deliveries = [], {}
        engine = FakeEngine(log, held={1})
        worker = rank_worker(log, engine, deliveries, batch_size=5)
        await handle_alone(worker, batch(1, log))
        await worker.handle(batch(2, log))
        await worker.handle(batch(3, log))                   # 2 + 2 events: fits
        fourth = asyncio.create_task(worker.handle(batch(4, log)))  # 6 would not: a third batch, and at
        await until(lambda: worker._inflight[-1].events[0].batch == 4)  # depth 3 it waits for the first
        assert not fourth.done()
        engine.resume.set()
        await deliver_all(worker, deliveries, fourth, batches=3)
        assert engine.calls == [[1], [2, 3], [4]]
        assert worker.metrics.events == 8

    asyncio.run(main())
