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


def replay(settings: Settings, events, total: int | None = None, rate: float = 0.0,
           progress: bool = True, raw: bool = False, topic: str | None = None) -> dict:
    """Send events (``Event`` objects, or bytes when ``raw``) to the events topic, keyed by user id
    (``topic``: another topic of ``TopicNames``, e.g. ``(key, value)`` pairs to the catalogue when ``raw``).

    ``rate`` is events per second (0 = as fast as the broker takes them). Returns counts and timing;
    raises ``RuntimeError`` if any send failed, after flushing the rest.
    """
    from kafka import KafkaProducer
    from tqdm import tqdm

    topic = topic or TopicNames.of(settings).events
    producer = connect(KafkaProducer, settings, acks="all", linger_ms=10, batch_size=256 * 1024, retries=5,
                       client_id=f"{settings.app_id}-replay")
    failures: list[Exception] = []
    sent = 0
    started = time.perf_counter()
    bar = tqdm(total=total, unit="msg", desc=f"send → {topic}", disable=not progress, smoothing=0.1)
    try:
        for event in events:
            if raw:
                key, value = event if isinstance(event, tuple) else (None, event)
            else:
                key, value = event.user_id.encode(), encode_event(event)
            producer.send(topic, key=key, value=value).add_errback(failures.append)
            sent += 1
            if sent % 256 == 0:
                bar.update(256)
                if rate > 0:
                    ahead = sent / rate - (time.perf_counter() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        producer.flush()
        bar.update(sent % 256)
    finally:
        bar.close()
        producer.close()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} of {sent} events were not delivered; first error: {failures[0]!r}")
    return {"sent": sent, "seconds": seconds, "rate": sent / seconds if seconds else None, "topic": topic}


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
        return f"{doc['user_id']}  {doc['type']} {doc['item_id']}  {verdict} (list {doc['list_age_s']:.0f}s old)"
    if which == "ledger":
        return (f"{doc['charge_id']}  {doc['campaign_id']}  {doc['amount']:.6f}  {doc['user_id']} clicked "
                f"{doc['item_id']} (rank {doc['rank']})")
    return f"[{doc.get('topic')}:{doc.get('partition')}@{doc.get('offset')}] {doc.get('reason')}"
