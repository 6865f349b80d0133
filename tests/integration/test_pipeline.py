"""End to end on the real broker and Redis: a real Faust worker process, real topics, real state.

Events for several users across partitions go in; recommendations, feedback and dead letters must
come out as specified, and the Redis states must hold every valid event exactly once, also after
the whole topic is delivered a second time (a crash before the offset commit, simulated by a new
consumer group over the same state).
"""
from __future__ import annotations

import base64
import subprocess
import time
from collections import defaultdict

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from models.events import EVENT_TYPES
from models.state import StateCodec
from streams.cli import start_worker, stop_worker, wait_ready, worker_stats
from streams.kafka_clients import connect
from streams.topics import TopicNames, admin_client, ensure_topics
from tests.integration.outputs import read_to_end

pytestmark = pytest.mark.integration

USERS = [f"user-{i}" for i in range(8)]
CATALOGUE = [f"sku-{i:03d}" for i in range(40)]
BAD = {
    b"this is not json": "not valid JSON",
    b'{"item_id": "sku-001", "type": "view", "ts": 1.0}': "missing required field 'user_id'",
    b'{"user_id": "u", "item_id": "sku-001", "type": "view", "ts": "yesterday"}': "field 'ts' must be",
    b'{"user_id": "u", "item_id": "sku-001", "type": "like", "ts": 1.0}': "unknown event type 'like'",
    b'{"user_id": "u", "item_id": "sku-001", "type": "view", "ts": 1.0, "scene": "moon"}':
        "unknown scene 'moon'",
}


class Producer:
    """Sends events synchronously and remembers where each valid one landed."""

    def __init__(self, settings):
        self.topic = TopicNames.of(settings).events
        self.kafka = connect(KafkaProducer, settings, acks="all")
        self.sent = []  # (event dict, partition, offset)

    def event(self, user, item, etype, ts, scene="default"):
        doc = {"user_id": user, "item_id": item, "type": etype, "ts": ts, "scene": scene,
               "event_id": f"e{len(self.sent)}", "client": "test"}  # unknown field: kept and ignored
        meta = self.kafka.send(self.topic, key=user.encode(), value=orjson.dumps(doc)).get(timeout=30)
        self.sent.append((doc, meta.partition, meta.offset))

    def raw(self, value):
        self.kafka.send(self.topic, value=value).get(timeout=30)

    def close(self):
        self.kafka.close()


def wait_for(port, events, timeout_s=120):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        stats = worker_stats(port)
        if stats["events"] >= events:
            return stats
        time.sleep(0.3)
    raise AssertionError(f"worker processed {stats['events']} of {events} events in {timeout_s}s: {stats}")


def pause_writes(store, *pause):
    """``CLIENT PAUSE *pause`` on every master (``CLIENT UNPAUSE`` without arguments)."""
    command = ("CLIENT", "PAUSE", *pause) if pause else ("CLIENT", "UNPAUSE")
    if store.cluster:
        store.redis.execute_command(*command, target_nodes=store.redis.PRIMARIES)
    else:
        store.redis.execute_command(*command)


