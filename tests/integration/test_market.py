"""The attention market end to end: `attnflow campaigns` → campaigns topic → a real worker → sponsored
slots in the lists → clicks on them → charges in Redis and on the ledger topic. A worker is SIGKILLed while
batches holding clicks are stuck before their writes; after a restart every charge is in the ledger once
(a redelivered record repeats it exactly, with the same charge id) and Redis spend equals the ledger's sum.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import orjson
import pytest

from models.market.pacing import day_of
from models.state import StateCodec
from streams.cli import start_worker, stop_worker, wait_ready
from streams.replay import read_topic
from streams.topics import ensure_topics
from tests.conftest import REPO
from tests.integration.test_metrics_exported import scrape
from tests.integration.test_pipeline import (CATALOGUE, Producer, latest_lists, pause_writes, wait_for,
                                             wait_for_stage)
from tests.streams.test_dashboard import exported_names, queried_metrics

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
USERS = [f"user-{i}" for i in range(24)]
CAMPAIGNS = [{"campaign_id": f"c{n}", "advertiser": f"adv-{n % 2}", "items": CATALOGUE[n * 8:(n + 1) * 8],
              "bid": 0.1 * (n + 1), "daily_budget": 1000.0} for n in range(4)]


def market_settings(settings):
    return dataclasses.replace(settings, sponsored_slots=2, pacing=False, attribution_window_s=86_400.0,
                               train_enabled=False, ledger_interval_s=0.5)


def click_sponsored(producer, lists, users, ts):
    """Each user acts on the first sponsored item of their latest list, then views another item (which may
    be sponsored too: any event on a sponsored item is a click); returns how many clicks were aimed."""
    clicks = 0
    for user in users:
        sponsored = (lists.get(user) or {}).get("sponsored") or []
        if sponsored:
            producer.event(user, sponsored[0]["item_id"], "click", ts)
            clicks += 1
        producer.event(user, CATALOGUE[(USERS.index(user) * 5 + int(ts)) % 40], "view", ts + 0.5)
    return clicks


def assert_exports_what_the_dashboard_queries(port: int) -> None:
    """The market's series that the Grafana dashboard and the alerts query are on a real worker's /metrics."""
    wanted, deadline = queried_metrics(market=True), time.monotonic() + 30
    while True:
        status, text = scrape(port)
        assert status == 200
        have = exported_names(text)
        if wanted <= have or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert sorted(wanted - have) == [], "queried by the dashboard or alerts, not on the worker's /metrics"


def test_a_killed_worker_charges_each_click_once_and_spend_equals_the_ledger(settings, redis_store, tmp_path):
    settings = market_settings(settings)
    ensure_topics(settings)
    path = tmp_path / "campaigns.jsonl"
    path.write_text("\n".join(orjson.dumps(c).decode() for c in CAMPAIGNS)
                    + '\n{"campaign_id": "bad", "bid": 1}\n')
    env = {**os.environ, **settings.as_env()}
    pushed = subprocess.run([sys.executable, "-m", "streams.cli", "campaigns", str(path), "--skip-bad"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert pushed.returncode == 0 and "sent 4 campaign messages" in pushed.stdout, pushed.stderr

    producer = Producer(settings)
    worker = start_worker(settings, tmp_path / "killed.log")
    try:
        wait_ready(settings.web_port, worker)
        deadline = time.time() + 60
        while len(redis_store.campaigns()[1]) < 4:
            assert time.time() < deadline, "campaigns not applied in 60s"
            time.sleep(0.3)
        for step in range(4):  # histories over the whole catalogue: lists with sponsored slots
            for n, user in enumerate(USERS):
                producer.event(user, CATALOGUE[(step * 7 + n) % 40], "view", T0 + step)
        wait_for(settings.web_port, len(producer.sent))
        lists = latest_lists(settings)
        assert sum(1 for doc in lists.values() if doc.get("sponsored")) >= len(USERS) // 2
        clicks = click_sponsored(producer, lists, USERS[:12], T0 + 10)
        wait_for(settings.web_port, len(producer.sent))
        charged_before = len(redis_store.ledger_entries(0, 10_000))
        assert clicks and charged_before, "no click was charged before the kill"
        assert_exports_what_the_dashboard_queries(settings.web_port)
        # The next clicks' batches get stuck before their writes, and the worker dies with them in flight.
        pause_writes(redis_store, "300000", "WRITE")
        try:
            delivered = len(producer.sent)
            clicks += click_sponsored(producer, latest_lists(settings), USERS[12:], T0 + 20)
            wait_for_stage(settings.web_port, "deliver", delivered + 1)
            time.sleep(2.0)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        finally:
            pause_writes(redis_store)
    finally:
        stop_worker(worker)

    worker = start_worker(settings, tmp_path / "restarted.log")
    try:
        wait_ready(settings.web_port, worker)
        clicks += click_sponsored(producer, latest_lists(settings), USERS, T0 + 30)
        last = {doc["user_id"]: offset for doc, _, offset in producer.sent}
        codec = StateCodec(settings.engine_config())
        deadline = time.time() + 120
        while time.time() < deadline:
            states = codec.decode([redis_store.read_state(u) for u in USERS])
            entries = len(redis_store.ledger_entries(0, 10_000))
            if all(int(s["offset"]) == last[u] for s, u in zip(states, USERS)) and \
                    redis_store.ledger_published() == entries:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the restarted worker did not finish the events and the ledger in 120s")
    finally:
        stop_worker(worker)
        producer.close()

    entries = [(int(e.split(b":", 1)[0]), orjson.loads(e.split(b":", 1)[1]))
               for e in redis_store.ledger_entries(0, 10_000)]
    after_kill = [doc for _, doc in entries if doc["click_ts"] >= T0 + 20]
    assert after_kill, "no click of the killed or the restarted worker's batches was charged"
    stored_ids = [doc["charge_id"] for _, doc in entries]
    assert len(stored_ids) == len(set(stored_ids)), "a charge applied twice in Redis"
    records = defaultdict(list)
    for doc in read_topic(settings, "ledger", timeout_s=3):
        records[doc["charge_id"]].append(doc)
    assert set(records) == set(stored_ids), "ledger topic and Redis disagree on the charges"
    for charge, copies in records.items():
        assert all(c == copies[0] for c in copies), f"charge {charge} published with different contents"
    ledger_sum = sum(copies[0]["amount_micros"] for copies in records.values())
    days = {int(day_of(T0))}
    spend = sum(redis_store.spend(c["campaign_id"], d) for c in CAMPAIGNS for d in days)
    assert spend == ledger_sum == sum(amount for amount, _ in entries) > 0
    # each click event charged at most once, and only for items that were shown sponsored
    by_event = defaultdict(int)
    for copies in records.values():
        doc = copies[0]
        by_event[doc["event_id"]] += 1
        assert doc["item_id"] in next(c["items"] for c in CAMPAIGNS if c["campaign_id"] == doc["campaign_id"])
        assert 10_000 <= doc["price_micros"] <= next(c["bid"] for c in CAMPAIGNS
                                                    if c["campaign_id"] == doc["campaign_id"]) * 1e6
    sent = {doc["event_id"]: doc for doc, _, _ in producer.sent}
    assert max(by_event.values()) == 1 and clicks > 0
    for copies in records.values():  # a charge is for an event that was sent, on the item it names
        event = sent[copies[0]["event_id"]]
        assert (event["user_id"], event["item_id"]) == (copies[0]["user_id"], copies[0]["item_id"])
