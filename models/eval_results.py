"""The result file of :mod:`models.evaluate`: where and from which commit an entry was computed, the
model's configuration, the merge of fresh entries into the JSON file and the one-line summary printed
per entry. Plain Python; the only file it writes is the one it is given.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path


def machine() -> dict:
    """Where a result was computed (platform, CPU count, Python and library versions)."""
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": version("jax"),
            "numpy": version("numpy"), "river": version("river")}


def git_commit() -> dict:
    """Commit hash (None before the first commit or outside git) and whether the tree had local changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    commit = head.stdout.strip() if head.returncode == 0 else None
    return {"commit": commit, "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def model_config(model) -> dict:
    """``model.config()`` when the model has one (JSON-safe via ``str``), else its scalar attributes."""
    if callable(getattr(model, "config", None)):
        return json.loads(json.dumps(model.config(), default=str))
    return {key: value for key, value in vars(model).items()
            if not key.startswith("_") and isinstance(value, (bool, int, float, str))}


def entry_key(entry: dict) -> tuple:
    """What identifies an entry in the file: a fresh entry with the same key replaces the old one."""
    return entry["dataset"], entry["model"], entry["protocol"], entry.get("limit")


def merge_results(path: Path, entries: list[dict]) -> list[dict]:
    """Write ``entries`` into the JSON file at ``path``, replacing entries with the same
    (dataset, model, protocol, limit); returns the merged list.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "eval.json"
    >>> old = {"dataset": "toy", "model": "popularity", "protocol": "loo", "limit": None, "run": 1}
    >>> [e["run"] for e in merge_results(path, [old]) + merge_results(path, [{**old, "run": 2}])]
    [1, 2]
    >>> json.loads(path.read_text())["entries"][0]["run"]
    2
    """
    existing = []
    if path.exists():
        existing = json.loads(path.read_text())["entries"]
    fresh = {entry_key(e) for e in entries}
    merged = [e for e in existing if entry_key(e) not in fresh] + entries
    merged.sort(key=lambda e: (e["dataset"], e["protocol"], e["model"], str(e.get("limit"))))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"entries": merged}, indent=1) + "\n")
    temporary.replace(path)
    return merged


def headline(entry: dict) -> dict:
    """The metrics an entry is judged by: overall for prequential, the test users for leave-one-out."""
    result = entry["result"]
    return result["metrics"]["overall"] if entry["protocol"] == "prequential" else result["test"]


def summary_line(entry: dict) -> str:
    """The line printed as each entry finishes.

    >>> entry = {"dataset": "toy", "model": "popularity", "protocol": "loo", "n_events": 9, "seconds": 1.5,
    ...          "result": {"test": {"HR@1": 0.5, "cold_share": 0.1}}}
    >>> " ".join(summary_line(entry).split())
    'toy popularity loo n=9 HR@1=0.5000 cold=0.100 1.5s'
    """
    metrics = headline(entry)
    shown = " ".join(f"{name}={value:.4f}" for name, value in metrics.items() if "@" in name)
    return (f"{entry['dataset']:28s} {entry['model']:15s} {entry['protocol']:11s} n={entry['n_events']:<7d} "
            f"{shown} cold={metrics['cold_share']:.3f} {entry['seconds']:.1f}s")
