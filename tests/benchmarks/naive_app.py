"""Baseline (a): the naive design, one event at a time, for comparison with the batched pipeline.

Per event: Redis GET of the user's history (a JSON list of item indices), NumPy scoring of the
whole catalogue (mean history embedding . item table, ``argpartition`` top-K), Redis SET, and one
recommendation message. Same Kafka topics and Faust settings as the pipeline; item embeddings are
random vectors of the same shape as the engine's table. The catalogue (item id -> index) is read
once at start-up from the store the benchmark registered it in.

    python -m tests.benchmarks.naive_app worker -l warn --web-port 6071
"""
from __future__ import annotations

import os

# One BLAS thread: a single matrix-vector product per event gains nothing from threads, and on a busy
# machine OpenBLAS's spinning workers made it ~6x slower (2.1 ms vs 0.32 ms per 10k-item scoring).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from models.store import RedisStore  # noqa: E402
from streams.settings import restore_root_log_level  # noqa: E402
from tests.benchmarks.baseline_app import make_app  # noqa: E402

app, settings, events_topic, recommendations_topic, counters = make_app("naive")

K, L = settings.k, settings.history
ITEM_IDS: list[str] = []
INDEX: dict[str, int] = {}
EMB = np.zeros((0, settings.dim), np.float32)


def load_catalogue() -> None:
    """Item ids from the store the benchmark registered them in; random vectors of the engine's shape."""
    global ITEM_IDS, INDEX, EMB
    store = RedisStore(settings.redis_url, settings.redis_prefix)
    ITEM_IDS = store.item_ids()
    store.close()
    INDEX = {item: i for i, item in enumerate(ITEM_IDS)}
    EMB = (np.random.default_rng(0).standard_normal((max(len(ITEM_IDS), K + 1), settings.dim))
           / np.sqrt(settings.dim)).astype(np.float32)


def top_k(history: list[int]) -> tuple[np.ndarray, np.ndarray]:
    scores = EMB @ EMB[history].mean(axis=0)
    top = np.argpartition(-scores, K)[:K]
    top = top[np.argsort(-scores[top])]
    return top, scores[top]


@app.agent(events_topic, concurrency=1, name="naive")
async def naive(stream):
    """One event in, one GET, one full-catalogue scoring, one SET and one recommendation out."""
    load_catalogue()  # here, not at import: importing this module (doctest collection) must not need Redis
    restore_root_log_level(settings.log_level)  # as the rank worker does once started
    counters.ready = True
    r = aioredis.Redis.from_url(settings.redis_url)
    prefix = f"{settings.redis_prefix}:naive:"
    async for raw in stream:
        event = orjson.loads(raw)
        key = prefix + event["user_id"]
        stored = await r.get(key)
        history = orjson.loads(stored) if stored else []
        index = INDEX.get(event["item_id"])
        if index is not None:
            history = (history + [index])[-L:]
        if history:
            items, scores = top_k(history)
            await r.set(key, orjson.dumps(history))
            await recommendations_topic.send(key=event["user_id"].encode(), value=orjson.dumps({
                "user_id": event["user_id"], "scene": event.get("scene", "default"),
                "items": [ITEM_IDS[i] for i in items], "scores": [round(float(s), 6) for s in scores],
                "model_version": 0, "event_ts": event["ts"], "emitted_ts": time.time()}))
            counters.recommendations += 1
        counters.done(1, batches=0)


if __name__ == "__main__":
    app.main()
