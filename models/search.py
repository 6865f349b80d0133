"""Hyperparameter search on a validation log: the prequential protocol of :mod:`models.evaluate` over a grid.

Runs every configuration of the grid (attention model options, e.g. ``learning_rate`` or ``dim``) and the
named baselines on one dataset, and merges the headline numbers into a JSON file with the command and
machine. Reads datasets through :mod:`models.loaders`; writes only ``--out``. Run
``python -m models.search --help``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in models.evaluate: tiny products, shared cores

import argparse
import itertools
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from models import evaluate, loaders
from models.eval_results import git_commit, machine

DEFAULT_OUT = "docs/results/moviebook_val_search.json"
GROUPS = ("overall", "scene_switch", "scene_stay")


def parse_value(text: str):
    """A grid value: int, float, bool or string.

    >>> parse_value("3"), parse_value("1e-2"), parse_value("false"), parse_value("adam")
    (3, 0.01, False, 'adam')
    """
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def grid(specs: list[str]) -> list[dict]:
    """Every combination of ``name=v1,v2,...`` specs (one dict per configuration; ``[{}]`` for none).

    >>> grid(["dim=32,64", "replay_steps=2"])
    [{'dim': 32, 'replay_steps': 2}, {'dim': 64, 'replay_steps': 2}]
    """
    axes = []
    for spec in specs:
        name, _, values = spec.partition("=")
        if not name or not values:
            raise ValueError(f"grid spec must be name=v1,v2,..., got {spec!r}")
        axes.append([(name, parse_value(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


def headline(metrics: dict, k: int = 10) -> dict:
    """HR@k / NDCG@k overall, per scene, on scene-switch and scene-stay events (rounded)."""
    def pick(block: dict) -> dict:
        return {"n": block["n"], f"HR@{k}": block[f"HR@{k}"], f"NDCG@{k}": block[f"NDCG@{k}"]}

    out = {group: pick(metrics[group]) for group in GROUPS if group in metrics}
    out.update({f"scene {name}": pick(block) for name, block in metrics.get("by_scene", {}).items()})
    return out


def best(runs: list[dict], metric: str = "NDCG@10") -> list[dict]:
    """Per dataset and limit, the attention run and the baseline with the highest overall ``metric``.

    >>> best([{"dataset": "d", "limit": None, "model": m, "options": {}, "overall": {"NDCG@10": v}}
    ...       for m, v in (("attention", 0.1), ("popularity", 0.3), ("transition_knn", 0.2))])[1]["model"]
    'popularity'
    """
    chosen: dict[tuple, dict] = {}
    for row in runs:
        family = "attention" if row["model"].startswith("attention") else "baseline"
        key = row["dataset"], str(row["limit"]), family
        if key not in chosen or row["overall"][metric] > chosen[key]["overall"][metric]:
            chosen[key] = row
    return [{"dataset": row["dataset"], "limit": row["limit"], "family": key[2], "model": row["model"],
             "options": row["options"], "by": f"overall {metric}",
             **{group: row[group] for group in GROUPS if group in row}}
            for key, row in sorted(chosen.items())]


def _key(row: dict) -> tuple:
    return row["dataset"], row["limit"], row["model"], json.dumps(row["options"], sort_keys=True)


def merge(path: Path, rows: list[dict], context: dict) -> dict:
    """Merge ``rows`` into the search file (same dataset, limit, model and options replace older rows)."""
    existing = json.loads(path.read_text()) if path.exists() else {"runs": []}
    fresh = {_key(r) for r in rows}
    runs = [r for r in existing["runs"] if _key(r) not in fresh] + rows
    runs.sort(key=lambda r: (r["dataset"], str(r["limit"]), r["model"],
                             json.dumps(r["options"], sort_keys=True)))
    data = {"protocol": "prequential, scene-restricted (models.evaluate.prequential)", "best": best(runs),
            "runs": runs,
            "commands": sorted(set(existing.get("commands", [])) | {" ".join(context["command"])}),
            "machine": context["machine"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    temporary.replace(path)
    return data


def search(dataset: str, configs: list[dict], baselines=(), models=("attention",), options=None,
           limit: int | None = None, k: int = 10, batch: int = 256, out: str | Path = DEFAULT_OUT,
           data_dir=None) -> list[dict]:
    """Run each of ``models`` under every config and each baseline once; merge the rows into ``out``."""
    options = options or {}
    log = loaders.load(dataset, data_dir=data_dir, **options)
    if limit is not None:
        log = loaders.head(log, limit)
    name = log.name + "".join(f"[{key}={value}]" for key, value in sorted(options.items()))
    context = {"command": list(getattr(sys, "orig_argv", sys.argv)), "machine": machine()}
    rows = []
    jobs = [(model, config) for config in configs for model in models] + [(b, {}) for b in baselines]
    for model_name, config in jobs:
        if model_name.startswith("attention"):
            overrides = dict(config, transfer=model_name != "attention_no_transfer")
            model = evaluate._attention(log, **overrides)
        else:
            model = evaluate.MODELS[model_name](log)
        started = time.perf_counter()
        result = evaluate.prequential(log, model, k=k, batch=batch)
        row = {"dataset": name, "limit": limit, "model": model_name, "options": config,
               "seconds": round(time.perf_counter() - started, 1), "git": git_commit(),
               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               **headline(result["metrics"], k)}
        rows.append(row)
        shown = " ".join(f"{group}={row[group][f'HR@{k}']:.4f}/{row[group][f'NDCG@{k}']:.4f}"
                         for group in GROUPS if group in row)
        print(f"{model_name:22s} {json.dumps(config):60s} {shown} {row['seconds']}s", flush=True)
        merge(Path(out), [row], context)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m models.search --dataset moviebook --options split=val --grid dim=32,64``."""
    parser = argparse.ArgumentParser(prog="python -m models.search", description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--options", type=evaluate._csv, default=[],
                        help="loader options key=value, e.g. split=val")
    parser.add_argument("--grid", action="append", default=[],
                        help="attention option name=v1,v2 (repeatable; the grid is their product)")
    parser.add_argument("--models", type=evaluate._csv, default=["attention"],
                        help="attention and/or attention_no_transfer (default attention)")
    parser.add_argument("--baselines", type=evaluate._csv, default=[], help="baseline models run once each")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    options = dict(setting.partition("=")[::2] for setting in args.options)
    options = {key: parse_value(value) for key, value in options.items()}
    search(loaders.ALIASES.get(args.dataset, args.dataset), grid(args.grid), args.baselines, args.models,
           options, args.limit, args.k, args.batch, args.out, args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
