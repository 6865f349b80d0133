"""Smoke test of the request-time API benchmark at a tiny size: it runs both serve processes under
both load generators, writes its report and leaves no keys behind. No timing is asserted."""
from __future__ import annotations

import shutil

import orjson
import pytest

from models.store import connect
from tests.benchmarks import bench_serve

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                    reason="bench_serve's closed-loop runs use autocannon (node + npm)")
def test_serve_benchmark_runs_and_cleans_up(services, tmp_path):
    out = tmp_path / "serve.json"
    report = bench_serve.main(["--users", "50", "--items", "500", "--events-per-user", "4", "--duration", "1",
                               "--reps", "1", "--rate", "100", "--out", str(out), "--quiet"])
    assert orjson.loads(out.read_bytes())["summary"] == report["summary"]
    assert {"command", "machine", "date", "git", "parameters", "data", "runs", "summary",
            "goal"} <= set(report)
    for mode in ("batched", "unbatched"):
        for load in bench_serve.LOADS:
            row = report["summary"][mode][load]
            assert row["rps"] > 0 and row["p50_ms"] is not None and row["non_2xx"] == 0, (mode, load, row)
    client = connect(services[1])
    assert not list(client.scan_iter(f"{report['parameters']['redis_prefix']}*",
                                     count=1000)), "left keys behind"
