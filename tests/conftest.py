"""Shared fixtures: the real local Kafka broker and Redis server, and a fresh namespace per test.

If the configured services (``ATTNFLOW_KAFKA_BOOTSTRAP``, ``ATTNFLOW_REDIS_URL``) are not
reachable, the session starts them with the project's own ``deploy/`` scripts and stops them at
the end. Tests never share topics or Redis keys: each gets its own prefix.
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


@pytest.fixture(scope="session")
def services():
    """(kafka_bootstrap, redis_url) of running services; started from deploy/ when down."""
    base = Settings.from_env()
    host, port = base.kafka_bootstrap.split(",")[0].rsplit(":", 1)
    redis = urlparse(base.redis_url)
    started = []
    env = {**os.environ, "ATTNFLOW_KAFKA_PORT": port, "ATTNFLOW_REDIS_PORT": str(redis.port or 6379)}
    for script, (h, p) in (("redis.sh", (redis.hostname, redis.port or 6379)), ("kafka.sh", (host, int(port)))):
        if not _reachable(h, p):
            subprocess.run(["bash", str(REPO / "deploy" / script), "start"], check=True, env=env)
            started.append(script)
    yield base.kafka_bootstrap, base.redis_url
    for script in reversed(started):
        subprocess.run(["bash", str(REPO / "deploy" / script), "stop"], env=env)


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
