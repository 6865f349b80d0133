"""Online training across workers on the real broker and Redis: examples flow to the single
trainer, which publishes a snapshot; both rank workers pick it up without restarting."""
from __future__ import annotations

import os
import time

import pytest

from models.params import from_bytes
from streams.cli import start_worker, stop_worker, wait_ready, worker_stats
from streams.replay import read_topic
from streams.topics import ensure_topics
from tests.conftest import _free_port
from tests.integration.test_pipeline import CATALOGUE, Producer, USERS

pytestmark = pytest.mark.integration


def nice_of(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])  # field 19: nice


@pytest.mark.parametrize("roles", [("all", "all"), ("rank", "train")],
                         ids=["two-workers", "rank-and-trainer"])
def test_snapshot_published_and_hot_reloaded_by_every_worker(settings, redis_store, tmp_path, roles):
    """Two full workers (one of them trains), or a rank-only worker beside a dedicated, niced trainer."""
    settings = type(settings).from_env(**{**settings.__dict__, "snapshot_interval_s": 2.0,
                                          "train_batch_size": 16, "role": roles[0]})
    second = type(settings).from_env(**{**settings.__dict__, "web_port": _free_port(), "role": roles[1]})
    ensure_topics(settings)
    producer = Producer(settings)
    workers = [start_worker(settings, tmp_path / "a.log"), start_worker(second, tmp_path / "b.log")]
    try:
        for process, s in zip(workers, (settings, second)):
            wait_ready(s.web_port, process)
        base = os.nice(0)  # the workers inherit this process's nice value
        want_nice = [min(19, base + settings.train_nice) if role == "train" else base for role in roles]
        assert [nice_of(process.pid) for process in workers] == want_nice
        for step in range(6):
            for user in USERS:
                producer.event(user, CATALOGUE[(step * 5 + len(user) * 3) % 40], "click",
                               1_700_000_000.0 + step)
        deadline = time.time() + 120
        while redis_store.params_version() == 0 and time.time() < deadline:
            time.sleep(0.5)
        version = redis_store.params_version()
        assert version >= 1, "the trainer published no snapshot"
        params, meta = from_bytes(redis_store.load_params(version))
        assert meta["steps"] >= 1 and meta["examples"] >= 16
        trainers = [worker_stats(s.web_port)["trainer"] for s in (settings, second)]
        assert sorted(t["examples"] > 0 for t in trainers) == [False, True], "exactly one worker trains"
        if roles[1] == "train":
            assert trainers[1]["examples"] > 0, "the dedicated trainer is the one that learns"

        # after the snapshot, every user's next list comes from it, whichever worker owns the user
        sent_before = len(producer.sent)
        for user in USERS:
            producer.event(user, CATALOGUE[0], "view", 1_700_000_100.0)
        deadline = time.time() + 60
        while sum(worker_stats(s.web_port)["events"] for s in (settings, second)) < len(producer.sent) \
                and time.time() < deadline:
            time.sleep(0.3)
    finally:
        for process in workers:
            stop_worker(process)
        producer.close()
    lists = {}
    for doc in read_topic(settings, "recommendations", timeout_s=3):
        lists[doc["user_id"]] = doc
    assert set(lists) == set(USERS) and sent_before < len(producer.sent)
    assert all(doc["model_version"] >= 1 for doc in lists.values())
