"""Access control on the real Redis (one server or the cluster): a worker runs as an ACL user that
may touch only its own key prefix and the commands the store sends, and its password shows up in no
log, ``/stats`` answer, error message or dead-letter record."""
from __future__ import annotations

import dataclasses
import secrets

import orjson
import pytest
import redis

from models.store import connect, worker_acl
from streams.cli import start_worker, stop_worker, wait_ready, worker_stats
from streams.replay import read_topic
from streams.topics import ensure_topics
from tests.integration.test_pipeline import CATALOGUE, Producer, wait_for

pytestmark = pytest.mark.integration


def with_credentials(url: str, user: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


@pytest.fixture
def worker_user(settings, redis_store):
    """An ACL user for this test's prefix on every node; (settings that use it, password)."""
    user, password = f"aw-{settings.redis_prefix[-8:]}", secrets.token_hex(16)
    nodes = {"target_nodes": redis_store.redis.ALL_NODES} if redis_store.cluster else {}
    redis_store.redis.execute_command("ACL", "SETUSER", *worker_acl(user, password, settings.redis_prefix),
                                      **nodes)
    try:
        yield dataclasses.replace(settings,
                                  redis_url=with_credentials(settings.redis_url, user, password)), password
    finally:
        redis_store.redis.execute_command("ACL", "DELUSER", user, **nodes)


def test_a_worker_runs_as_a_least_privilege_user_and_never_shows_its_password(worker_user, redis_store,
                                                                              tmp_path):
    settings, password = worker_user
    ensure_topics(settings)
    producer = Producer(settings)
    for step in range(3):
        for n in range(6):
            producer.event(f"user-{n}", CATALOGUE[(step + n) % 40], "click", 1_700_000_000.0 + step)
    producer.raw(b'{"user_id": "u", "item_id": "x", "type": "view", "ts": "soon"}')
    producer.close()
    log_path = tmp_path / "worker.log"
    worker = start_worker(settings, log_path)
    try:
        wait_ready(settings.web_port, worker)
        wait_for(settings.web_port, len(producer.sent) + 1)
        stats = worker_stats(settings.web_port)
    finally:
        stop_worker(worker)
    assert all(redis_store.read_state(f"user-{n}") is not None
               for n in range(6)), "states written as the user"
    deadletters = list(read_topic(settings, "deadletter", timeout_s=3))
    assert len(deadletters) == 1

    limited = connect(settings.redis_url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.get("someone-else:state:u")           # another prefix
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.execute_command("FLUSHALL")          # a command workers never need
    with pytest.raises((redis.exceptions.RedisError, redis.exceptions.RedisClusterException)) as refused:
        connect(with_credentials(redis_store_url(redis_store, settings), "nobody",
                                 "wrong-" + password)).ping()
    limited.close()

    for where, text in (("worker log", log_path.read_text(errors="replace")),
                        ("/stats", orjson.dumps(stats).decode()),
                        ("dead letters", orjson.dumps(deadletters).decode()),
                        ("error message", str(refused.value)), ("settings repr", repr(settings))):
        assert password not in text, f"the Redis password appears in the {where}"


def redis_store_url(store, settings) -> str:
    """The server's URL without credentials (as the test session got it)."""
    scheme, rest = settings.redis_url.split("://", 1)
    return f"{scheme}://{rest.split('@', 1)[1]}"
