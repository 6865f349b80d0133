"""The train worker: what the train agent does with a take of training examples.

It learns from the train topic and publishes parameter snapshots to the store; beside a rank
agent it waits for ranking's gaps and keeps to its share of the worker's time.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from models.params import from_bytes, mismatch, to_bytes
from models.store import TRANSIENT_ERRORS
from models.training import Trainer, examples_from_bytes
from streams.lifecycle import run_retrying
from streams.metrics import TrainerMetrics
from streams.threadnames import set_native_name
from streams.timeshare import RankActivity, TimeBudget

log = logging.getLogger(__name__)


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
        loss = self.trainer.last_loss
        self.metrics.loss = None if loss != loss else loss  # NaN: no loss yet
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
        log.info("published parameter snapshot %d (%d steps, loss %s)", version, self.trainer.steps,
                 self.metrics.loss)

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
            produced = event.message.timestamp
            if self.settings.train_max_lag_s > 0 and produced and produced < horizon:
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
        except Exception:  # noqa: BLE001
            # learning is best effort: ranking and the partition's commits go on
            log.exception("training on %d messages failed; they are skipped", len(good))
            self.metrics.skipped_error += len(good)
        # the budget is for learning: time spent waiting for ranking's gaps is not charged
        self.budget.spent(self.clock() - started - (self.waited_s - waited))

    async def tick(self) -> None:
        if self._dirty and self.clock() - self._published_at >= self.settings.snapshot_interval_s:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.publish_or_defer)
