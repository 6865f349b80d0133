"""Producers and readers for people at a terminal: replay a log into ``events``, tail output topics.

kafka-python on purpose: it is what producers outside the pipeline typically use, and it keeps
these tools independent of the Faust worker.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

import orjson

from models.events import EVENT_TYPES, Event, EventLog
from streams.codec import encode_event
from streams.kafka_clients import connect
from streams.settings import Settings
from streams.topics import TopicNames

log = logging.getLogger(__name__)


def log_events(log_: EventLog, limit: int | None = None) -> Iterator[Event]:
    """The rows of a columnar log as producer events, in time order."""
    n = len(log_) if limit is None else min(limit, len(log_))
    users, items, scenes = log_.user_ids, log_.item_ids, log_.scene_names
    for i in range(n):
        yield Event(user_id=users[log_.user[i]], item_id=items[log_.item[i]], type=EVENT_TYPES[log_.type[i]],
                    ts=float(log_.ts[i]), scene=scenes[log_.scene[i]], event_id=f"{log_.name}:{i}")


class EventBatcher:
    """Groups events into batched messages (``streams.codec.encode_events``), one group per partition.

    A user's events must stay on the partition their key hashes to (Kafka's murmur2, as every client's
    default partitioner): events are grouped by that partition, and each message is keyed by its first
    event's user, which hashes there too. Order within a user is kept. A group is sent once it holds
    ``max_events`` events or ``max_bytes`` of JSON (well under the broker's 1 MiB message limit).

    >>> batcher = EventBatcher(partitions=1, max_events=2)
    >>> out = [m for e in [Event("a", "i", "view", 1.0), Event("b", "i", "view", 1.0),
    ...                    Event("c", "j", "view", 2.0)] for m in batcher.add(e)] + batcher.flush()
    >>> [(key, n) for key, _, n in out]
    [(b'a', 2), (b'c', 1)]
    """

    def __init__(self, partitions: int, max_events: int = 200, max_bytes: int = 512 * 1024):
        self.partitions, self.max_events, self.max_bytes = partitions, max(1, max_events), max_bytes
        self._groups: dict[int, list] = {}  # partition -> [key, event docs, bytes]
        self._partition_of: dict[str, int] = {}

    def partition(self, user_id: str) -> int:
        p = self._partition_of.get(user_id)
        if p is None:
            from kafka.partitioner.default import murmur2

            p = self._partition_of[user_id] = (murmur2(user_id.encode()) & 0x7FFFFFFF) % self.partitions
        return p

    def add(self, event: Event) -> list[tuple[bytes, bytes, int]]:
        """Messages ``(key, value, events)`` that became full with ``event`` (none, usually)."""
        p = self.partition(event.user_id)
        doc = encode_event(event)
        group = self._groups.get(p)
        out = []
        if group is not None and (len(group[1]) >= self.max_events
                                  or group[2] + len(doc) + 1 > self.max_bytes):
            out.append(self._message(self._groups.pop(p)))
            group = None
        if group is None:
            group = self._groups[p] = [event.user_id.encode(), [], 1]
        group[1].append(doc)
        group[2] += len(doc) + 1
        return out

    def flush(self) -> list[tuple[bytes, bytes, int]]:
        """Every group not sent yet, as messages."""
        out = [self._message(group) for group in self._groups.values()]
        self._groups.clear()
        return out

    @staticmethod
    def _message(group) -> tuple[bytes, bytes, int]:
        key, docs, _ = group
        return key, b"[" + b",".join(docs) + b"]", len(docs)


def replay(settings: Settings, events, total: int | None = None, rate: float = 0.0,
           progress: bool = True, raw: bool = False, topic: str | None = None,
           batch_events: int | None = None) -> dict:
    """Send events (``Event`` objects, or bytes when ``raw``) to the events topic, keyed by user id
    (``topic``: another topic of ``TopicNames``, e.g. ``(key, value)`` pairs to the catalogue when ``raw``).

    Events go as batched messages of up to ``batch_events`` events (``EventBatcher``; default
    ``ATTNFLOW_REPLAY_BATCH_EVENTS``); 1 sends one message per event. ``rate`` is events per second
    (0 = as fast as the broker takes them). Returns counts (events and messages) and timing; raises
    ``RuntimeError`` if any send failed, after flushing the rest.
    """
    from kafka import KafkaProducer
    from tqdm import tqdm

    topic = topic or TopicNames.of(settings).events
    batch_events = settings.replay_batch_events if batch_events is None else batch_events
    producer = connect(KafkaProducer, settings, acks="all", linger_ms=10, batch_size=256 * 1024, retries=5,
                       client_id=f"{settings.app_id}-replay")
    batcher = None
    if batch_events > 1 and not raw:
        partitions = producer.partitions_for(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")
        batcher = EventBatcher(len(partitions), batch_events)
    failures: list[Exception] = []
    sent = messages = 0
    started = time.perf_counter()
    bar = tqdm(total=total, unit="ev", desc=f"send → {topic}", disable=not progress, smoothing=0.1)

    def send(key, value, n):
        nonlocal sent, messages
        producer.send(topic, key=key, value=value).add_errback(failures.append)
        before, sent, messages = sent, sent + n, messages + 1
        if sent // 256 > before // 256:
            bar.update(sent - bar.n)
            if rate > 0:
                if batcher is not None:  # held events would wait out the sleep: send them first
                    for message in batcher.flush():
                        send(*message)
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)

    try:
        for event in events:
            if raw:
                key, value = event if isinstance(event, tuple) else (None, event)
                send(key, value, 1)
            elif batcher is None:
                send(event.user_id.encode(), encode_event(event), 1)
            else:
                for message in batcher.add(event):
                    send(*message)
        if batcher is not None:
            for message in batcher.flush():
                send(*message)
        producer.flush()
        bar.update(sent - bar.n)
    finally:
        bar.close()
        producer.close()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} of {messages} messages ({sent} events) were not delivered; "
                           f"first error: {failures[0]!r}")
    return {"sent": sent, "messages": messages, "seconds": seconds,
            "rate": sent / seconds if seconds else None, "topic": topic}


def read_topic(settings: Settings, which: str, from_beginning: bool = True, timeout_s: float = 5.0,
               max_messages: int | None = None, stop=None) -> Iterator[dict]:
    """Decoded messages of an output topic (``recommendations``, ``feedback``, ``deadletter``).

    Stops after ``timeout_s`` without a message, after ``max_messages``, or when ``stop()`` is true.
    """
    from kafka import KafkaConsumer

    topic = getattr(TopicNames.of(settings), which)
    consumer = connect(KafkaConsumer, settings, topic, group_id=None,
                       auto_offset_reset="earliest" if from_beginning else "latest",
                       enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000))
    seen = 0
    try:
        for message in consumer:
            yield orjson.loads(message.value)
            seen += 1
            if (max_messages is not None and seen >= max_messages) or (stop is not None and stop()):
                return
    finally:
        consumer.close()


def format_message(which: str, doc: dict) -> str:
    """One readable line per output message.

    >>> format_message("feedback", {"user_id": "u", "item_id": "i", "type": "click", "hit": True, "rank": 3,
    ...                              "list_age_s": 12.0})
    'u  click i  HIT at rank 3 (list 12s old)'
    """
    if which == "recommendations":
        items = ", ".join(doc["items"][:5]) + (" …" if len(doc["items"]) > 5 else "")
        return f"{doc['user_id']}  [{doc['scene']}]  v{doc['model_version']}  top{len(doc['items'])}: {items}"
    if which == "feedback":
        if doc.get("list_age_s") is None:
            return f"{doc['user_id']}  {doc['type']} {doc['item_id']}  (no list shown yet)"
        verdict = f"HIT at rank {doc['rank']}" if doc["hit"] else "miss"
        return (f"{doc['user_id']}  {doc['type']} {doc['item_id']}  {verdict} (list "
                f"{doc['list_age_s']:.0f}s old)")
    if which == "ledger":
        return (f"{doc['charge_id']}  {doc['campaign_id']}  {doc['amount']:.6f}  {doc['user_id']} clicked "
                f"{doc['item_id']} (rank {doc['rank']})")
    return f"[{doc.get('topic')}:{doc.get('partition')}@{doc.get('offset')}] {doc.get('reason')}"