def wait_for_stage(port, stage, events, timeout_s=120):
    """Wait until ``events`` events have passed ``stage`` of the worker (``/stats`` stages)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        stats = worker_stats(port)
        if stats["stages"][stage]["events"] >= events:
            return stats
        time.sleep(0.2)
    raise AssertionError(f"{stats['stages'][stage]['events']} of {events} events passed "
                         f"{stage} in {timeout_s}s")


def run_worker_until(settings, log_path, events):
    """Start a worker, wait until it has processed ``events`` events, stop it; returns its stats then.
    A stopped worker must exit cleanly: a crash exit would make its supervisor count a failure."""
    worker = start_worker(settings, log_path)
    try:
        wait_ready(settings.web_port, worker)
        stats = wait_for(settings.web_port, events)
    finally:
        stop_worker(worker)
    assert worker.returncode == 0, f"worker exited with {worker.returncode} on SIGTERM (log: {log_path})"
    return stats


def latest_lists(settings):
    """Each user's newest list (a user's lists share a partition, so the last one read is the newest)."""
    return {doc["user_id"]: doc for doc in read_to_end(settings, "recommendations")}


def test_events_to_recommendations_feedback_and_state(settings, redis_store, tmp_path):
    ensure_topics(settings)
    producer = Producer(settings)
    rng = np.random.default_rng(7)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_ready(settings.web_port, worker)

        # Phase 1: three events per user, mixed types and scenes, plus every kind of bad event.
        for step in range(3):
            for user in USERS:
                producer.event(user, CATALOGUE[rng.integers(len(CATALOGUE))], EVENT_TYPES[rng.integers(4)],
                               1_700_000_000.0 + 60 * step, scene=["default", "search"][step % 2])
        for value in BAD:
            producer.raw(value)
        wait_for(settings.web_port, len(producer.sent) + len(BAD))
        first = latest_lists(settings)
        assert set(first) == set(USERS), "every user gets a recommendation"
        for doc in first.values():
            assert len(doc["items"]) == settings.k and set(doc["items"]) <= set(CATALOGUE)
            assert doc["scores"] == sorted(doc["scores"], reverse=True)
            assert doc["scene"] == "default"

        # Phase 2: half the users act on the list they were shown (at rank 2), half on something else.
        expect_hit = {}
        for i, user in enumerate(USERS):
            shown = first[user]["items"]
            item = shown[1] if i % 2 == 0 else next(c for c in CATALOGUE if c not in shown)
            expect_hit[user] = i % 2 == 0
            producer.event(user, item, "click", 1_700_000_000.0 + 600, scene="product")
        stats = wait_for(settings.web_port, len(producer.sent) + len(BAD))
    finally:
        stop_worker(worker)
        producer.close()

    partitions = {p for _, p, _ in producer.sent}
    assert len(partitions) >= 2, "users must spread over several partitions for this test to mean anything"

    feedback = list(read_to_end(settings, "feedback"))
    assert sorted(f["event_id"] for f in feedback) == sorted(d["event_id"] for d, _, _ in producer.sent)
    by_event = {f["event_id"]: f for f in feedback}
    for user in USERS:
        first_event = next(d for d, _, _ in producer.sent if d["user_id"] == user)
        assert by_event[first_event["event_id"]]["list_age_s"] is None  # nothing shown before it
        last = [d for d, _, _ in producer.sent if d["user_id"] == user][-1]
        fb = by_event[last["event_id"]]
        assert fb["hit"] is expect_hit[user]
        assert fb["rank"] == (2 if expect_hit[user] else None)
        assert fb["list_age_s"] == pytest.approx(600 - 120)
    assert stats["online"]["events_with_list"] >= len(USERS)

    dead = list(read_to_end(settings, "deadletter"))
    assert len(dead) == len(BAD)
    for record in dead:
        assert record["value"].encode() in BAD
        assert BAD[record["value"].encode()] in record["reason"]
        assert record["topic"] == TopicNames.of(settings).events and record["offset"] >= 0

    assert_states_hold_each_event_once(settings, redis_store, producer.sent)
    assert_outputs_keyed_like_events(settings, producer.sent)


def assert_outputs_keyed_like_events(settings, sent):
    """Outputs are keyed by user and partitioned as producers partition events (the Kafka default)."""
    from kafka import KafkaConsumer

    event_partition = {doc["user_id"]: partition for doc, partition, _ in sent}
    names = TopicNames.of(settings)
    consumer = connect(KafkaConsumer, settings, names.recommendations, names.feedback, group_id=None,
                       auto_offset_reset="earliest", consumer_timeout_ms=3000)
    try:
        seen = [(m.topic, m.partition, m.key, orjson.loads(m.value)["user_id"]) for m in consumer]
    finally:
        consumer.close()
    assert {topic for topic, *_ in seen} == {names.recommendations, names.feedback}
    for topic, partition, key, user in seen:
        assert key == user.encode() and partition == event_partition[user], (topic, partition, user)


def assert_states_hold_each_event_once(settings, redis_store, sent):
    codec = StateCodec(settings.engine_config())
    ids = redis_store.item_ids()
    per_user = defaultdict(list)
    for doc, partition, offset in sent:
        per_user[doc["user_id"]].append((doc, partition, offset))
    for user, events in per_user.items():
        state = codec.decode([redis_store.read_state(user)])[0]
        assert state["n_events"] == len(events)
        history = [ids[i] for i in state["hist_item"] if i >= 0]
        assert history == [d["item_id"] for d, _, _ in events][-settings.history:]
        assert (int(state["partition"]), int(state["offset"])) == events[-1][1:]


def test_redelivery_is_applied_once(settings, redis_store, tmp_path):
    """A second consumer group re-reads every event: states must not change, outputs carry on."""
    ensure_topics(settings)
    producer = Producer(settings)
    for step in range(4):
        for user in USERS[:4]:
            producer.event(user, CATALOGUE[(step * 7 + len(user)) % 40], "view", 1_700_000_000.0 + step)
    producer.close()

    run_worker_until(settings, tmp_path / "first.log", len(producer.sent))
    before = {u: redis_store.read_state(u) for u in USERS[:4]}
    assert_states_hold_each_event_once(settings, redis_store, producer.sent)

    replay_settings = type(settings).from_env(**{**settings.__dict__, "app_id": settings.app_id + "-again"})
    worker = start_worker(replay_settings, tmp_path / "second.log")
    try:
        wait_ready(settings.web_port, worker)
        stats = wait_for(settings.web_port, len(producer.sent))
    finally:
        stop_worker(worker)
    assert stats["replayed"] == len(producer.sent)
    assert stats["feedback"] == 0 and stats["recommendations"] == 0
    assert {u: redis_store.read_state(u) for u in USERS[:4]} == before


def test_killed_worker_loses_nothing_and_applies_each_event_once(settings, redis_store, tmp_path):
    """SIGKILL a worker while batches are in flight, start another in the same group: every event is
    in the states exactly once and has its feedback. Redis writes are paused before the second half
    of the events arrives, so its batches are stuck between consumption and their state write for
    several offset-commit intervals when the worker dies: an event acked (made committable) before
    its state is written would be lost here."""
    import os
    import signal

    ensure_topics(settings)
    users = [f"user-{i}" for i in range(24)]

    def produce(steps):
        producer = Producer(settings)
        for step in steps:
            for n, user in enumerate(users):
                producer.event(user, CATALOGUE[(step * 3 + n) % 40], EVENT_TYPES[step % 4],
                               1_700_000_000.0 + step)
        producer.close()
        return producer.sent

    sent = produce(range(10))
    worker = start_worker(settings, tmp_path / "killed.log")
    try:
        wait_ready(settings.web_port, worker)
        wait_for(settings.web_port, len(sent))
        # Writes stay paused until the worker is dead (the pause's own limit is only a safety net).
        pause_writes(redis_store, "300000", "WRITE")
        try:
            first_half = len(sent)
            sent += produce(range(10, 20))
            wait_for_stage(settings.web_port, "deliver", first_half + 1)  # a batch is stuck before its write
            time.sleep(3.0)  # several of the worker's offset-commit intervals: an early ack would commit now
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        finally:
            pause_writes(redis_store)
    finally:
        stop_worker(worker)

    last = {doc["user_id"]: offset for doc, _, offset in sent}
    worker = start_worker(settings, tmp_path / "restarted.log")
    try:
        wait_ready(settings.web_port, worker)
        codec = StateCodec(settings.engine_config())
        deadline = time.time() + 120
        while time.time() < deadline:
            states = codec.decode([redis_store.read_state(u) for u in users])
            if all(int(s["offset"]) == last[u] for s, u in zip(states, users)):
                break
            time.sleep(0.5)
    finally:
        stop_worker(worker)
    assert_states_hold_each_event_once(settings, redis_store, sent)
    feedback = {f["event_id"] for f in read_to_end(settings, "feedback")}
    assert feedback == {d["event_id"] for d, _, _ in sent}   # at least once each, none lost
    assert set(latest_lists(settings)) == set(users)


def test_oversized_bad_events_are_dead_lettered_and_the_worker_goes_on(settings, redis_store, tmp_path):
    """Bad events close to the broker's 1 MiB message limit: carried whole, their dead letters would
    not fit in a Kafka message (base64 grows bytes by a third, JSON escapes a control byte to six).
    Each must still get a dead letter, holding a prefix of the value and where the whole one is, and
    the events after them must be ranked as usual."""
    ensure_topics(settings)
    producer = Producer(settings)
    big = {b"\xff" * 900_000: "value_base64", b"\x01" * 300_000: "value"}
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_ready(settings.web_port, worker)
        for value in big:
            producer.raw(value)
        for step in range(2):
            for user in USERS[:4]:
                producer.event(user, CATALOGUE[step], "view", 1_700_000_000.0 + step)
        stats = wait_for(settings.web_port, len(producer.sent) + len(big), timeout_s=60)
    finally:
        stop_worker(worker)
        producer.close()
    assert stats["deadletters"] == {"invalid_json": len(big)}, stats["deadletters"]
    dead = list(read_to_end(settings, "deadletter"))
    assert len(dead) == len(big)
    for record, (value, field) in zip(sorted(dead, key=lambda r: r["offset"]), big.items()):
        assert record["reason"].startswith("not valid JSON")
        assert record["value_bytes"] == len(value) and record["value_truncated"] is True
        kept = base64.b64decode(record[field]) if field == "value_base64" else record[field].encode()
        assert 0 < len(kept) < len(value) and value.startswith(kept)
        assert record["topic"] == TopicNames.of(settings).events and record["offset"] >= 0
    assert set(latest_lists(settings)) == set(USERS[:4])


def test_a_worker_that_cannot_deliver_exits_and_a_restart_loses_nothing(settings, redis_store, tmp_path):
    """Outputs the broker refuses (here: a recommendations topic whose message limit is smaller than
    any batch of recommendations) must not leave the worker alive but stuck on events it can never
    ack: it exits with an error, so that its supervisor restarts it. The events are not committed,
    so once the topic is fixed, a restarted worker ranks every one of them."""
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

    names = TopicNames.of(settings)
    admin = admin_client(settings)
    limit = {"max.message.bytes": "200"}
    admin.create_topics([NewTopic(names.recommendations, settings.partitions, settings.replication_factor,
                                  topic_configs=limit)])
    ensure_topics(settings)
    producer = Producer(settings)
    for step in range(2):
        for user in USERS:
            producer.event(user, CATALOGUE[step], "view", 1_700_000_000.0 + step)
    producer.close()
    log_path = tmp_path / "refused.log"
    worker = start_worker(settings, log_path)
    try:
        worker.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker whose outputs the broker refuses was still alive after 120 s; its log ends:\n"
                    + "\n".join(log_path.read_text(errors="replace").splitlines()[-40:]))
    finally:
        stop_worker(worker)
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, names.recommendations,
                                            configs={"max.message.bytes": "1048588"})])
        admin.close()
    assert worker.returncode != 0
    assert "MessageSizeTooLargeError" in log_path.read_text()

    run_worker_until(settings, tmp_path / "restarted.log", len(producer.sent))
    assert_states_hold_each_event_once(settings, redis_store, producer.sent)
    feedback = {f["event_id"] for f in read_to_end(settings, "feedback")}
    assert feedback == {d["event_id"] for d, _, _ in producer.sent}
    assert set(latest_lists(settings)) == set(USERS)


def test_a_layout_change_with_the_previous_layout_named_converts_states(settings, redis_store, tmp_path):
    """HISTORY grows from 8 to 12 between two runs of the worker. With ATTNFLOW_STATE_MIGRATE_FROM,
    the second worker converts each stored state when it reads it: no dead letters, every event once,
    the old history kept, the states written back in the new layout."""
    from dataclasses import replace

    ensure_topics(settings)
    producer = Producer(settings)
    for step in range(6):
        for user in USERS[:4]:
            producer.event(user, CATALOGUE[(step * 5 + len(user)) % 40], "view", 1_700_000_000.0 + step)
    run_worker_until(settings, tmp_path / "old.log", len(producer.sent))
    first = len(producer.sent)

    longer = replace(settings, history=12, state_migrate_from=f"history={settings.history}")
    for step in range(6, 9):
        for user in USERS[:4]:
            producer.event(user, CATALOGUE[(step * 5 + len(user)) % 40], "view", 1_700_000_000.0 + step)
    producer.close()
    stats = run_worker_until(longer, tmp_path / "new.log", len(producer.sent) - first)
    assert stats["migrated"] == 4 and not stats["deadletters"] and stats["replayed"] == 0
    assert_states_hold_each_event_once(longer, redis_store, producer.sent)  # 9 events each, all kept
    longer_size = StateCodec(longer.engine_config()).dtype.itemsize
    assert {len(redis_store.read_state(u)) for u in USERS[:4]} == {longer_size}
