"""Markdown tables of ``models.evaluate``'s results (``docs/results/eval.json``): prequential quality per
log and model, the per-scene and scene-switch tables, the repeat / new-to-user split and leave-one-out.
Pure formatting; ``streams.report`` places them in the README and docs/performance.md.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

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


def repeat_tables(data: dict) -> list[str]:
    """HR@10 / NDCG@10 on *repeat* events (the user had the item before) and on items new to the user,
    per log with several models: on repeat-heavy logs most hits are repeats, and counting them (as
    transition kNN does) sets a ceiling for any model.

    >>> def entry(model, hr):
    ...     g = {"n": 4, "HR@10": hr, "NDCG@10": hr / 2}
    ...     return {"protocol": "prequential", "dataset": "t", "model": model, "command": ["x"],
    ...             "result": {"metrics": {"overall": g, "repeat": {**g, "n": 3}, "new_to_user": g}}}
    >>> lines = repeat_tables({"entries": [entry("attention", 0.5), entry("transition_knn", 0.25)]})
    >>> [line for line in lines if line.startswith("| t |")][0]
    '| t | 75% | attention | 0.5000 / 0.2500 | 0.5000 / 0.2500 | 0.5000 / 0.2500 |'
    """
    entries = [e for e in data.get("entries", []) if e["protocol"] == "prequential"
               and "repeat" in e["result"].get("metrics", {})]
    if not entries:
        return []
    out = ["### Repeats and new items (prequential HR@10 / NDCG@10)", "",
           "A *repeat*: the user had this item before; *new*: the user's first event on it. The share is "
           "the log's share of repeat events.", "",
           "| dataset | repeats | model | overall | repeat | new to user |", "|---|---|---|---|---|---|"]
    for e in sorted(entries, key=lambda e: (e["dataset"], e["model"] != "attention", e["model"])):
        m = e["result"]["metrics"]
        cells = [f"{m[g]['HR@10']:.4f} / {m[g]['NDCG@10']:.4f}" for g in ("overall", "repeat", "new_to_user")]
        share = m["repeat"]["n"] / max(m["overall"]["n"], 1)
        out.append(f"| {e['dataset']} | {share:.0%} | {e['model']} | " + " | ".join(cells) + " |")
    return out + ["", f"Command(s): `{_command(entries)}`", ""]
