"""Fixtures for the replicated Kafka: ``--kafka-cluster`` starts the 3-broker cluster
(``deploy/kafka.sh cluster start``) for the tests that need it and stops it at the end if it
started it; without the option those tests run against a cluster already up, or are skipped.
``ATTNFLOW_TEST_KAFKA_CLUSTER=1`` does the same. (The option is registered in tests/conftest.py,
which pytest reads for every path under tests/.)
"""
from __future__ import annotations

import dataclasses
import os
import subprocess

import pytest

from tests.conftest import REPO, _reachable

KAFKA_SH = REPO / "deploy" / "kafka.sh"


def _cluster_bootstrap() -> str:
    return subprocess.run(["bash", str(KAFKA_SH), "cluster", "bootstrap"], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="session")
def kafka_cluster(request) -> str:
    """ATTNFLOW_KAFKA_BOOTSTRAP of the running 3-broker cluster."""
    bootstrap = _cluster_bootstrap()
    up = all(_reachable(host, int(port)) for host, port in (s.rsplit(":", 1) for s in bootstrap.split(",")))
    started = False
    wanted = (request.config.getoption("--kafka-cluster", False)
              or os.environ.get("ATTNFLOW_TEST_KAFKA_CLUSTER") == "1")
    if not wanted:
        if not up:
            pytest.skip(f"the 3-broker Kafka cluster is not running at {bootstrap}: start it with "
                        "`deploy/kafka.sh cluster start`, or pass --kafka-cluster")
    else:
        # Also when its ports answer: start waits until all three brokers are registered.
        subprocess.run(["bash", str(KAFKA_SH), "cluster", "start"], check=True)
        started = not up
    yield bootstrap
    if started:
        subprocess.run(["bash", str(KAFKA_SH), "cluster", "stop"], check=False)


@pytest.fixture
def cluster_settings(settings, kafka_cluster):
    """A test's own namespace on the replicated cluster: replication factor 3, min ISR 2 (automatic)."""
    return dataclasses.replace(settings, kafka_bootstrap=kafka_cluster, replication_factor=3)
