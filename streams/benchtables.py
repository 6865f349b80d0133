"""The benchmark tables of docs/performance.md: pipeline, engine, kernel, CPU and profile splits.

Pure formatting of what ``tests/benchmarks`` wrote into ``docs/results/*.json``; ``streams.report`` calls it.
"""

from __future__ import annotations

import json
import shlex

from streams.metrics import STAGES
from streams.threadnames import ALL_ROLES


def generic_table(title: str, data: dict) -> list[str]:
    """Benchmark files render their own ``summary`` rows (list of dicts) when present."""
    rows = data.get("summary") or []
    if not rows:
        return []
    cols = list(rows[0])
    out = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append(
            "| "
            + " | ".join(
                f"{r.get(c):.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols
            )
            + " |"
        )
    cmd = data.get("command")
    if cmd:
        out += ["", f"Command: `{shlex.join(cmd) if isinstance(cmd, list) else cmd}`"]
    if data.get("machine"):
        out += [f"Machine: {json.dumps(data['machine'], sort_keys=True)}"]
    return out + [""]


def _fmt(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)


def _share(value, digits=0):
    return "–" if value is None else f"{value:.{digits}%}"


def bench_tables(data: dict) -> list[str]:
    medians, ratios = data.get("medians") or {}, data.get("ratios") or {}
    if not medians:
        return []
    out = [
        "### Pipeline benchmark (real Kafka + Redis; medians of repeated runs)",
        "",
        "| items | variant | events/s per worker | kernel p50 ms | RSS MiB | Redis round trips / event | "
        "Redis bytes in / event "
        "| events the trainer learned from |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # Variants in the benchmark's own order (its medians keep the order of its VARIANTS list).
    for items, by_variant in sorted(medians.items(), key=lambda kv: int(kv[0])):
        for v, m in by_variant.items():
            if not m:
                continue
            out.append(
                f"| {int(items):,} | {v} | {_fmt(m.get('events_per_s_per_worker'))} | "
                f"{_fmt(m.get('kernel_ms_p50'), 1)} "
                f"| {_fmt(m.get('rss_mib'))} | {_fmt(m.get('redis_round_trips_per_event'), 4)} "
                f"| {_fmt(m.get('redis_bytes_in_per_event'))} | {_share(m.get('train_examples_per_event'))} |"
            )
    lead_in = (data.get("parameters") or {}).get("latency_lead_in_s")
    out += [
        "",
        "Latency, event produced → recommendation (ms, p50 / p95 / p99, and the share of events within "
        "50 ms) at a fraction of the `pipeline` variant's measured maximum rate (every `pipeline_*` variant "
        "at the same rates; the naive design at fractions of its own maximum)"
        + (
            f". Each rate runs {lead_in:g} s before it is measured, so these describe a worker in its steady "
            "state; the last column is the p99 of the first second of that lead-in, which for the first "
            "rate is "
            "a freshly started worker's first second"
            if lead_in
            else ""
        )
        + ":",
        "",
        "| items | variant | rate | p50 | p95 | p99 | within 50 ms | first second p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for items, by_variant in sorted(medians.items(), key=lambda kv: int(kv[0])):
        for v, m in by_variant.items():
            for fraction in ("0.25", "0.50", "0.75"):
                p50 = m.get(f"latency@{fraction}_p50_ms")
                if p50 is not None:
                    out.append(
                        f"| {int(items):,} | {v} | {float(fraction):.0%} "
                        f"({_fmt(m.get(f'latency@{fraction}_rate'))}/s) "
                        f"| {_fmt(p50)} | {_fmt(m.get(f'latency@{fraction}_p95_ms'))} "
                        f"| {_fmt(m.get(f'latency@{fraction}_p99_ms'))} "
                        f"| {_share(m.get(f'latency@{fraction}_within_slo'), 1)} "
                        f"| {_fmt(m.get(f'latency@{fraction}_first_second_p99_ms'))} |"
                    )
    rows = []
    for items, by_variant in sorted(medians.items(), key=lambda kv: int(kv[0])):
        for v, m in by_variant.items():
            for fraction in ("0.25", "0.50", "0.75"):
                if m.get(f"latency@{fraction}_stage_engine_ms") is not None:
                    rows.append(
                        f"| {int(items):,} | {v} | {float(fraction):.0%} | "
                        f"{_fmt(m.get(f'latency@{fraction}_mean_ms'))} | "
                        + " | ".join(_fmt(m.get(f"latency@{fraction}_stage_{st}_ms"), 1) for st in STAGES)
                        + f" | {_share(m.get('live_train_examples_per_event'))} |"
                    )
    if rows:
        out += [
            "",
            "Where the time goes: mean ms per event in each stage of the worker during the latency phases "
            "(`/stats` stages; the recommendation is stamped during `deliver`, so the mean latency ends "
            "there):",
            "",
            "| items | variant | rate | mean latency | "
            + " | ".join(STAGES)
            + " | live events the trainer learned from |",
            "|---|---|---|---|" + "---|" * (len(STAGES) + 1),
        ]
        out += rows
    out += _cpu_lines(medians)
    out += _thread_lines(medians)
    known = {items: {k: v for k, v in r.items() if v is not None} for items, r in ratios.items()}
    out += [
        "",
        "Ratios: "
        + "; ".join(
            f"{items} items: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items())
            for items, r in sorted(known.items(), key=lambda kv: int(kv[0]))
            if r
        ),
    ]
    out += _profile_lines(data.get("profile") or {})
    return out + _provenance(data)


def _provenance(data: dict, machine_label: str = "Machine") -> list[str]:
    """The command and machine a results file records, under its tables."""
    command = data.get("command")
    return [
        "",
        f"Command: `{shlex.join(command) if isinstance(command, list) else command}`",
        f"{machine_label}: {json.dumps(data.get('machine', {}), sort_keys=True)}",
        "",
    ]


CPU_PARTS = (
    ("worker", "worker"),
    ("trainer", "dedicated trainer"),
    ("kafka_broker", "Kafka broker"),
    ("redis", "Redis"),
    ("benchmark", "benchmark process"),
    ("other", "rest of the machine"),
)


def _phase_rows(medians: dict, row) -> list[str]:
    """``row(items, variant, load label, medians, key prefix)`` for the maximum rate and each latency phase of
    every variant; the rows it returns None for are left out."""
    rows = []
    for items, by_variant in sorted(medians.items(), key=lambda kv: int(kv[0])):
        for v, m in by_variant.items():
            rows.append(row(items, v, "max", m))
            for fraction in ("0.25", "0.50", "0.75"):
                rows.append(row(items, v, f"{float(fraction):.0%}", m, f"latency@{fraction}_"))
    return [r for r in rows if r]


def _cpu_lines(medians: dict) -> list[str]:
    """CPU µs per event by process (``tests.benchmarks.cpu``): at max throughput and in the latency phases."""

    def row(items, name, label, m, prefix=""):
        total = m.get(f"{prefix}cpu_us_per_event_total")
        if total is None:
            return None
        ceiling = _fmt(m.get("cpu_ceiling_events_per_s")) if not prefix else "–"
        return (
            f"| {int(items):,} | {name} | {label} | {_fmt(total)} | "
            + " | ".join(_fmt(m.get(f"{prefix}cpu_us_per_event_{key}")) for key, _ in CPU_PARTS)
            + f" | {_share(m.get(f'{prefix}machine_utilisation'))} | {ceiling} |"
        )

    rows = _phase_rows(medians, row)
    if not rows:
        return []
    return [
        "",
        "CPU per event (µs, all cores, from `/proc`) by process, and how busy the whole machine was: at the "
        "maximum rate (the backlog) and in the latency phases. The ceiling is cores ÷ total CPU per event: "
        "the rate at which every core would be busy at that cost per event (a dash: no such process in that "
        "variant):",
        "",
        "| items | variant | load | total | "
        + " | ".join(label for _, label in CPU_PARTS)
        + " | machine busy | ceiling events/s |",
        "|---|---|---|---|" + "---|" * (len(CPU_PARTS) + 2),
        *rows,
    ]


def _thread_lines(medians: dict) -> list[str]:
    """A worker's CPU per event split by its threads (``streams.threadnames``), where the run measured it."""

    def row(items, name, label, m, prefix=""):
        values = [m.get(f"{prefix}thread_us_per_event_worker_{part.replace(' ', '_')}") for part in ALL_ROLES]
        if all(v is None for v in values):
            return None
        return f"| {int(items):,} | {name} | {label} | " + " | ".join(_fmt(v) for v in values) + " |"

    rows = _phase_rows(medians, row)
    if not rows:
        return []
    return [
        "",
        "The worker's CPU per event (µs) by thread (named by `streams.threadnames`; `top -H` shows the same "
        "names). All but XLA's threads run mostly Python under one interpreter lock, so together they get "
        "little more than one core, however many the machine has. The baseline apps (`noop_faust*`) do not "
        "name their threads, so all of their CPU shows as other:",
        "",
        "| items | variant | load | " + " | ".join(ALL_ROLES) + " |",
        "|---|---|---|" + "---|" * len(ALL_ROLES),
        *rows,
    ]


def _profile_lines(profile: dict) -> list[str]:
    """Where each worker thread's time went (py-spy, at max throughput): busy share and top categories."""
    runs = [
        ("pipeline", (profile.get("profile") or {})),
        ("noop_faust", ((profile.get("noop_faust") or {}).get("profile") or {})),
    ]
    runs += [
        (f"pipeline at {float(f):.0%} of max", (phase.get("profile") or {}))
        for f, phase in (profile.get("latency") or {}).items()
    ]
    rows = []
    for name, summary in runs:
        for role, cats in (summary.get("categories") or {}).items():
            busy = (summary.get("busy_share_pct") or {}).get(role)
            if not busy or busy < 5:
                continue
            top = [f"{k} {v:.0f}%" for k, v in cats.items() if not k.startswith("idle")][:4]
            rows.append(f"| {name} | {role} | {busy:.0f}% | {', '.join(top)} |")
    if not rows:
        return []
    out = [
        "",
        "Where the time goes (py-spy on one worker; share of each thread's samples):",
        "",
        "| process | thread | busy | largest shares |",
        "|---|---|---|---|",
        *rows,
    ]
    noop = (
        ((profile.get("noop_faust") or {}).get("profile") or {})
        .get("top_functions", {})
        .get("event loop (main thread)")
    )
    if noop:
        out += [
            "",
            "Faust's own per-event path (do-nothing agent, event loop, own time): "
            + ", ".join(f"`{k}` {v:.0f}%" for k, v in list(noop.items())[:8]),
        ]
    return out


def engine_tables(data: dict) -> list[str]:
    """``tests.benchmarks.bench_engine``: the engine alone on the real Redis, by batch size."""
    results, fit = data.get("results") or [], data.get("fit") or {}
    if not results:
        return []
    params = data.get("parameters") or {}
    out = [
        f"### Engine alone: one batch through `Engine.process` + `Engine.commit` on the real Redis, no "
        "Kafka or Faust "
        f"({params.get('items', 0):,} items; medians)",
        "",
        "| events per batch | wall ms | CPU ms (all threads) | CPU µs per event |",
        "|---|---|---|---|",
    ]
    for r in results:
        out.append(
            f"| {r['events']} | {_fmt(r['wall_ms_median'], 1)} | {_fmt(r['cpu_ms_median'], 1)} "
            f"| {_fmt(r['cpu_us_per_event'])} |"
        )
    if fit:
        out += [
            "",
            f"Least-squares fit: CPU per batch ≈ {_fmt(fit.get('cpu_ms_fixed_per_batch'), 1)} ms "
            f"+ {_fmt(fit.get('cpu_us_per_event'))} µs × events.",
        ]
    return out + _provenance(data)


def kernel_tables(data: dict) -> list[str]:
    results = data.get("results") or {}
    if not results:
        return []
    params, machine = data.get("parameters") or {}, data.get("machine") or {}
    where = ", ".join(str(d) for d in machine.get("jax_devices") or []) or params.get("backend", "cpu")
    resident = any("jit_device_resident" in r.get("step", {}) for r in results.values())
    out = [
        f"### Kernel microbenchmark: JAX on {where} (one batch of {params.get('batch', 512)} users; median "
        "ms)",
        "",
        "| items | jitted kernel | "
        + ("kernel, inputs on the device | " if resident else "")
        + "vectorised NumPy | NumPy reference loop (scaled from 8–32 users) | jit vs NumPy |",
        "|---|---|---|---|---|" + ("---|" if resident else ""),
    ]
    for items, r in sorted(results.items(), key=lambda kv: int(kv[0])):
        step = r.get("step", {})
        jit, dev, vec = (
            step.get(n, {}).get("median_ms") for n in ("jit", "jit_device_resident", "numpy_vectorised")
        )
        loop = step.get("reference_loop", {})
        ref = loop.get(
            "batch_ms_extrapolated", loop.get("median_ms")
        )  # timed on a few users, scaled to the batch
        ratio = f"{vec / jit:.1f}x" if jit and vec else "–"
        out.append(
            f"| {int(items):,} | {_fmt(jit, 1)} | "
            + (f"{_fmt(dev, 2)} | " if resident else "")
            + f"{_fmt(vec, 1)} | {_fmt(ref, 1)} | {ratio} |"
        )
    steps = {items: r["train_step"] for items, r in results.items() if r.get("train_step")}
    if steps:
        out += [
            "",
            "One optimiser step of the online trainer (64 examples; median ms):",
            "",
            "| items | full softmax | sampled softmax, row-sparse AdamW | full ÷ sampled |",
            "|---|---|---|---|",
        ]
        for items, t in sorted(steps.items(), key=lambda kv: int(kv[0])):
            out.append(
                f"| {int(items):,} | {_fmt(t['full_softmax']['median_ms'], 1)} | "
                f"{_fmt(t['sampled']['median_ms'], 1)} "
                f"| {_fmt(t.get('sampled_over_full'), 1)}x |"
            )
    out += _profile_lines(data.get("profile") or {})
    return out + _provenance(data, "Machine (NumPy runs on its CPU)")
