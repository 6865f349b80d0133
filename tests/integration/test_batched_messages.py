"""Batched event messages on the real broker and Redis: a stream sent as JSON arrays of events gives the
states and lists of the same stream sent one event per message, and a bad event in the middle of a
batch is dead-lettered alone, with its index, while its neighbours apply."""
from __future__ import annotations

import dataclasses

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from models.events import EVENT_TYPES, Event
from models.state import StateCodec
from streams.codec import encode_events
from streams.kafka_clients import connect
from streams.replay import read_topic, replay
from streams.topics import TopicNames, ensure_topics
from tests.integration.test_pipeline import run_worker_until

pytestmark = pytest.mark.integration

USERS = [f"user-{i}" for i in range(10)]
CATALOGUE = [f"sku-{i:03d}" for i in range(40)]
HISTORY_FIELDS = ("n_events", "hist_item", "hist_type", "hist_scene", "hist_ts")


def stream(prefix: str, n: int = 120, seed: int = 11) -> list[Event]:
    """The same sequence of events for users named ``prefix + user``."""
    rng = np.random.default_rng(seed)
    return [Event(prefix + USERS[rng.integers(len(USERS))], CATALOGUE[rng.integers(len(CATALOGUE))],
                  EVENT_TYPES[rng.integers(4)], 1_700_000_000.0 + t, ("default", "search")[t % 2],
                  f"{prefix}e{t}")
            for t in range(n)]


def assert_same_list(single: dict, batched: dict, tol: float = 1e-3) -> None:
    """Equal lists, but for items whose scores tie within ``tol``: micro-batches cut the two streams at
    other places, and interests are stored as float16 between batches."""
    assert single["scene"] == batched["scene"]
    assert np.allclose(single["scores"], batched["scores"], atol=tol)
    floor = single["scores"][-1] + tol
    assert ({i for i, s in zip(single["items"], single["scores"]) if s > floor}
            == {i for i, s in zip(batched["items"], batched["scores"]) if s > floor})


def test_a_batched_stream_gives_the_states_and_lists_of_the_single_event_stream(settings, redis_store,
                                                                                tmp_path):
    settings = dataclasses.replace(settings, train_enabled=False)
    ensure_topics(settings)
    single, batched = stream("s-"), stream("b-")
    # Two more events of one user: one message each in the single stream, one batch with a bad event
    # between them in the batched stream.
    tail = [Event("s-" + USERS[0], CATALOGUE[n], "click", 1_700_001_000.0 + n, event_id=f"s-tail{n}")
            for n in (1, 2)]
    btail = [dataclasses.replace(e, user_id="b-" + USERS[0], event_id="b" + e.event_id[1:]) for e in tail]
    bad = {"user_id": "b-" + USERS[0], "item_id": CATALOGUE[3], "type": "like", "ts": 1_700_001_001.5}

    assert replay(settings, single + tail, batch_events=1, progress=False)["messages"] == len(single) + 2
    sent = replay(settings, batched, batch_events=7, progress=False)
    assert sent["sent"] == len(batched) and sent["messages"] < len(batched) / 3
    docs = orjson.loads(encode_events(btail))
    producer = connect(KafkaProducer, settings, acks="all")
    try:
        meta = producer.send(TopicNames.of(settings).events, key=btail[0].user_id.encode(),
                             value=orjson.dumps([docs[0], bad, docs[1]])).get(timeout=30)
    finally:
        producer.close()
    total = len(single) + 2 + len(batched) + 3
    run_worker_until(settings, tmp_path / "worker.log", total)

    dead = list(read_topic(settings, "deadletter", timeout_s=3))
    assert len(dead) == 1
    assert (dead[0]["partition"], dead[0]["offset"], dead[0]["index"]) == (meta.partition, meta.offset, 1)
    assert orjson.loads(dead[0]["value"]) == bad and "unknown event type 'like'" in dead[0]["reason"]

    codec = StateCodec(settings.engine_config())
    for user in USERS:
        one, many = (codec.decode([redis_store.read_state(p + user)])[0] for p in ("s-", "b-"))
        for name in HISTORY_FIELDS:
            assert one[name].tolist() == many[name].tolist(), (user, name)
        assert np.allclose(one["interest"].astype(np.float32), many["interest"].astype(np.float32), atol=2e-3)
    tail_state = codec.decode([redis_store.read_state(btail[0].user_id)])[0]
    assert (int(tail_state["offset"]), int(tail_state["fence_index"])) == (meta.offset, 2)

    lists = {}
    for doc in read_topic(settings, "recommendations", timeout_s=3):
        lists[doc["user_id"]] = doc
    for user in USERS:
        assert_same_list(lists["s-" + user], lists["b-" + user])
    feedback = list(read_topic(settings, "feedback", timeout_s=3))
    by_event = {f["event_id"]: f for f in feedback}
    # one feedback record per applied event in both framings, with the same fields. Its verdict is
    # against the list shown before the event's micro-batch, so it depends on where batches were cut
    assert len(by_event) == len(feedback) == total - 1
    for event in single + tail:
        one, many = by_event[event.event_id], by_event["b" + event.event_id[1:]]
        assert set(one) == set(many) and (one["item_id"], one["type"], one["ts"]) == (
            many["item_id"], many["type"], many["ts"])


def test_a_redelivered_batched_topic_leaves_every_state_as_it_was(settings, redis_store, tmp_path):
    """A crash before the offset commit, simulated by a new consumer group over the same state: every
    event of every batched message is fenced off by its (partition, offset, index)."""
    settings = dataclasses.replace(settings, train_enabled=False)
    ensure_topics(settings)
    events = stream("r-", n=80)
    replay(settings, events, batch_events=9, progress=False)
    run_worker_until(settings, tmp_path / "first.log", len(events))
    before = {u: redis_store.read_state("r-" + u) for u in USERS}
    again = dataclasses.replace(settings, app_id=settings.app_id + "-again")
    stats = run_worker_until(again, tmp_path / "again.log", len(events))
    assert stats["replayed"] == len(events)
    assert {u: redis_store.read_state("r-" + u) for u in USERS} == before
