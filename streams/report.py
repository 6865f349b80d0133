"""Render measured results from ``docs/results/*.json`` into the README and docs/performance.md.

Neither carries a hand-typed number: ``attnflow report`` (``python -m streams.report``) rewrites the
block between the marker comments of each, from the files the evaluation and benchmark commands wrote,
with the command behind each table: a few headline tables in the README, every table in
docs/performance.md; it also regenerates docs/configuration.md from ``streams.settings``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from streams.benchtables import (_cpu_lines, _fmt, _profile_lines, _provenance, _share, bench_tables,
                                 engine_tables, generic_table, kernel_tables)

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
# Published full-ranking leave-one-out numbers on Amazon Beauty (from the issue / papers), for reference.
PUBLISHED_BEAUTY = {
    "SASRec (published)": {"HR@20": 0.0894, "NDCG@20": 0.0386},
    "ICSRec (published, best)": {"HR@20": 0.1298, "NDCG@20": 0.0663},
}


# The README's quality table leaves variants (attention_full_softmax) to docs/performance.md.
README_MODELS = (
    "attention",
    "attention_no_transfer",
    "transition_knn",
    "scene_history_knn",
    "popularity",
    "scene_popularity",
    "river_mf",
)


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _argv(command) -> str:
    """A recorded command as one shell line, with the interpreter's path shortened to ``python``.

    >>> _argv(["/root/.pyenv/versions/3.11.7/bin/python", "-m", "models.evaluate", "--quiet"])
    'python -m models.evaluate --quiet'
    """
    if not isinstance(command, list):
        return str(command)
    head = command[:1]
    if head and Path(head[0]).name.startswith("python"):
        head = ["python"]
    return shlex.join(head + command[1:])


def _command(entries) -> str:
    commands = {_argv(e["command"]) for e in entries if e.get("command")}
    return "; ".join(sorted(commands))


def _scene_restricted(entry) -> bool:
    """An entry of a log with per-scene catalogues (every list restricted to the event's scene)."""
    return "scene_switch" in entry["result"].get("metrics", {})


def eval_tables(data: dict, loo_too: bool = True, models: tuple[str, ...] | None = None,
                variants: bool = True) -> list[str]:
    """``models.evaluate``'s entries: prequential HR/NDCG per dataset and model (only ``models`` when
    given), the per-scene table of scene-restricted logs, and (``loo_too``) the leave-one-out table.
    ``variants=False`` leaves out the runs of a log under loader options (``ml-100k[shuffle=0.1]``)."""
    entries = [e for e in data.get("entries", []) if (models is None or e["model"] in models)
               and (variants or "[" not in e["dataset"])]
    if not entries:
        return []
    out = []
    preq = [e for e in entries if e["protocol"] == "prequential" and not _scene_restricted(e)]
    if preq:
        models = sorted({e["model"] for e in preq}, key=lambda m: (m != "attention", m))
        out += [
            "### Prequential full-ranking (test-then-train over each whole log)",
            "",
            "HR@10 / NDCG@10 per dataset and model, the best in bold; each cell replays the whole log, and "
            "the commands that wrote them are listed under the table.",
            "",
            "| dataset | events | " + " | ".join(models) + " |",
            "|---|---|" + "---|" * len(models),
        ]
        for dataset in sorted({e["dataset"] for e in preq}):
            row = {e["model"]: e for e in preq if e["dataset"] == dataset}
            n = next(iter(row.values()))["n_events"]
            cells = []
            best = max((r["result"]["metrics"]["overall"]["NDCG@10"] for r in row.values()), default=None)
            for m in models:
                if m not in row:
                    cells.append("–")
                    continue
                o = row[m]["result"]["metrics"]["overall"]
                cell = f"{o['HR@10']:.4f} / {o['NDCG@10']:.4f}"
                cells.append(f"**{cell}**" if o["NDCG@10"] == best else cell)
            out.append(f"| {dataset} | {n} | " + " | ".join(cells) + " |")
        out += ["", f"Command(s): `{_command(preq)}`", ""]
    out += scene_tables({"entries": entries})
    loo = [e for e in entries if e["protocol"] == "loo"] if loo_too else []
    if loo:
        out += [
            "### Leave-one-out full ranking (last item test, second-to-last validation, all items ranked)",
            "",
            "| dataset | model | valid HR@10 | test HR@10 | test NDCG@10 | test HR@20 | test NDCG@20 |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in sorted(loo, key=lambda e: (e["dataset"], e["model"])):
            v, t = e["result"]["valid"], e["result"]["test"]
            out.append(
                f"| {e['dataset']} | {e['model']} | {v['HR@10']:.4f} | {t['HR@10']:.4f} | {t['NDCG@10']:.4f} "
                f"| {t['HR@20']:.4f} | {t['NDCG@20']:.4f} |"
            )
        if any(e["dataset"] == "amazon-beauty" for e in loo):
            for name, m in PUBLISHED_BEAUTY.items():
                out.append(f"| amazon-beauty | {name} | | | | {m['HR@20']:.4f} | {m['NDCG@20']:.4f} |")
        out += ["", f"Command(s): `{_command(loo)}`", ""]
    if loo_too:
        machines = {json.dumps(e.get("machine", {}), sort_keys=True) for e in entries}
        out += [f"Machine(s): {'; '.join(sorted(machines))}", ""]
    else:
        out += [
            f"Machine(s): {', '.join(sorted({_machine_short(e.get('machine') or {}) for e in entries}))}",
            "",
        ]
    return out


def _machine_short(machine: dict) -> str:
    """A machine record in a few words.

    >>> _machine_short({"cores": 2, "cpu_model": "AMD EPYC", "jax_devices": ["cpu:0"]})
    '2 cores AMD EPYC, JAX on cpu:0'
    """
    cores = machine.get("cores") or machine.get("cpu_count")
    words = f"{cores} cores" if cores else "unrecorded machine"
    if machine.get("cpu_model"):
        words += f" {machine['cpu_model']}"
    if machine.get("jax_devices"):
        words += f", JAX on {', '.join(machine['jax_devices'])}"
    return words


def scene_tables(data: dict) -> list[str]:
    """HR@10 of the scene-restricted logs (movie+book): overall, per scene, on scene switches (the user's
    previous event was in the other scene) and on stays, and on switches into each scene.

    >>> def entry(model, hr):
    ...     g = {"n": 10, "HR@10": hr}
    ...     metrics = {"overall": g, "by_scene": {"movie": g}, "scene_switch": g, "scene_stay": g,
    ...                "scene_switch_by_scene": {"movie": g}}
    ...     return {"protocol": "prequential", "dataset": "mb", "model": model, "n_events": 10,
    ...             "command": ["python", "-m", "models.evaluate"], "result": {"metrics": metrics}}
    >>> lines = scene_tables({"entries": [entry("popularity", 0.01), entry("attention", 0.03)]})
    >>> [line for line in lines if line.startswith("| attention")]
    ['| attention | 0.0300 | 0.0300 | 0.0300 | 0.0300 | 0.0300 |']
    """
    entries = [e for e in data.get("entries", []) if e["protocol"] == "prequential" and _scene_restricted(e)]
    out = []
    for dataset in sorted({e["dataset"] for e in entries}):
        rows = sorted(
            (e for e in entries if e["dataset"] == dataset),
            key=lambda e: (e["model"] != "attention", e["model"]),
        )
        first = rows[0]["result"]["metrics"]
        scenes, into = list(first["by_scene"]), list(first.get("scene_switch_by_scene", {}))

        def groups(m):
            return (
                [m["overall"]]
                + [m["by_scene"][s] for s in scenes]
                + [m["scene_switch"], m["scene_stay"]]
                + [m["scene_switch_by_scene"][s] for s in into]
            )

        names = (
            ["overall"]
            + [f"scene {s}" for s in scenes]
            + ["scene switch", "scene stay"]
            + [f"switch into {s}" for s in into]
        )
        out += [
            f"### Per scene and on scene switches: {dataset} (HR@10)",
            "",
            "Every list is ranked over the event's scene only. A *scene switch*: the user's previous event "
            "was in the other scene; a *stay*: in the same one.",
            "",
            "| model | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            "| *events* | " + " | ".join(f"*{g['n']:,}*" for g in groups(first)) + " |",
        ]
        for e in rows:
            out.append(
                f"| {e['model']} | "
                + " | ".join(f"{g['HR@10']:.4f}" for g in groups(e["result"]["metrics"]))
                + " |"
            )
        out += ["", f"Command(s): `{_command(rows)}`", ""]
    return out


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
        lines += eval_tables(evaluation)
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
