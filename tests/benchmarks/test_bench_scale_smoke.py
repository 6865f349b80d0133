"""Smoke tests of the large-catalogue benchmarks at tiny sizes: the candidate stage's and the GPU path's
(which runs on whatever device JAX finds, the CPU here). They write their reports; no timing is asserted."""
from __future__ import annotations

import orjson

from tests.benchmarks import bench_candidates, bench_gpu


def test_candidate_benchmark_runs_and_reports_recall_for_each_nprobe(tmp_path):
    out = tmp_path / "candidates.json"
    report = bench_candidates.main(["--items", "3000", "--users", "16", "--reps", "1", "--nprobe", "4", "64",
                                    "--out", str(out), "--quiet"])
    assert [row["recall_at_20"] for row in orjson.loads(out.read_bytes())["sizes"]] == [
        row["recall_at_20"] for row in report["sizes"]]
    assert [row["nprobe"] for row in report["sizes"]] == [4, 64]
    assert {"command", "machine", "git"} <= set(report)
    for row in report["sizes"]:
        assert 0.0 <= row["recall_at_20"] <= 1.0 and row["index_bytes_per_item"] > 0 and row["speedup"] > 0
    assert report["sizes"][1]["recall_at_20"] >= report["sizes"][0]["recall_at_20"]  # every cell searched


def test_gpu_benchmark_runs_on_the_device_jax_gives(tmp_path):
    report = bench_gpu.main(["--items", "2000", "--reps", "1", "--batches", "8", "--engine-events", "32",
                             "--engine-batches", "2", "--out-dir", str(tmp_path), "--quiet"])
    kernel, engine = (orjson.loads((tmp_path / f"{name}_gpu.json").read_bytes())
                      for name in ("kernel", "engine"))
    assert kernel["machine"]["jax_devices"] and kernel["results"][0]["host_ms"] > 0
    assert [row["mode"] for row in engine["results"]] == ["exact", "candidates"]
    assert engine["results"][1]["index_builds"] == 1 and report["engine"]["results"][0]["events_per_s"] > 0
