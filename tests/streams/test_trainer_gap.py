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


class ManualClock:
    """A monotonic clock that moves only when a test moves it: budgets and waits never see machine load."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trainer_and_blob(settings: Settings, activity: RankActivity | None, store=None,
                     clock=None) -> tuple[TrainWorker, bytes]:
    """A trainer on ``store`` (a fresh in-memory one by default) with 10 items, and one training message.
    Its clock stands still unless the test passes one it moves."""
    store = store if store is not None else MemoryStore()
    store.item_index([f"i{n}" for n in range(10)])
    worker = TrainWorker(settings, store=store, activity=activity, clock=clock or ManualClock())
    [blob] = examples_to_messages(toy_examples(settings.engine_config(), n=16, n_items=10),
                                  settings.engine_config())
    return worker, blob


def waiting_signal(activity: RankActivity) -> threading.Event:
    """Set once a step has started waiting for ``activity`` to go idle."""
    waiting, wait_idle = threading.Event(), activity.wait_idle

    def signalled(timeout):
        waiting.set()
        return wait_idle(timeout)

    activity.wait_idle = signalled
    return waiting


def test_steps_wait_while_a_batch_is_in_the_rank_path():
    activity, clock = RankActivity(), ManualClock()
    worker, blob = trainer_and_blob(small_settings(train_yield_s=600.0), activity, clock=clock)
    worker.learn([blob])                        # idle rank path: two steps at once (and the step compiled)
    assert worker.trainer.steps == 2 and worker.metrics.steps_without_gap == 0
    activity.enter()                            # a batch is being ranked
    waiting = waiting_signal(activity)
    learning = threading.Thread(target=worker.learn, args=([blob],))
    learning.start()
    assert waiting.wait(timeout=120), "the step never waited for the rank path"
    assert learning.is_alive() and worker.trainer.steps == 2, "the step ran while ranking was busy"
    clock.now += 5.0                            # the wait lasts 5 s on the trainer's clock
    activity.leave()
    learning.join(timeout=120)
    assert not learning.is_alive() and worker.trainer.steps == 4 and worker.metrics.steps_without_gap == 0
    assert worker.waited_s == 5.0              # kept out of the trainer's time budget


def test_a_busy_rank_path_delays_steps_but_never_stops_them():
    activity = RankActivity()
    activity.enter()                            # never leaves: a saturated worker
    worker, blob = trainer_and_blob(small_settings(train_yield_s=0.01), activity)
    worker.learn([blob])
    assert worker.trainer.steps == 2 and worker.metrics.steps_without_gap == 2


def test_without_a_rank_path_or_with_yield_off_steps_do_not_wait():
    for activity, settings in ((None, small_settings(train_yield_s=600.0)),
                               (RankActivity(), small_settings(train_yield_s=0))):
        waiting = None
        if activity is not None:
            activity.enter()
            waiting = waiting_signal(activity)
        worker, blob = trainer_and_blob(settings, activity)
        worker.learn([blob])
        assert worker.trainer.steps == 2 and worker.metrics.steps_without_gap == 0
        assert waiting is None or not waiting.is_set(), "a step waited with TRAIN_YIELD_S=0"


def test_time_spent_waiting_for_a_gap_is_not_charged_to_the_training_budget():
    import asyncio
    from types import SimpleNamespace

    activity, clock = RankActivity(), ManualClock()
    worker, blob = trainer_and_blob(small_settings(train_yield_s=600.0), activity, clock=clock)
    worker.learn([blob])
    activity.enter()
    waiting, wait_idle = threading.Event(), activity.wait_idle

    def wait_then_leave(timeout):               # ranking keeps the step waiting for 5 s of its clock
        if not waiting.is_set():
            waiting.set()
            clock.now += 5.0
            activity.leave()
        return wait_idle(timeout)

    activity.wait_idle = wait_then_leave
    event = SimpleNamespace(value=blob, message=SimpleNamespace(timestamp=time.time()))
    full = worker.budget.capacity
    asyncio.run(worker.handle([event]))
    assert worker.trainer.steps == 4 and worker.waited_s == 5.0
    assert worker.budget._tokens == full, "the wait for ranking was charged as learning time"
