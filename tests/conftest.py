"""Shared fixtures: the real local Kafka broker and Redis server, and a fresh namespace per test.

If the configured services (``ATTNFLOW_KAFKA_BOOTSTRAP``, ``ATTNFLOW_REDIS_URL``) are not
reachable, the session starts them with the project's own ``deploy/`` scripts and stops them at
the end. ``--redis-cluster`` runs the same tests against a Redis Cluster instead
(``deploy/redis.sh cluster start``; ``ATTNFLOW_REDIS_URL`` is then the cluster's). Tests never
share topics or Redis keys: each gets its own prefix.
"""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from streams.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_addoption(parser):
    parser.addoption("--redis-cluster", action="store_true",
                     help="run against a Redis Cluster (deploy/redis.sh cluster) instead of one Redis server")
    parser.addoption("--kafka-cluster", action="store_true",
                     help="start the 3-broker Kafka cluster (deploy/kafka.sh cluster start) for its tests")
    parser.addoption("--faults", action="store_true",
                     help="run the fault suite (tests/faults: 3 workers on the Redis and Kafka clusters)")


def _cluster_url() -> str:
    url = subprocess.run(["bash", str(REPO / "deploy" / "redis.sh"), "cluster", "url"], check=True,
                         capture_output=True, text=True).stdout.strip()
    return url


@pytest.fixture(scope="session")
def services(request):
    """(kafka_bootstrap, redis_url) of running services; started from deploy/ when down."""
    cluster = request.config.getoption("--redis-cluster")
    base = Settings.from_env(**({"redis_url": _cluster_url()} if cluster else {}))
    host, port = base.kafka_bootstrap.split(",")[0].rsplit(":", 1)
    redis = urlparse(base.redis_url.split(",")[0])
    started = []
    env = {**os.environ, "ATTNFLOW_KAFKA_PORT": port, "ATTNFLOW_REDIS_PORT": str(redis.port or 6379)}
    redis_start = ["cluster", "start"] if cluster else ["start"]
    for script, args, (h, p) in (("redis.sh", redis_start, (redis.hostname, redis.port or 6379)),
                                 ("kafka.sh", ["start"], (host, int(port)))):
        if not _reachable(h, p):
            subprocess.run(["bash", str(REPO / "deploy" / script), *args], check=True, env=env)
            started.append((script, args))
    if cluster:
        os.environ["ATTNFLOW_REDIS_URL"] = base.redis_url  # for every Settings.from_env() in the session
    yield base.kafka_bootstrap, base.redis_url
    for script, args in reversed(started):
        subprocess.run(["bash", str(REPO / "deploy" / script), *args[:-1], "stop"], env=env)


@pytest.fixture
def settings(services) -> Settings:
    """Settings for one test: own topics, keys and consumer group; small shapes so kernels compile fast."""
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        topic_prefix=f"t{tag}.", redis_prefix=f"attnflow-test-{tag}", app_id=f"attnflow-test-{tag}",
        web_port=_free_port(), partitions=4, batch_size=64, batch_within_s=0.01, dim=16, history=8, k=5,
        scenes=("default", "search", "product"), initial_capacity=256, session_timeout_s=6.0,
        heartbeat_interval_s=0.5, commit_interval_s=0.5, log_level="info")


@pytest.fixture
def redis_store(settings):
    from models.store import RedisStore

    store = RedisStore(settings.redis_url, settings.redis_prefix)
    yield store
    store.clear()
    store.close()
