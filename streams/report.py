"""Render measured results from ``docs/results/*.json`` into the README and docs/performance.md.

Neither carries a hand-typed number: ``attnflow report`` (``python -m streams.report``) rewrites the
block between the marker comments of each, from the files the evaluation and benchmark commands wrote,
with the command behind each table: a few headline tables in the README, every table in
docs/performance.md; it also regenerates docs/configuration.md from ``streams.settings``.
"""

from __future__ import annotations

import json
from pathlib import Path

from streams.benchtables import (_cpu_lines, _fmt, _profile_lines, _provenance, _share, bench_tables,
                                 engine_tables, generic_table, kernel_tables)
from streams.evaltables import README_MODELS, _argv, _machine_short, eval_tables, repeat_tables

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def serve_tables(data: dict) -> list[str]:
    """``tests.benchmarks.bench_serve``: ``attnflow serve`` on the real Redis, request batching on and off."""
    summary = data.get("summary") or {}
    if not isinstance(summary, dict) or not summary:
        return []
    out = [
        "### Request path: `GET /recommendations` on `attnflow serve` (real Redis; medians over rounds)",
        "",
        "| batching | load | requests/s | p50 ms | p99 ms | requests per kernel call | non-2xx |",
        "|---|---|---|---|---|---|---|",
    ]
    loads = {
        "closed_c1": "1 connection, closed loop",
        "closed_c16": "16 connections, closed loop",
        "rate_open_loop": f"open loop at {_fmt((data.get('parameters') or {}).get('rate'))}/s",
    }
    for mode, by_load in summary.items():
        for load, r in by_load.items():
            out.append(
                f"| {mode} | {loads.get(load, load)} | {_fmt(r.get('rps'))} | {_fmt(r.get('p50_ms'), 1)} "
                f"| {_fmt(r.get('p99_ms'), 1)} | {_fmt(r.get('requests_per_call'), 2)} | "
                f"{_fmt(r.get('non_2xx'))} |"
            )
    return out + ["", serve_goal(data)] + _provenance(data)


def serve_goal(data: dict) -> str:
    """One line: the batched path's p99 at the open-loop rate against the goal, and how busy the machine was
    (the load generator, the server and other jobs share its cores)."""
    goal = data.get("goal") or {}
    load = data.get("load_average_at_end")
    busy = f"; load average {', '.join(_fmt(x, 1) for x in load)} (1/5/15 min) at the end" if load else ""
    met = "met" if goal.get("met") else "**not met**"
    return (f"Request path goal p99 <= {_fmt(goal.get('target_ms'), 0)} ms at {_fmt(goal.get('rate'))} "
            f"requests/s (batched, open loop): {_fmt(goal.get('p99_ms_at_rate'), 1)} ms, {met}{busy}.")


def bench_headline(data: dict) -> list[str]:
    """The README's pipeline row: the default worker's maximum rate and its latency at half of it."""
    medians = data.get("medians") or {}
    rows = []
    for items, by_variant in sorted(medians.items(), key=lambda kv: int(kv[0])):
        m = by_variant.get("pipeline")
        if not m:
            continue
        rows.append(
            f"| {int(items):,} | {_fmt(m.get('events_per_s_per_worker'))} | "
            f"{_fmt(m.get('latency@0.50_rate'))} "
            f"| {_fmt(m.get('latency@0.50_p50_ms'))} | {_fmt(m.get('latency@0.50_p99_ms'))} "
            f"| {_share(m.get('latency@0.50_within_slo'), 1)} | {_fmt(m.get('kernel_ms_p50'), 1)} |"
        )
    if not rows:
        return []
    return [
        "### Pipeline: one rank worker with its in-process trainer (real Kafka + Redis; medians of runs)",
        "",
        "| items | max events/s | latency measured at (events/s) | p50 ms | p99 ms | within 50 ms | kernel "
        "p50 ms |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Latency: event time → its recommendation's Kafka timestamp, at half the measured maximum. "
        "Every variant, the CPU split and the profiles: docs/performance.md.",
        "",
        f"Command: `{_argv(data.get('command'))}`; machine: {_machine_short(data.get('machine') or {})}",
        "",
    ]


FAULT_LABELS = {
    "worker_kill": "worker SIGKILLed",
    "redis_master_kill": "Redis master SIGKILLed (replica promoted)",
    "broker_kill": "Kafka broker SIGKILLed, restarted",
    "redis_outage": "every Redis node stopped, restarted",
}


