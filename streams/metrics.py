"""Counters the worker keeps and serves: throughput, dead letters, online HR@K/NDCG@K, latencies.

Rendered as Prometheus text at ``/metrics`` and as JSON at ``/stats`` (see ``streams.views``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from streams.market_metrics import market_lines  # noqa: F401  (re-exported: tests import it from here)
from streams.quantiles import Histogram, Quantiles


def lag_lines(lags: dict) -> list[str]:
    """Prometheus lines of consumer lag: ``{(topic, partition): messages not yet committed}``.

    >>> lag_lines({("events", 1): 7})[-1]
    'attnflow_consumer_lag{topic="events",partition="1"} 7'
    """
    lines = [
        "# HELP attnflow_consumer_lag messages of an assigned partition after this worker's committed offset",
        "# TYPE attnflow_consumer_lag gauge",
    ]
    return lines + [
        f'attnflow_consumer_lag{{topic="{t}",partition="{p}"}} {n}' for (t, p), n in sorted(lags.items())
    ]


STAGES = ("to_agent", "queued", "engine", "deliver", "write")


@dataclass
class StageTimes:
    """Where an event's time goes on its way through the worker, stage by stage.

    - ``to_agent``: produced -> its batch taken by the agent (broker, fetch, Faust's buffering);
    - ``queued``: taken -> the engine starts on it (decoding; earlier batches still in the engine);
    - ``engine``: state read, fold, rank (``Engine.process``);
    - ``deliver``: engine done -> outputs acknowledged by the broker (queued after the previous
      batch's outputs);
    - ``write``: delivered -> the fenced state write done (after the previous batch's write).

    Per stage: recent quantiles (one observation per batch; per event for ``to_agent``) and an
    event-weighted running total, so that the mean per event of each stage over any interval is
    ``delta(seconds) / delta(events)`` and the means add up to the time to an event's ack.

    >>> st = StageTimes(); st.add("engine", 0.02, events=10); st.add("engine", 0.04, events=30)
    >>> s = st.snapshot()["engine"]; round(s["seconds"], 3), s["events"]
    (1.4, 40)
    """

    quantiles: dict = field(default_factory=lambda: {name: Quantiles(size=2048) for name in STAGES})
    seconds: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    events: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    def add(self, stage: str, seconds: float, events: int = 1) -> None:
        self.quantiles[stage].add(seconds)
        self.seconds[stage] += seconds * events
        self.events[stage] += events

    def add_each(self, stage: str, seconds: list[float]) -> None:
        """One observation per event, for a whole batch of events.

        >>> st = StageTimes(); st.add_each("to_agent", [0.5, 1.5]); st.snapshot()["to_agent"]["seconds"]
        2.0
        """
        self.quantiles[stage].extend(seconds)
        self.seconds[stage] += sum(seconds)
        self.events[stage] += len(seconds)

    def snapshot(self) -> dict:
        return {
            name: {
                **self.quantiles[name].summary(),
                "seconds": self.seconds[name],
                "events": self.events[name],
            }
            for name in STAGES
        }


@dataclass
class PipelineMetrics:
    """Everything an operator wants to graph about one rank worker.

    >>> from types import SimpleNamespace as F
    >>> m = PipelineMetrics(k=10)
    >>> m.observe_feedbacks([F(hit=True, rank=1, list_age_s=1.0), F(hit=False, rank=None, list_age_s=2.0)])
    >>> m.snapshot()["online"]["hr"]
    0.5
    """

    k: int = 20
    started: float = field(default_factory=time.time)
    events: int = 0
    batches: int = 0
    recommendations: int = 0
    feedback: int = 0
    replayed: int = 0
    migrated: int = 0
    fenced_skips: int = 0
    deadletters: Counter = field(default_factory=Counter)
    retries: int = 0
    listed: int = 0
    hits: int = 0
    dcg: float = 0.0
    model_version: int = 0
    n_items: int = 0
    ready: bool = False
    batch_seconds: Quantiles = field(default_factory=Quantiles)
    kernel_seconds: Quantiles = field(default_factory=Quantiles)
    latency_seconds: Histogram = field(default_factory=Histogram)  # produced -> outputs delivered and written
    batch_sizes: Quantiles = field(default_factory=Quantiles)
    stages: StageTimes = field(default_factory=StageTimes)
    model_since: float = field(
        default_factory=time.time
    )  # when this worker started ranking with model_version

    def __setattr__(self, name, value):
        if name == "model_version" and getattr(self, "model_version", value) != value:
            object.__setattr__(self, "model_since", time.time())
        object.__setattr__(self, name, value)

    def observe_feedbacks(self, feedback) -> None:
        """Count a batch's feedback records (``models.engine.Feedback``) into the online HR and NDCG.

        >>> from types import SimpleNamespace as F
        >>> m = PipelineMetrics(k=10)
        >>> m.observe_feedbacks([F(hit=True, rank=1, list_age_s=3.0),
        ...                      F(hit=False, rank=None, list_age_s=None)])
        >>> m.feedback, m.listed, m.hits, m.dcg
        (2, 1, 1, 1.0)
        """
        self.feedback += len(feedback)
        for fb in feedback:
            if fb.list_age_s is not None:
                self.listed += 1
                if fb.hit:
                    self.hits += 1
                    self.dcg += 1.0 / math.log2(fb.rank + 1)

    def progress(self) -> dict:
        """The counters alone, without quantiles: cheap enough to poll many times a second."""
        return {
            "uptime_s": time.time() - self.started,
            "ready": self.ready,
            "events": self.events,
            "batches": self.batches,
            "recommendations": self.recommendations,
            "feedback": self.feedback,
            "model_version": self.model_version,
        }

    def snapshot(self) -> dict:
        listed = max(self.listed, 1)
        return {
            **self.progress(),
            "replayed": self.replayed,
            "migrated": self.migrated,
            "fenced_skips": self.fenced_skips,
            "retries": self.retries,
            "deadletters": dict(self.deadletters),
            "n_items": self.n_items,  # model_version: in progress()
            "online": {
                "k": self.k,
                "events_with_list": self.listed,
                "hits": self.hits,
                "hr": self.hits / listed if self.listed else None,
                "ndcg": self.dcg / listed if self.listed else None,
            },
            "batch_seconds": self.batch_seconds.summary(),
            "kernel_seconds": self.kernel_seconds.summary(),
            "latency_seconds": self.latency_seconds.summary(),
            "batch_size": self.batch_sizes.summary(),
            "stages": self.stages.snapshot(),
        }

    def prometheus(self) -> str:
        s = self.snapshot()
        lines = []

        def metric(name, value, kind="gauge", labels="", help_=""):
            if value is None:
                return
            if help_:
                lines.append(f"# HELP attnflow_{name} {help_}")
                lines.append(f"# TYPE attnflow_{name} {kind}")
            lines.append(f"attnflow_{name}{labels} {value}")

        metric(
            "events_total",
            s["events"],
            "counter",
            help_="events fully processed: outputs delivered, state written, offset committable",
        )
        metric("batches_total", s["batches"], "counter", help_="micro-batches processed")
        metric("recommendations_total", s["recommendations"], "counter", help_="recommendation messages sent")
        metric("feedback_total", s["feedback"], "counter", help_="feedback messages sent")
        metric(
            "replayed_total", s["replayed"], "counter", help_="redelivered events skipped by the state fence"
        )
        metric(
            "states_migrated_total",
            s["migrated"],
            "counter",
            help_="stored states read in the previous layout (ATTNFLOW_STATE_MIGRATE_FROM) and converted",
        )
        metric(
            "fenced_skips_total",
            s["fenced_skips"],
            "counter",
            help_="state writes refused: newer state stored",
        )
        metric(
            "retries_total", s["retries"], "counter", help_="batches retried after a transient store error"
        )
        lines.append("# HELP attnflow_deadletters_total events sent to the dead-letter topic, by reason")
        lines.append("# TYPE attnflow_deadletters_total counter")
        for reason, n in sorted(s["deadletters"].items()):
            lines.append(f'attnflow_deadletters_total{{reason="{reason}"}} {n}')
        metric(
            "online_hit_rate",
            s["online"]["hr"],
            help_=f"share of events whose item was in the last list (top {self.k})",
        )
        metric("online_ndcg", s["online"]["ndcg"], help_="NDCG of the acted-on item in the last list")
        metric("model_version", s["model_version"], help_="parameter snapshot in use")
        metric(
            "model_age_seconds",
            round(time.time() - self.model_since, 3),
            help_="seconds since this worker started ranking with the snapshot in use (grows while no "
            "trainer publishes)",
        )
        metric("catalogue_items", s["n_items"], help_="items known to this worker")
        metric("ready", int(s["ready"]), help_="1 once kernels are compiled and the agent consumes")
        for name in ("batch_seconds", "kernel_seconds", "latency_seconds", "batch_size"):
            for q in ("p50", "p95", "p99"):
                metric(
                    name,
                    s[name][q],
                    labels=f'{{quantile="{q[1:]}"}}',
                    help_="" if q != "p50" else f"{name.replace('_', ' ')} over the last observations",
                )
        lines.extend(
            self.latency_seconds.prometheus(
                "attnflow_produce_to_emit_seconds",
                "event produced -> its batch's outputs delivered and state written",
            )
        )
        lines.append("# HELP attnflow_stage_seconds seconds per stage of an event's way through the worker")
        lines.append("# TYPE attnflow_stage_seconds gauge")
        for stage, q in s["stages"].items():
            for p in ("p50", "p95", "p99"):
                if q[p] is not None:
                    lines.append(f'attnflow_stage_seconds{{stage="{stage}",quantile="{p[1:]}"}} {q[p]}')
        lines.append(
            "# HELP attnflow_stage_event_seconds_total event-weighted seconds per stage (rate over "
            "events_total: mean per event)"
        )
        lines.append("# TYPE attnflow_stage_event_seconds_total counter")
        for stage, q in s["stages"].items():
            lines.append(f'attnflow_stage_event_seconds_total{{stage="{stage}"}} {q["seconds"]}')
        return "\n".join(lines) + "\n"


@dataclass
class TrainerMetrics:
    """The online trainer's progress (only the worker that owns the train partition has any)."""

    examples: int = 0
    steps: int = 0
    loss: float | None = None
    published_version: int = 0
    published_ts: float | None = None
    skipped_stale: int = 0
    skipped_budget: int = 0
    steps_without_gap: int = 0
    skipped_error: int = 0  # training messages skipped because learning from them failed (logged)
    retries: int = 0  # store calls retried (or snapshots deferred) during an outage

    def snapshot(self) -> dict:
        return dict(self.__dict__)

    def prometheus(self) -> str:
        lines = [
            "# HELP attnflow_train_examples_total training examples learned by this worker",
            "# TYPE attnflow_train_examples_total counter",
            f"attnflow_train_examples_total {self.examples}",
            "# HELP attnflow_train_steps_total optimiser steps taken by this worker",
            "# TYPE attnflow_train_steps_total counter",
            f"attnflow_train_steps_total {self.steps}",
            "# HELP attnflow_train_skipped_stale_total training messages skipped as older than "
            "TRAIN_MAX_LAG_S",
            "# TYPE attnflow_train_skipped_stale_total counter",
            f"attnflow_train_skipped_stale_total {self.skipped_stale}",
            "# HELP attnflow_train_skipped_budget_total training messages skipped while an in-process "
            "trainer "
            "was over TRAIN_MAX_SHARE",
            "# TYPE attnflow_train_skipped_budget_total counter",
            f"attnflow_train_skipped_budget_total {self.skipped_budget}",
            "# HELP attnflow_train_steps_without_gap_total optimiser steps an in-process trainer took while "
            "ranking was still busy after TRAIN_YIELD_S",
            "# TYPE attnflow_train_steps_without_gap_total counter",
            f"attnflow_train_steps_without_gap_total {self.steps_without_gap}",
            "# HELP attnflow_train_skipped_error_total training messages skipped because learning from them "
            "failed (the log says why)",
            "# TYPE attnflow_train_skipped_error_total counter",
            f"attnflow_train_skipped_error_total {self.skipped_error}",
            "# HELP attnflow_train_store_retries_total trainer store calls retried, or snapshots deferred, "
            "while the store was unavailable",
            "# TYPE attnflow_train_store_retries_total counter",
            f"attnflow_train_store_retries_total {self.retries}",
            "# HELP attnflow_published_model_version last parameter snapshot this worker published",
            "# TYPE attnflow_published_model_version gauge",
            f"attnflow_published_model_version {self.published_version}",
        ]
        if self.published_ts is not None:
            lines += [
                "# HELP attnflow_published_model_timestamp_seconds when this worker published its last "
                "snapshot",
                "# TYPE attnflow_published_model_timestamp_seconds gauge",
                f"attnflow_published_model_timestamp_seconds {self.published_ts}",
            ]
        if self.loss is not None:
            lines += [
                "# HELP attnflow_train_loss mean next-item cross-entropy of recent steps",
                "# TYPE attnflow_train_loss gauge",
                f"attnflow_train_loss {self.loss}",
            ]
        return "\n".join(lines) + "\n"
