"""Each fault once, on the real clusters, at a size CI affords (``pytest tests/faults --faults``).

The full-size run that writes ``docs/results/faults.json`` is ``python -m tests.faults.run``.
Without ``--faults`` these tests skip: they start the Redis Cluster and the 3-broker Kafka and
kill parts of them, which no other test running beside them would survive.
"""
from __future__ import annotations

import pytest

from tests.faults.harness import SCENARIOS, passed, run_scenario

EVENTS = 15_000


@pytest.fixture
def faults_enabled(request):
    if not request.config.getoption("--faults"):
        pytest.skip("the fault suite kills cluster nodes: run it alone with `pytest tests/faults --faults`")


@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_pipeline_loses_nothing_applies_nothing_twice_and_resumes_by_itself(faults_enabled, scenario,
                                                                                tmp_path):
    record = run_scenario(scenario, EVENTS, log_dir=tmp_path)
    assert record["events"] == EVENTS
    assert record["events_lost"] == 0 and record["users_missing"] == 0, record["examples"]
    assert record["events_applied_twice"] == 0, record["examples"]
    assert record["users_wrong_fence"] == 0 and record["users_wrong_history"] == 0, record["examples"]
    assert record["feedback_missing"] == 0
    assert record["recovery_s"] >= 0
    assert passed(record)
    if scenario == "worker_kill":
        assert record["workers_alive_at_end"] == 2
    else:
        assert record["workers_alive_at_end"] == 3  # a data-plane fault costs no worker its life
