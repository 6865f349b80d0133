"""Plots of :mod:`models.evaluate`'s prequential entries: HR@k over time, by event type and per scene.
Reads result entries (dicts as in the JSON file) and writes PNG files into the folder it is given.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.events import EVENT_TYPES


def _largest_runs(entries: list[dict], scenes_only: bool = False) -> dict[tuple, dict]:
    """The prequential entry per (dataset, model) to draw: a full run over a ``--limit`` one, then the
    longest; with ``scenes_only``, only entries that report scene-switch metrics."""
    chosen: dict[tuple, dict] = {}
    for entry in entries:
        if entry["protocol"] != "prequential":
            continue
        if scenes_only and "scene_switch" not in entry["result"]["metrics"]:
            continue
        key = entry["dataset"], entry["model"]
        current = chosen.get(key)
        rank = (entry.get("limit") is None, entry["n_events"])
        if current is None or rank > (current.get("limit") is None, current["n_events"]):
            chosen[key] = entry
    return chosen


def plot_results(entries: list[dict], folder: Path, k: int = 10) -> list[Path]:
    """Draw HR@k over time windows and HR@k by event type, one panel per dataset, for prequential entries
    (full runs preferred over ``--limit`` runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = _largest_runs(entries)
    datasets = sorted({d for d, _ in chosen})
    if not datasets:
        return []
    metric = f"HR@{k}"
    columns = min(3, len(datasets))
    rows = -(-len(datasets) // columns)
    paths = []
    # one colour per model across every panel and both figures
    all_models = sorted({m for _, m in chosen})
    colour = {m: f"C{i % 10}" for i, m in enumerate(all_models)}
    for kind in ("over_time", "by_type"):
        figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
        for axis, dataset in zip(axes.flat, datasets):
            models = sorted(m for d, m in chosen if d == dataset)
            if kind == "over_time":
                for model in models:
                    windows = chosen[dataset, model]["result"]["metrics"]["windows"]
                    axis.plot(range(1, len(windows) + 1), [w.get(metric, 0.0) for w in windows], marker="o",
                              label=model, color=colour[model])
                axis.set_xlabel("time window (equal event counts)")
            else:
                types = [t for t in EVENT_TYPES
                         if any(t in chosen[dataset, m]["result"]["metrics"]["by_type"] for m in models)]
                width = 0.8 / max(len(models), 1)
                for offset, model in enumerate(models):
                    by_type = chosen[dataset, model]["result"]["metrics"]["by_type"]
                    axis.bar(np.arange(len(types)) + offset * width,
                             [by_type.get(t, {}).get(metric, 0.0) for t in types], width, label=model,
                             color=colour[model])
                axis.set_xticks(np.arange(len(types)) + 0.4 - width / 2, types)
            axis.set_title(dataset, fontsize=10)
            axis.set_ylabel(metric)
            axis.legend(fontsize=7)
        for axis in list(axes.flat)[len(datasets):]:
            axis.set_visible(False)
        figure.suptitle(f"prequential {metric} " + ("over time" if kind == "over_time" else "by event type"))
        figure.tight_layout()
        path = folder / f"prequential_{metric.replace('@', '')}_{kind}.png"
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths + plot_scene_results(entries, folder, k)


def plot_scene_results(entries: list[dict], folder: Path, k: int = 10) -> list[Path]:
    """Bars of HR@k per model: overall, per scene, on scene-switch and on scene-stay events, one panel per
    dataset whose prequential entries report scenes (full runs preferred over ``--limit`` runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = _largest_runs(entries, scenes_only=True)
    datasets = sorted({d for d, _ in chosen})
    if not datasets:
        return []
    metric = f"HR@{k}"
    all_models = sorted({m for _, m in chosen})
    colour = {m: f"C{i % 10}" for i, m in enumerate(all_models)}
    figure, axes = plt.subplots(len(datasets), 1, figsize=(11, 3.8 * len(datasets)), squeeze=False)
    for axis, dataset in zip(axes.flat, datasets):
        models = sorted(m for d, m in chosen if d == dataset)
        first = chosen[dataset, models[0]]["result"]["metrics"]
        groups = ["overall"] + [f"scene {s}" for s in first["by_scene"]] + ["scene switch", "scene stay"]
        width = 0.8 / len(models)
        for offset, model in enumerate(models):
            metrics = chosen[dataset, model]["result"]["metrics"]
            values = ([metrics["overall"][metric]]
                      + [metrics["by_scene"][s][metric] for s in first["by_scene"]]
                      + [metrics["scene_switch"][metric], metrics["scene_stay"][metric]])
            axis.bar(np.arange(len(groups)) + offset * width, values, width, label=model, color=colour[model])
        axis.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
        axis.set_title(dataset, fontsize=10)
        axis.set_ylabel(metric)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(f"prequential {metric}: per scene and on scene-switch events")
    figure.tight_layout()
    path = folder / f"prequential_{metric.replace('@', '')}_by_scene.png"
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [path]
