"""streams/agents.py: the train agent rides out store outages and bad messages instead of crashing.

A crash of the train agent would leave its taken messages unacked: Faust restarts the agent, but
the train partition's committed offset stays behind them for good.
"""
import asyncio
import time
from types import SimpleNamespace

import redis

from models.store import MemoryStore
from streams.agents import TrainWorker
from tests.streams.test_trainer_gap import ManualClock, small_settings, trainer_and_blob


class FlakyStore(MemoryStore):
    """A store whose ``params_version`` and ``publish_params`` fail the first ``n`` times each."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures = {"params_version": failures, "publish_params": failures}

    def _maybe_fail(self, name: str) -> None:
        if self.failures[name] > 0:
            self.failures[name] -= 1
            raise redis.ConnectionError("Connection refused")

    def params_version(self) -> int:
        self._maybe_fail("params_version")
        return super().params_version()

    def publish_params(self, blob: bytes) -> int:
        self._maybe_fail("publish_params")
        return super().publish_params(blob)


def trainer(store, clock=None, **overrides) -> tuple[TrainWorker, bytes]:
    return trainer_and_blob(small_settings(**overrides), activity=None, store=store, clock=clock)


def message(blob: bytes) -> SimpleNamespace:
    return SimpleNamespace(value=blob, message=SimpleNamespace(timestamp=time.time()))


def test_a_store_outage_before_the_steps_is_retried_and_the_examples_are_learned_once():
    worker, blob = trainer(FlakyStore(failures=2), snapshot_interval_s=1e9)
    asyncio.run(worker.handle([message(blob)]))
    assert worker.metrics.retries == 2
    # 16 examples, batch 8: once, not thrice
    assert worker.trainer.steps == 2 and worker.metrics.examples == 16


def test_a_snapshot_that_cannot_be_published_is_published_later():
    store = FlakyStore(failures=0)
    worker, blob = trainer(store, snapshot_interval_s=0.0)
    store.failures["publish_params"] = 1
    asyncio.run(worker.handle([message(blob)]))  # steps taken; the publish after them fails
    assert worker.trainer.steps == 2 and worker.metrics.retries == 1
    assert store.params_version() == 0 and worker._dirty
    asyncio.run(worker.tick())
    assert store.params_version() == 1 and not worker._dirty


def test_messages_learning_fails_on_are_skipped_and_counted_and_learning_goes_on():
    worker, blob = trainer(MemoryStore(), snapshot_interval_s=1e9)
    asyncio.run(worker.handle([message(blob[:-3])]))  # not a whole number of examples: another layout
    assert worker.metrics.skipped_error == 1

    def broken(examples, n_items):
        raise RuntimeError("step failed")

    learn, worker.trainer.learn = worker.trainer.learn, broken
    asyncio.run(worker.handle([message(blob), message(blob)]))
    assert worker.metrics.skipped_error == 3 and worker.trainer.steps == 0
    worker.trainer.learn = learn
    asyncio.run(worker.handle([message(blob)]))
    assert worker.trainer.steps == 2


def test_a_snapshot_of_other_dimensions_is_not_resumed_from():
    """After HISTORY or DIM changes, the newest snapshot has the old shapes: the trainer starts fresh
    rather than failing every step on it."""
    from dataclasses import replace

    from models.params import init_params, to_bytes

    store = MemoryStore()
    worker, blob = trainer(store, snapshot_interval_s=1e9)
    cfg = worker.cfg
    store.publish_params(to_bytes(init_params(replace(cfg, history=cfg.history + 2), 64), {"version": 1}))
    asyncio.run(worker.handle([message(blob)]))
    assert worker.trainer.params.pos_emb.shape[0] == cfg.history
    assert worker.trainer.steps == 2 and worker.metrics.examples == 16


def test_learning_beyond_its_share_of_time_skips_examples_until_the_budget_refills():
    """Beside a rank agent the trainer gets TRAIN_MAX_SHARE of the time: 20 s of learning in a row puts
    it in debt, the next messages are skipped (counted), and it learns again once the debt is repaid."""
    clock = ManualClock()
    worker, blob = trainer(MemoryStore(), clock=clock, snapshot_interval_s=1e9, train_max_share=0.25)
    worker._resume()
    learn = worker.trainer.learn

    def slow(examples, n_items):
        clock.now += 20.0
        return learn(examples, n_items)

    worker.trainer.learn = slow
    asyncio.run(worker.handle([message(blob)]))            # 20 s on the clock: 17.5 s in debt
    assert worker.trainer.steps == 2 and worker.metrics.skipped_budget == 0
    clock.now += 60.0                                       # 15 s refilled: still in debt
    asyncio.run(worker.handle([message(blob), message(blob)]))
    assert worker.metrics.skipped_budget == 2 and worker.trainer.steps == 2
    clock.now += 20.0                                       # repaid
    worker.trainer.learn = learn
    asyncio.run(worker.handle([message(blob)]))
    assert worker.trainer.steps == 4 and worker.metrics.skipped_budget == 2
