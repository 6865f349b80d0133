"""A real worker on the real broker and Redis exports every metric the dashboard and the alerts query.

The worker runs with its in-process trainer and a short snapshot interval, gets valid events, one bad one
and one request, and is scraped until every queried series has a sample (or the time runs out).
"""

from __future__ import annotations

import dataclasses
import time
import urllib.request

import orjson
import pytest
from kafka import KafkaProducer

from streams.cli import start_worker, stop_worker, wait_ready
from streams.kafka_clients import connect
from streams.topics import TopicNames, ensure_topics
from tests.integration.test_pipeline import wait_for
from tests.streams.test_dashboard import exported_names, queried_metrics

pytestmark = pytest.mark.integration


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_real_worker_exports_every_metric_the_dashboard_queries(settings, redis_store, tmp_path):
    settings = dataclasses.replace(settings, snapshot_interval_s=1.0, train_batch_size=8)
    ensure_topics(settings)
    topic = TopicNames.of(settings).events
    producer = connect(KafkaProducer, settings, acks="all")
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_ready(settings.web_port, worker)
        for wave in range(2):  # the second wave's events find the lists the first wave made: online HR
            for i in range(32):
                user = f"user-{i % 8}"
                doc = {
                    "user_id": user,
                    "item_id": f"sku-{i % 13}",
                    "type": "click",
                    "ts": 1_700_000_000.0 + i,
                }
                producer.send(topic, key=user.encode(), value=orjson.dumps(doc))
            producer.flush(30)
            wait_for(settings.web_port, 32 * (wave + 1))
        producer.send(topic, key=b"user-0", value=b"this is not json")
        producer.flush(30)
        wanted, have, deadline = queried_metrics(), set(), time.monotonic() + 120
        while time.monotonic() < deadline:
            scrape(settings.web_port, "/recommendations?user_id=user-1")  # 503 until the request path is warm
            status, text = scrape(settings.web_port)
            assert status == 200
            have = exported_names(text)
            if wanted <= have:
                break
            time.sleep(0.5)
    finally:
        stop_worker(worker)
        producer.close()
    missing = sorted(wanted - have)
    assert missing == [], (
        f"{missing} queried but not exported by a real worker (log: {tmp_path / 'worker.log'})"
    )
