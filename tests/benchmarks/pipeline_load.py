"""The pipeline benchmark's workload: a synthetic catalogue and event stream (Zipf items, all four event
types and scenes), produced as a backlog or at a fixed rate, one event or a batch of them a message.
"""
from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import numpy as np
import orjson

from streams.settings import Settings
from streams.topics import TopicNames


EVENT_TYPES = ("view", "click", "cart", "purchase")
TYPE_P = (0.75, 0.15, 0.07, 0.03)
SCENES = ("default", "home", "search", "product")
SCENE_P = (0.25, 0.35, 0.2, 0.2)


@dataclass
class Dataset:
    """A catalogue, a user population and a Zipf item popularity; produces events as (key, value)."""

    n_items: int
    n_users: int
    seed: int = 0
    zipf_s: float = 1.0
    rng: np.random.Generator = field(init=False)
    item_ids: list = field(init=False)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.item_ids = [f"sku-{i}" for i in range(self.n_items)]
        weights = 1.0 / np.arange(1, self.n_items + 1) ** self.zipf_s
        self._item_p = weights / weights.sum()
        self._popularity = self.rng.permutation(self.n_items)  # rank -> item: no index locality for free

    def _columns(self, n: int):
        rng = self.rng
        items = self._popularity[rng.choice(self.n_items, n, p=self._item_p)]
        return (rng.integers(0, self.n_users, n), items, rng.choice(4, n, p=TYPE_P),
                rng.choice(4, n, p=SCENE_P))

    def events(self, n: int, ts0: float, step: float = 1e-4, prefix: str = "b") -> list[tuple[bytes, bytes]]:
        users, items, types, scenes = self._columns(n)
        out = []
        for i in range(n):
            user = f"u{users[i]}"
            out.append((user.encode(), orjson.dumps({
                "user_id": user, "item_id": self.item_ids[items[i]], "type": EVENT_TYPES[types[i]],
                "ts": ts0 + i * step, "scene": SCENES[scenes[i]], "event_id": f"{prefix}{i}"})))
        return out

    def live(self, n: int):
        """Columns for ``n`` live events; the caller stamps ``ts`` at send time."""
        users, items, types, scenes = self._columns(n)
        return [(f"u{u}", self.item_ids[i], EVENT_TYPES[t], SCENES[s])
                for u, i, t, s in zip(users, items, types, scenes)]


def batched(pairs: list[tuple[bytes, bytes]], partitions: int, max_events: int) -> list[tuple[bytes, bytes]]:
    """The same events as batched messages: per partition of each key (Kafka's murmur2), in order, up to
    ``max_events`` a message, keyed by its first event's key (which hashes to that partition too)."""
    from kafka.partitioner.default import murmur2

    groups: dict[int, list] = collections.defaultdict(list)
    out = []
    for key, value in pairs:
        p = (murmur2(key) & 0x7FFFFFFF) % partitions
        group = groups[p]
        group.append((key, value))
        if len(group) == max_events:
            out.append((group[0][0], b"[" + b",".join(v for _, v in group) + b"]"))
            groups[p] = []
    out += [(g[0][0], b"[" + b",".join(v for _, v in g) + b"]") for g in groups.values() if g]
    return out


def producer(settings: Settings, linger_ms: int):
    from kafka import KafkaProducer

    from streams.kafka_clients import connect

    return connect(KafkaProducer, settings, acks="all", linger_ms=linger_ms, batch_size=512 * 1024,
                   max_request_size=8 * 1024 * 1024, retries=5, client_id=f"{settings.app_id}-bench")


def produce_backlog(settings: Settings, pairs) -> dict:
    from tqdm import tqdm

    topic = TopicNames.of(settings).events
    kafka = producer(settings, linger_ms=20)
    failures = []
    started = time.perf_counter()
    with tqdm(total=len(pairs), unit="ev", desc="produce backlog", leave=False, mininterval=0.5) as bar:
        for i, (key, value) in enumerate(pairs):
            kafka.send(topic, key=key, value=value).add_errback(failures.append)
            if i % 2000 == 1999:
                bar.update(2000)
        kafka.flush()
        bar.update(len(pairs) % 2000)
    kafka.close()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} backlog events were not delivered: {failures[0]!r}")
    return {"events": len(pairs), "seconds": seconds, "rate": len(pairs) / seconds}


def produce_at_rate(settings: Settings, dataset: Dataset, rate: float, seconds: float, desc: str) -> dict:
    """Send events at ``rate``/s for ``seconds``; each carries its wall-clock send time in ``ts``.

    The load generator shares the two cores with the worker under test, so it is kept cheap: every
    2 ms the events that are due go out as per-partition record batches (aiokafka through
    ``streams.outbox.Outbox``, the worker's own output path). One kafka-python ``send`` per event
    took about half a core at 2.5k events/s; this takes less than half of that. Keys are
    partitioned by the same murmur2 hash either way, so users stay on the partitions of the backlog.
    """
    return asyncio.run(_produce_at_rate(settings, dataset, rate, seconds, desc))


async def _produce_at_rate(settings: Settings, dataset: Dataset, rate: float, seconds: float,
                           desc: str) -> dict:
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    from streams.kafka_clients import aiokafka_kwargs
    from streams.outbox import Outbox

    topic = TopicNames.of(settings).events
    columns = dataset.live(int(rate * seconds) + 1)
    kafka = AIOKafkaProducer(**aiokafka_kwargs(settings, acks="all", linger_ms=0,
                                               client_id=f"{settings.app_id}-bench"))
    await kafka.start()
    outbox = Outbox(lambda: kafka)
    deliveries, sent = [], 0
    try:
        started = time.time()
        with tqdm(total=len(columns), unit="ev", desc=desc, leave=False, mininterval=0.5) as bar:
            while sent < len(columns):
                due = min(len(columns), int((time.time() - started) * rate) + 1)
                now = time.time()
                deliveries += await outbox.send(
                    (topic, user.encode(),
                     orjson.dumps({"user_id": user, "item_id": item, "type": etype, "ts": now,
                                   "scene": scene, "event_id": f"l{sent + i}"}))
                    for i, (user, item, etype, scene) in enumerate(columns[sent:due]))
                bar.update(due - sent)
                sent = due
                await asyncio.sleep(0.002)
        outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
    finally:
        await kafka.stop()
    took = time.time() - started
    return {"sent": sent, "seconds": took, "rate_achieved": sent / took,
            "failed_batches": sum(isinstance(o, BaseException) for o in outcomes),
            "producer": "aiokafka record batches", "start": started, "end": started + took}
