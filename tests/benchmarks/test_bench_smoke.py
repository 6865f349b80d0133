"""Smoke test of the kernel benchmark: it runs at a tiny size, writes its report, and the kernels it
times agree with the NumPy reference on its inputs. No timing is asserted."""
from __future__ import annotations

import numpy as np
import orjson
import pytest

from models.config import EngineConfig
from models.params import capacity_for
from models.store import connect
from tests.benchmarks import bench_kernel

pytestmark = pytest.mark.integration


def test_kernel_benchmark_runs_and_matches_reference(tmp_path):
    out = tmp_path / "kernel_bench.json"
    bench_kernel.main(["--items", "1000", "--batch", "8", "--reps", "1", "--reference-users", "8",
                       "--max-chunks", "2", "--out", str(out), "--quiet"])
    report = orjson.loads(out.read_bytes())
    assert {"command", "machine", "date", "git", "parameters", "results"} <= set(report)
    assert {"platform", "cpu_model", "cores", "python", "jax"} <= set(report["machine"])
    result = report["results"]["1000"]
    assert set(result["step"]) == {"jit", "jit_device_resident", "numpy_vectorised", "reference_loop"}
    assert min(result["default_chunk"], result["table_rows"]) in {row["chunk"]
                                                                  for row in result["chunking"]}, (
        "the default chunk is always timed")
    for row in result["step"].values():
        assert row["median_ms"] > 0 and row["per_user_us"] > 0
    assert result["chunking"] and result["batch_sizes"] and result["speedup"]["jit_over_reference_loop"]
    assert result["agreement"]["jit_vs_reference"] == 1.0
    assert result["agreement"]["numpy_vs_reference"] == 1.0, ("bench_kernel.numpy_step no longer "
                                                              "mirrors the kernels")


# one chunk; chunks rounded up to k blocks, the last overlapping
@pytest.mark.parametrize("chunk", [1024, 256])
def test_benchmarked_kernel_top_k_equals_reference(chunk):
    """Independently of the report: the jitted step's top-K on the benchmark's inputs is the reference's."""
    n_items, B = 1000, 8
    cfg = EngineConfig(initial_capacity=capacity_for(n_items, 1024), item_chunk=chunk, max_batch=B)
    params = bench_kernel.bench_params(cfg, capacity_for(n_items, 1024))
    inputs = bench_kernel.make_inputs(cfg, B, n_items, seed=3)
    jit_items, jit_scores = bench_kernel.jit_step(params, inputs, cfg, chunk)
    resident_items = np.asarray(bench_kernel.resident_step(params, inputs, cfg, chunk)()[2])
    assert resident_items.tolist() == jit_items.tolist(), ("the device-resident timing runs "
                                                           "another computation")
    ref_items, ref_scores = bench_kernel.reference_step(params, inputs, cfg, B)
    np_items, _ = bench_kernel.numpy_step(bench_kernel.numpy_params(params), inputs, cfg)
    assert jit_items.tolist() == ref_items.tolist()
    assert np_items.tolist() == ref_items.tolist(), (
        "numpy_step in tests/benchmarks/bench_kernel.py no longer mirrors models/kernels.py: update it")
    for b in range(B):
        np.testing.assert_allclose(jit_scores[b][: len(ref_scores[b])], ref_scores[b], rtol=1e-4, atol=1e-4)


def test_engine_benchmark_runs_on_real_redis_and_cleans_up(services, tmp_path):
    from tests.benchmarks import bench_engine

    out = tmp_path / "engine_bench.json"
    report = bench_engine.main(["--items", "1000", "--batches", "8", "32", "--reps", "2", "--out", str(out),
                                "--quiet"])
    assert orjson.loads(out.read_bytes())["results"] == report["results"]
    assert [row["events"] for row in report["results"]] == [8, 32]
    for row in report["results"]:
        assert row["reps"] == 2 and row["wall_ms_median"] > 0 and row["cpu_ms_median"] > 0
    assert set(report["fit"]) >= {"cpu_ms_fixed_per_batch", "cpu_us_per_event"}
    client = connect(services[1])
    assert not list(client.scan_iter(f"{report['parameters']['redis_prefix']}*",
                                     count=1000)), "left keys behind"
