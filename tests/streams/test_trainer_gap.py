"""streams/agents.py: an in-process trainer runs its optimiser steps in the rank path's gaps."""
import threading
import time

from models.store import MemoryStore
from models.training import examples_to_messages, toy_examples
from streams.agents import RankActivity, TrainWorker
from streams.settings import Settings


def small_settings(**overrides) -> Settings:
    return Settings(dim=8, history=4, scenes=("default",), k=2, initial_capacity=16, train_batch_size=8,
                    train_replay_steps=0, compile_cache_dir="", **overrides)


def trainer_and_blob(settings: Settings, activity: RankActivity | None, store=None) -> tuple[TrainWorker, bytes]:
    """A trainer on ``store`` (a fresh in-memory one by default) with 10 items, and one training message."""
    store = store if store is not None else MemoryStore()
    store.item_index([f"i{n}" for n in range(10)])
    worker = TrainWorker(settings, store=store, activity=activity)
    [blob] = examples_to_messages(toy_examples(settings.engine_config(), n=16, n_items=10), settings.engine_config())
    return worker, blob


def test_steps_wait_while_a_batch_is_in_the_rank_path():
    activity = RankActivity()
    worker, blob = trainer_and_blob(small_settings(train_yield_s=30.0), activity)
    worker.learn([blob])                        # idle rank path: two steps at once (and the step compiled)
    assert worker.trainer.steps == 2 and worker.metrics.steps_without_gap == 0
    activity.enter()                            # a batch is being ranked
    learning = threading.Thread(target=worker.learn, args=([blob],))
    learning.start()
    time.sleep(0.6)                             # the thread starts waiting a little after start(): 0.1 s margin
    assert learning.is_alive() and worker.trainer.steps == 2, "the step ran while ranking was busy"
    activity.leave()
    learning.join(timeout=10)
    assert not learning.is_alive() and worker.trainer.steps == 4 and worker.metrics.steps_without_gap == 0
    assert worker.waited_s >= 0.5              # kept out of the trainer's time budget


def test_a_busy_rank_path_delays_steps_but_never_stops_them():
    activity = RankActivity()
    activity.enter()                            # never leaves: a saturated worker
    worker, blob = trainer_and_blob(small_settings(train_yield_s=0.01), activity)
    worker.learn([blob])
    assert worker.trainer.steps == 2 and worker.metrics.steps_without_gap == 2


def test_without_a_rank_path_or_with_yield_off_steps_do_not_wait():
    for activity, settings in ((None, small_settings(train_yield_s=30.0)), (RankActivity(), small_settings(train_yield_s=0))):
        if activity is not None:
            activity.enter()
        worker, blob = trainer_and_blob(settings, activity)
        started = time.monotonic()
        worker.learn([blob])
        assert worker.trainer.steps == 2 and worker.metrics.steps_without_gap == 0
        assert time.monotonic() - started < 25


def test_time_spent_waiting_for_a_gap_is_not_charged_to_the_training_budget():
    import asyncio
    from types import SimpleNamespace

    activity = RankActivity()
    worker, blob = trainer_and_blob(small_settings(train_yield_s=30.0), activity)
    worker.learn([blob])                        # compile outside the measured call
    activity.enter()
    threading.Timer(0.6, activity.leave).start()
    event = SimpleNamespace(value=blob, message=SimpleNamespace(timestamp=time.time()))
    full = worker.budget.capacity
    asyncio.run(worker.handle([event]))
    assert worker.trainer.steps == 4 and worker.waited_s >= 0.5
    assert worker.budget._tokens > full - 0.3, "the wait for ranking was charged as learning time"
