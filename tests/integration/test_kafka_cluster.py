"""The pipeline on the replicated 3-broker Kafka (``deploy/kafka.sh cluster``): topics get 3 replicas and
``min.insync.replicas`` 2, and a real worker turns events into recommendations, feedback and states
with every client (producer acks=all, Faust's consumer group and outputs) talking to the cluster.

Run with ``pytest tests/integration/test_kafka_cluster.py --kafka-cluster`` (or with the cluster up).
"""
from __future__ import annotations

import time

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from streams.cli import start_worker, stop_worker, wait_ready
from streams.replay import read_topic
from streams.topics import TopicNames, admin_client, ensure_topics
from tests.integration.test_pipeline import (CATALOGUE, USERS, Producer, assert_states_hold_each_event_once,
                                             latest_lists, wait_for)

pytestmark = pytest.mark.integration


def test_topics_are_created_with_three_replicas_and_min_insync_two(cluster_settings):
    settings = cluster_settings
    wanted = TopicNames.of(settings).partitions(settings)
    ensure_topics(settings)
    admin = admin_client(settings)
    try:
        deadline = time.time() + 60  # new topics reach every broker's metadata a moment after creation
        while True:
            described = {t.get("name", t.get("topic")): t["partitions"]
                         for t in admin.describe_topics(list(wanted))}
            if all(len(described.get(name, ())) == n for name, n in wanted.items()) or time.time() > deadline:
                break
            time.sleep(0.2)
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted])
    finally:
        admin.close()
    for name, n in wanted.items():
        assert len(described[name]) == n
        assert all(sorted(p["replica_nodes"]) == [1, 2, 3] for p in described[name]), described[name]
        assert configs["topic"][name]["min.insync.replicas"]["value"] == "2"


def test_a_worker_processes_events_end_to_end_on_the_cluster(cluster_settings, redis_store, tmp_path):
    settings = cluster_settings
    ensure_topics(settings)
    producer = Producer(settings)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_ready(settings.web_port, worker)
        for step in range(3):
            for n, user in enumerate(USERS):
                item = CATALOGUE[(7 * step + n) % len(CATALOGUE)]
                producer.event(user, item, "click", 1_700_000_000.0 + step)
        producer.raw(b"not json")
        stats = wait_for(settings.web_port, len(producer.sent) + 1)
    finally:
        stop_worker(worker)
        producer.close()
    assert worker.returncode == 0, f"worker exited with {worker.returncode} (log: {tmp_path / 'worker.log'})"
    assert stats["deadletters"] == {"invalid_json": 1}
    assert set(latest_lists(settings)) == set(USERS)
    feedback = {f["event_id"] for f in read_topic(settings, "feedback", timeout_s=3)}
    assert feedback == {doc["event_id"] for doc, _, _ in producer.sent}
    assert_states_hold_each_event_once(settings, redis_store, producer.sent)
    admin = admin_client(settings)
    try:
        offsets = admin.describe_topics(["__consumer_offsets"])[0]["partitions"]
    finally:
        admin.close()
    assert all(len(p["replica_nodes"]) == 3 for p in offsets), "committed offsets are replicated too"
