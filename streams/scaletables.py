"""docs/performance.md's tables for large catalogues and framings: the candidate stage, batched messages, the
GPU path.

Pure formatting of ``docs/results/candidates.json``, ``bench_batched.json`` and ``*_gpu.json`` (written by
``tests/benchmarks/bench_candidates.py``, ``bench_pipeline.py`` and ``bench_gpu.py``); ``streams.report``
calls it.
"""
from __future__ import annotations

from streams.benchtables import _fmt, _provenance


def _load_average(data: dict) -> str:
    load = (data.get("machine") or {}).get("load_average_at_start")
    cores = (data.get("machine") or {}).get("cores")
    if not (load and cores):
        return "Load average not recorded"
    return f"Load average {load[0]:.1f} on {cores} cores at the start"


def candidate_tables(data: dict) -> list[str]:
    """``bench_candidates``: recall@K and time per user of the candidate stage against the exact scan.

    >>> row = {"items": 1000, "nprobe": 8, "default": True, "recall_at_20": 0.9, "recall_min_user": 0.5,
    ...        "exact_ms_per_user": 1.0, "candidates_ms_per_user": 0.5, "speedup": 2.0,
    ...        "index_search_share": 0.4, "build_s": 0.1, "index_bytes_per_item": 270.0,
    ...        "params_bytes_per_item": 500, "lists": 63, "candidates": 512, "k": 20}
    >>> candidate_tables({"sizes": [row], "command": ["python"], "machine": {}})[4]
    '| 1,000 | 63 | **8** | 0.900 (0.50) | 1.00 | 0.500 | 2.0x | 40% | 0.1 | 270 + 500 |'
    """
    rows = data.get("sizes") or []
    if not rows:
        return []
    k = rows[0].get("k", 20)
    out = [f"### Candidate stage against the exact scan (models/candidates.py; {rows[0].get('candidates')} "
           f"candidates, K={k}, medians, ratios within one process)", "",
           f"| items | IVF cells | cells searched | recall@{k} (worst user) | exact ms/user | "
           "candidates ms/user | speed-up | share in the index | build s | bytes per item "
           "(index + parameters) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nprobe = f"**{r['nprobe']}**" if r.get("default") else str(r["nprobe"])
        out.append(f"| {r['items']:,} | {r.get('lists')} | {nprobe} | {r[f'recall_at_{k}']:.3f} "
                   f"({r['recall_min_user']:.2f}) | {_fmt(r['exact_ms_per_user'], 2)} | "
                   f"{_fmt(r['candidates_ms_per_user'], 3)} | {_fmt(r['speedup'], 1)}x | "
                   f"{_fmt(100 * (r.get('index_search_share') or 0))}% | {_fmt(r['build_s'], 1)} | "
                   f"{_fmt(r['index_bytes_per_item'])} + {_fmt(r.get('params_bytes_per_item'))} |")
    out += ["", f"Bold: the deployed default (`ATTNFLOW_CANDIDATES_NPROBE`). {_load_average(data)}."]
    return out + _provenance(data)


def batched_tables(data: dict) -> list[str]:
    """``bench_pipeline`` with the batched variants: one event per message against batched messages."""
    med = data.get("medians") or {}
    if not any("pipeline_batched" in m or "pipeline_notrain_batched" in m for m in med.values()):
        return []
    per = (data.get("parameters") or {}).get("batch_events", 200)
    out = [f"### Batched event messages against one event per message (same events, same run; "
           f"{per} events a message)", "",
           "| items | variant | events/s, one event a message | events/s, batched | batched / single |",
           "|---|---|---|---|---|"]
    for n, m in med.items():
        for single, batched in (("pipeline_notrain", "pipeline_notrain_batched"),
                                ("pipeline", "pipeline_batched"),
                                ("pipeline_notrain", "pipeline_notrain_batched_b2048")):
            a, b = ((m.get(v) or {}).get("events_per_s") for v in (single, batched))
            if a is None and b is None:
                continue
            out.append(f"| {int(n):,} | `{single}` / `{batched}` | {_fmt(a)} | {_fmt(b)} | "
                       f"{_fmt(b / a if a and b else None, 2)}x |")
        noop = (m.get("noop_faust") or {}).get("events_per_s")
        if noop:
            out.append(f"| {int(n):,} | `noop_faust` (one event a message) | {_fmt(noop)} | – | – |")
    out += ["", f"{_load_average(data)}."]
    return out + _provenance(data)


def gpu_tables(kernel: dict | None, engine: dict | None) -> list[str]:
    """``bench_gpu``: the kernel and the engine at large catalogues on the device JAX found."""
    out = []
    for data, title in ((kernel, "kernel"), (engine, "engine")):
        rows = (data or {}).get("results") or []
        if not rows:
            continue
        where = ", ".join((data.get("machine") or {}).get("jax_devices") or []) or data.get("backend", "?")
        if title == "kernel":
            out += [f"### Kernel at large catalogues on {where} (`kernels.step`, median ms per call)", "",
                    "| items | users | from the host | inputs on the device | µs per user |",
                    "|---|---|---|---|---|"]
            out += [f"| {r['items']:,} | {r['users']} | {_fmt(r['host_ms'], 2)} | "
                    f"{_fmt(r['device_ms'], 2)} | {_fmt(r['host_us_per_user'], 1)} |" for r in rows]
        else:
            out += [f"### Engine at large catalogues on {where} (`Engine.process` + `commit`, in memory)", "",
                    "| items | ranking | events per batch | ms per batch | events/s |",
                    "|---|---|---|---|---|"]
            out += [f"| {r['items']:,} | {r['mode']} | {r['events_per_batch']} | {_fmt(r['batch_ms'], 1)} | "
                    f"{_fmt(r['events_per_s'])} |" for r in rows]
        out += _provenance(data)
    return out
