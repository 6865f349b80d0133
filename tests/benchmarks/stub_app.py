"""Baseline (d): the real rank worker (Faust app, agent, output path) with a stub in place of the engine.

The ``pipeline_stub`` benchmark variant. Everything a worker does around ``Engine.process`` runs
unchanged: take, decode, batching and merging, encoding, the per-partition output batches, acks,
metrics. The stub returns outputs of the real sizes (one recommendation of K items per user in
the batch, one feedback record per event) and reads and writes nothing. Its CPU per event, set
beside the do-nothing agent's and the full worker's in the same run, splits a worker's cost into
Faust, the agent with its outputs, and the engine. Run it as a worker process:

    python -m tests.benchmarks.stub_app worker -l warn --web-port 6070
"""
from __future__ import annotations

from models.engine import BatchResult, Feedback, Recommendation
from streams import rank_worker


class StubEngine:
    """``models.engine.Engine``'s interface as the rank agent uses it, with canned outputs.

    >>> from models.config import EngineConfig
    >>> from models.engine import SourcedEvent
    >>> from models.events import Event
    >>> engine = StubEngine(EngineConfig(k=3), store=None)
    >>> result = engine.process([SourcedEvent(Event("u1", "a", "view", 1.0), 0, 0),
    ...                          SourcedEvent(Event("u1", "b", "click", 2.0), 0, 1)])
    >>> len(result.recommendations), len(result.feedback), result.recommendations[0].items
    (1, 2, ['sku-0', 'sku-1', 'sku-2'])
    """

    model_version = 0
    n_items = 0

    def __init__(self, cfg, store, emit_examples: bool = False, market=None):
        self.items = [f"sku-{i}" for i in range(cfg.k)]
        self.scores = [float(cfg.k - i) for i in range(cfg.k)]

    def warmup(self) -> float:
        return 0.0

    def process(self, batch) -> BatchResult:
        result, newest = BatchResult(), {}
        for sourced in batch:
            event = sourced.event
            newest[event.user_id] = event
            result.feedback.append(Feedback(event.user_id, event.item_id, event.type, event.scene, event.ts,
                                            False, None, None, None, event.event_id))
        result.recommendations = [Recommendation(user, event.scene, self.items, self.scores, 0, event.ts)
                                  for user, event in newest.items()]
        return result

    def commit(self, result: BatchResult) -> list[bool]:
        return []

    def discard_pending(self) -> None:
        pass


if __name__ == "__main__":
    rank_worker.Engine = StubEngine  # before the app registers and starts its rank worker
    from streams.app import app

    app.main()
