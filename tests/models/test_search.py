"""The validation search command on a tiny two-scene log: grid expansion, rows and the JSON merge."""
from __future__ import annotations

import json

from models import search
from tests.models.test_evaluate import two_scene_log


def test_search_runs_grid_and_baselines_and_merges(tmp_path, monkeypatch):
    log = two_scene_log(n_events=60)
    monkeypatch.setattr(search.loaders, "load", lambda name, data_dir=None, **opts: log)
    out = tmp_path / "search.json"
    argv = ["--dataset", "moviebook", "--options", "split=val", "--grid", "dim=8", "--grid", "history=4,6",
            "--baselines", "popularity", "--batch", "16", "--out", str(out)]
    assert search.main(argv) == 0
    data = json.loads(out.read_text())
    assert [(r["model"], r["options"]) for r in data["runs"]] == [
        ("attention", {"dim": 8, "history": 4}), ("attention", {"dim": 8, "history": 6}), ("popularity", {})]
    row = data["runs"][0]
    assert row["dataset"] == "two-scene[split=val]" and {"overall", "scene_switch", "scene movie"} <= set(row)
    assert search.main(argv[:-6] + ["--baselines", "popularity", "--out", str(out)]) == 0  # reruns replace
    data = json.loads(out.read_text())
    assert len(data["runs"]) == 3 and {b["family"] for b in data["best"]} == {"attention", "baseline"}