def fault_tables(data: dict, brief: bool = False) -> list[str]:
    """``tests.faults.run``: one fault per run on the clusters, every user's state recounted from the log."""
    runs = data.get("scenarios") or []
    if not runs:
        return []
    out = [
        "### Faults: nothing lost, nothing applied twice",
        "",
        f"{data.get('events_per_scenario', 0):,} events per run, 3 workers, 6 partitions, Redis Cluster "
        "(3 masters + 3 replicas, `WAIT 1`) and 3 Kafka brokers (replication 3, `min.insync.replicas` 2); "
        "after the run every user's state is recomputed from the events topic.",
        "",
        "| fault | down (s) | resumed after (s) | lost | applied twice | wrong state | feedback missing "
        "| replays skipped by fence | store retries | passed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        wrong = r["users_missing"] + r["users_wrong_fence"] + r["users_wrong_history"]
        out.append(
            f"| {FAULT_LABELS.get(r['scenario'], r['scenario'])} | {_fmt(r['fault_duration_s'], 1)} "
            f"| {_fmt(r['recovery_s'], 1)} | {r['events_lost']} | {r['events_applied_twice']} | {wrong} "
            f"| {r['feedback_missing']} | {_fmt(r['replayed_skipped_by_fence'])} | {_fmt(r['retries'])} "
            f"| {'yes' if r.get('passed') else '**no**'} |"
        )
    out += [
        "",
        "*Resumed after*: from the fault until every partition that still had events committed past "
        "where it stood.",
    ]
    if brief:
        return out + [
            "",
            f"Command: `{_argv(data.get('command'))}`; machine: {_machine_short(data.get('machine') or {})}",
            "",
        ]
    return out + _provenance(data)


def render_readme(folder: Path = REPO / "docs" / "results") -> str:
    """The README's headline tables: quality per dataset and per scene, the pipeline, faults."""
    lines: list[str] = []
    evaluation = _load(folder / "eval.json")
    if evaluation:
        lines += eval_tables(evaluation, loo_too=False, models=README_MODELS, variants=False)
        lines += ["Runs under loader options (scenes on one-scene logs, events shuffled in time): "
                  "[docs/performance.md](docs/performance.md).", ""]
    bench = _load(folder / "bench.json")
    if bench:
        lines += bench_headline(bench)
    faults = _load(folder / "faults.json")
    if faults:
        lines += fault_tables(faults, brief=True)
    return "\n".join(lines or ["No measured results yet."]).rstrip() + "\n"


def render(folder: Path = REPO / "docs" / "results") -> str:
    """Every table, for docs/performance.md."""
    lines: list[str] = []
    evaluation = _load(folder / "eval.json")
    if evaluation:
        lines += eval_tables(evaluation) + repeat_tables(evaluation)
    bench = _load(folder / "bench.json")
    if bench:
        lines += bench_tables(bench) or generic_table("Pipeline benchmark", bench)
    engine = _load(folder / "engine_bench.json")
    if engine:
        lines += engine_tables(engine)
    for name in ("kernel_bench.json", "kernel_bench_gpu.json"):
        kernel = _load(folder / name)
        if kernel:
            lines += kernel_tables(kernel) or generic_table("Kernel microbenchmark", kernel)
    serve = _load(folder / "serve.json")
    if serve:
        lines += serve_tables(serve)
    lines += scale_tables(folder)
    faults = _load(folder / "faults.json")
    if faults:
        lines += fault_tables(faults)
    if not lines:
        lines = ["No measured results yet."]
    return "\n".join(lines).rstrip() + "\n"


def scale_tables(folder: Path) -> list[str]:
    """The candidate stage, batched messages and the GPU path (``streams.scaletables``)."""
    from streams.scaletables import batched_tables, candidate_tables, gpu_tables

    lines: list[str] = []
    candidates = _load(folder / "candidates.json")
    if candidates:
        lines += candidate_tables(candidates)
    batched = _load(folder / "bench_batched.json")
    if batched:
        lines += batched_tables(batched)
    return lines + gpu_tables(_load(folder / "kernel_gpu.json"), _load(folder / "engine_gpu.json"))


def replace_block(path: Path, body: str) -> None:
    """Put ``body`` between the marker comments of ``path``; the rest of the file stays as it is."""
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{body}{END}{tail}")


def update_readme(readme: Path = REPO / "README.md") -> None:
    """Re-render the README's headline results, docs/performance.md's tables and docs/configuration.md."""
    from streams.configdoc import update_configuration

    replace_block(readme, render_readme())
    replace_block(readme.parent / "docs" / "performance.md", render())
    update_configuration(readme.parent / "docs" / "configuration.md")


if __name__ == "__main__":
    update_readme()
