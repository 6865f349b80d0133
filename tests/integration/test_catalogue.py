"""Per-scene catalogues end to end: `attnflow catalogue` → catalogue topic → a real worker → Redis → lists.

An item hidden mid-stream is in no list emitted for an event sent after the change reached the store;
a scene ranks only the items of its catalogue; a bad catalogue message is dead-lettered with its reason.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest
from kafka import KafkaProducer

from streams.cli import start_worker, stop_worker, wait_ready
from streams.kafka_clients import connect
from streams.replay import read_topic
from streams.topics import TopicNames, ensure_topics
from tests.conftest import REPO
from tests.integration.test_pipeline import CATALOGUE, USERS, Producer, latest_lists, wait_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def wait_for_catalogue(store, version, timeout_s=60):
    deadline = time.time() + timeout_s
    while store.catalogue_version() < version:
        if time.time() > deadline:
            raise AssertionError(f"catalogue at {store.catalogue_version()} of {version} in {timeout_s}s")
        time.sleep(0.2)


def push_catalogue(settings, path, *flags):
    env = {**os.environ, **settings.as_env()}
    return subprocess.run([sys.executable, "-m", "streams.cli", "catalogue", str(path), *flags], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_hidden_items_leave_every_list_and_scenes_rank_their_catalogue(settings, redis_store, tmp_path):
    ensure_topics(settings)
    producer = Producer(settings)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_ready(settings.web_port, worker)
        # Phase 1: every user views the same few items, so they fill everyone's lists.
        for step, item in enumerate(CATALOGUE[:6] * 2):
            for user in USERS:
                producer.event(user, item, "view", T0 + step)
        wait_for(settings.web_port, len(producer.sent))
        before = latest_lists(settings)
        shown = Counter(item for doc in before.values() for item in doc["items"])
        hidden = shown.most_common(1)[0][0]
        search_only = [item for item in CATALOGUE[:6] if item != hidden][:2]

        changes = tmp_path / "changes.jsonl"
        # Search's catalogue becomes exactly the two search-only items, so its lists hold nothing else.
        default_only = [item for item in CATALOGUE if item != hidden and item not in search_only]
        lines = [{"item_id": hidden, "action": "hide"}] + [
            {"item_id": item, "action": "update", "scenes": ["search"]} for item in search_only] + [
            {"item_id": item, "action": "update", "scenes": ["default"]} for item in default_only]
        changes.write_text("\n".join(orjson.dumps(line).decode() for line in lines)
                           + '\n{"item_id": "x", "scenes": ["moon"]}\n')
        refused = push_catalogue(settings, changes)
        assert refused.returncode == 1 and f":{len(lines) + 1}: unknown scene 'moon'" in refused.stderr
        assert redis_store.catalogue_version() == 0, "a file with a bad line sends nothing"
        sent = push_catalogue(settings, changes, "--skip-bad")
        assert sent.returncode == 0, sent.stderr
        kafka = connect(KafkaProducer, settings, acks="all")
        kafka.send(TopicNames.of(settings).catalogue, value=b'{"action": "hide"}').get(timeout=30)
        kafka.close()
        wait_for_catalogue(redis_store, len(lines))

        # Phase 2: every user acts again, in the default scene and in search.
        phase2 = len(producer.sent)
        for step, scene in enumerate(["default", "search"]):
            for user in USERS:
                producer.event(user, CATALOGUE[10 + step], "click", T0 + 100 + step, scene=scene)
        wait_for(settings.web_port, len(producer.sent))
    finally:
        stop_worker(worker)
        producer.close()

    assert shown[hidden] >= 1, "the hidden item must have been in some list for this test to mean anything"
    after = [d for d in read_topic(settings, "recommendations", timeout_s=3) if d["event_ts"] >= T0 + 100]
    assert len(after) >= len(USERS) and len(producer.sent) - phase2 == 2 * len(USERS)
    for doc in after:
        assert hidden not in doc["items"], doc
        if doc["scene"] == "default":
            assert not set(search_only) & set(doc["items"]), doc
    searched = [doc for doc in after if doc["scene"] == "search"]
    assert len(searched) >= len(USERS)
    for doc in searched:
        assert doc["items"] and set(doc["items"]) <= set(search_only), doc
    dead = [d for d in read_topic(settings, "deadletter", timeout_s=3)
            if d["topic"] == TopicNames.of(settings).catalogue]
    assert len(dead) == 1 and "missing required field 'item_id'" in dead[0]["reason"]
