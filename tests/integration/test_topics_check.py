"""``attnflow topics --check`` and ``ensure_topics`` on the real broker: a partition count that differs from
the settings is reported and refused, never changed or ignored."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from streams.topics import PartitionMismatch, TopicNames, check_topics, ensure_topics
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def topics_command(settings, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "topics", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **settings.as_env()},
        timeout=120,
    )


def test_check_reports_missing_topics_and_a_changed_partition_count(settings):
    names = TopicNames.of(settings)
    have, problems = check_topics(settings)
    assert have == {} and len(problems) == len(names.partitions(settings))
    assert topics_command(settings, "--check").returncode == 1  # nothing there yet

    ensure_topics(settings)
    assert check_topics(settings)[1] == []
    done = topics_command(settings, "--check")
    assert done.returncode == 0, done.stderr
    assert f"{names.events}: {settings.partitions} partitions" in done.stdout

    wider = dataclasses.replace(settings, partitions=settings.partitions + 2)
    have, problems = check_topics(wider)
    assert have[names.events] == settings.partitions
    assert any(
        p.startswith(
            f"topic {names.events} has {settings.partitions} partitions, the settings ask for "
            f"{wider.partitions}"
        )
        for p in problems
    )
    with pytest.raises(PartitionMismatch):
        ensure_topics(wider)  # refuses; does not add partitions
    refused = topics_command(wider)
    assert refused.returncode == 1 and "the settings ask for" in refused.stderr
    worker = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, **wider.as_env()}, timeout=120)
    assert worker.returncode == 1 and "error: topic" in worker.stderr and "Traceback" not in worker.stderr
    assert check_topics(settings)[0][names.events] == settings.partitions  # unchanged
