"""Evaluator on tiny synthetic logs: batching, prequential bookkeeping, leave-one-out and the JSON merge."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models import evaluate
from models.baselines import DecayedPopularity
from models.events import EventLog


class Oracle:
    """Knows the next item of each user in a fixed script: checks that recommend happens before learn."""

    name = "oracle"

    def __init__(self, log):
        self.log, self.learned, self.seen = log, 0, np.zeros(log.n_items, bool)

    def recommend(self, users, scenes, ts, k, exclude=None):
        out = np.full((len(users), k), -1, np.int32)
        for row, index in enumerate(range(self.learned, self.learned + len(users))):
            if self.seen[self.log.item[index]]:
                out[row, 0] = self.log.item[index]
        return out

    def learn(self, users, items, types, scenes, ts):
        self.learned += len(users)
        self.seen[items] = True


def toy_log():
    users = ["u1", "u2", "u1", "u3", "u2", "u1"]
    items = ["a", "b", "a", "b", "c", "b"]
    return EventLog.from_columns("toy", users, items, [1, 1, 3, 2, 1, 3], [0, 1, 2, 3, 4, 5])


def test_batches_never_repeat_a_user():
    log = toy_log()
    bounds = evaluate.user_unique_batches(log.user, 10)
    assert bounds.tolist() == [0, 2, 5, 6]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        assert len(set(log.user[start:stop].tolist())) == stop - start


def test_prequential_counts_hits_cold_items_and_types():
    log = toy_log()
    result = evaluate.prequential(log, Oracle(log), k=1, batch=10)
    overall = result["metrics"]["overall"]
    # Cold: a (event 0), b (event 1), c (event 4). The oracle hits the other three.
    assert overall["n"] == 6 and overall["HR@1"] == 0.5 and overall["cold_share"] == 0.5
    assert result["metrics"]["by_type"]["purchase"]["HR@1"] == 1.0  # events 2 and 5
    assert result["n_batches"] == 3
    # Only event 2 (u1 buys a again) is a repeat; the oracle hits it and two of the five others.
    repeat, new = result["metrics"]["repeat"], result["metrics"]["new_to_user"]
    assert (repeat["n"], repeat["HR@1"], new["n"], new["HR@1"]) == (1, 1.0, 5, 0.4)


def test_prequential_rejects_unseen_recommendations():
    class Cheat(Oracle):
        def recommend(self, users, scenes, ts, k, exclude=None):
            return np.zeros((len(users), k), np.int32)  # item 0 before it was ever learned

    log = toy_log()
    with pytest.raises(ValueError, match="never shown"):
        evaluate.prequential(log, Cheat(log), k=1)


def test_leave_one_out_excludes_history_and_calls_fit():
    users = ["u0"] * 5 + [f"u{n}" for n in range(1, 4) for _ in range(4)]
    items = list("pqrst") + list("pqrs") * 3
    ts = list(range(5)) + list(range(4)) * 3
    log = EventLog.from_columns("toy", users, items, [0] * 17, ts)

    class Fitted(DecayedPopularity):
        def fit(self, train):
            self.fitted = len(train)
            self.learn(train.user, train.item, train.type, train.scene, train.ts)

    model = Fitted(half_life_s=1e9)
    result = evaluate.leave_one_out(log, model, k=1)
    assert model.fitted == 9 and result["n_valid"] == 4 == result["n_test"]
    # Without the exclusion popularity would always say p. u1..u3: history p, q -> r (valid hit); after
    # learning validation, history p, q, r -> s (test hit). u0 has nothing left to offer at valid, and its
    # test item t was never seen (cold).
    assert result["valid"]["HR@1"] == 0.75 and result["test"]["HR@1"] == 0.75
    assert result["test"]["cold_share"] == 0.25


def test_run_merges_entries(tmp_path, monkeypatch):
    log = toy_log()
    monkeypatch.setattr(evaluate.loaders, "load", lambda name, data_dir=None, **opts: log)
    out = tmp_path / "eval.json"
    out.write_text(json.dumps({"entries": [
        {"dataset": "toy", "model": "popularity", "protocol": "prequential", "limit": None, "stale": True},
        {"dataset": "other", "model": "popularity", "protocol": "prequential", "limit": None}]}))
    evaluate.run(["toy"], ["popularity"], ["prequential", "loo"], out=out, progress=False, plots=False)
    entries = json.loads(out.read_text())["entries"]
    keys = sorted((e["dataset"], e["protocol"]) for e in entries)
    assert keys == [("other", "prequential"), ("toy", "loo"), ("toy", "prequential")]
    fresh = next(e for e in entries if e["dataset"] == "toy" and e["protocol"] == "prequential")
    assert "stale" not in fresh and fresh["n_events"] == 6 and fresh["machine"]["cpu_count"]
    assert "command" in fresh and "commit" in fresh["git"]


def test_main_quick_run_writes_plots(tmp_path, monkeypatch):
    log = toy_log()
    monkeypatch.setattr(evaluate.loaders, "load", lambda name, data_dir=None, **opts: log)
    out = tmp_path / "results" / "eval.json"
    assert evaluate.main(["--datasets", "toy", "--models", "popularity,transition_knn", "--limit", "5",
                          "--out", str(out), "--quiet"]) == 0
    entries = json.loads(out.read_text())["entries"]
    assert {e["model"] for e in entries} == {"popularity", "transition_knn"} and entries[0]["n_events"] == 5
    assert (out.parent / "prequential_HR10_over_time.png").exists()


def two_scene_log(n_users=6, n_events=60, seed=0):
    """Items 0-9 movies (scene 0), 10-19 books (scene 1); no user repeats an item."""
    rng = np.random.default_rng(seed)
    users, items, scenes = [], [], []
    seen = {u: set() for u in range(n_users)}
    while len(users) < n_events:
        user, item = int(rng.integers(n_users)), int(rng.integers(20))
        if item in seen[user]:
            continue
        seen[user].add(item)
        users.append(f"u{user}")
        items.append(f"i{item}")
        scenes.append(int(item >= 10))
    log = EventLog.from_columns("two-scene", users, items, [0] * n_events, np.arange(float(n_events)),
                                scenes=scenes, scene_names=("movie", "book"))
    log.extra["item_scene"] = np.array([int(int(name[1:]) >= 10) for name in log.item_ids], np.int8)
    log.extra["exclude_seen"] = True
    return log


@pytest.mark.parametrize("name", ["popularity", "scene_popularity", "transition_knn", "scene_history_knn",
                                  "river_mf"])
def test_scene_catalogues_restrict_every_list(name):
    log = two_scene_log()
    model = evaluate.MODELS[name](log)
    original = model.recommend
    lists = []

    def recording(users, scenes, ts, k, exclude=None, **restrict):
        recs = original(users, scenes, ts, k, exclude, **restrict)
        lists.append((np.asarray(scenes), recs, exclude))
        return recs

    model.recommend = recording
    result = evaluate.prequential(log, model, k=2, batch=4)
    assert "scene catalogue" in result["candidates"] and "seen items excluded" in result["candidates"]
    scene_of = log.extra["item_scene"]
    for scenes, recs, exclude in lists:
        for row, scene in enumerate(scenes):
            shown = recs[row][recs[row] >= 0]
            assert (scene_of[shown] == scene).all() and not np.isin(shown, exclude[row]).any()
    metrics = result["metrics"]
    assert set(metrics["by_scene"]) == {"movie", "book"}
    n_switch = int(evaluate.scene_switches(log.user, log.scene).sum())
    assert metrics["scene_switch"]["n"] == n_switch > 0
    assert metrics["scene_switch"]["n"] + metrics["scene_stay"]["n"] + log.n_users == len(log)


def test_evaluator_rejects_lists_outside_the_scene_or_with_seen_items():
    log = two_scene_log()

    class Unrestricted(DecayedPopularity):
        def recommend(self, users, scenes, ts, k, exclude=None, *, item_scenes=None):
            return super().recommend(users, scenes, ts, k, exclude)  # ignores the scene catalogue

    with pytest.raises(ValueError, match="outside the request's scene catalogue"):
        evaluate.prequential(log, Unrestricted(half_life_s=1e9), k=5, batch=4)

    class Forgetful(DecayedPopularity):
        def recommend(self, users, scenes, ts, k, exclude=None, *, item_scenes=None):
            return super().recommend(users, scenes, ts, k, None, item_scenes=item_scenes)

    with pytest.raises(ValueError, match="excluded item"):
        evaluate.prequential(log, Forgetful(half_life_s=1e9), k=5, batch=4)


def test_seen_before_lists_each_events_earlier_items():
    seen = {}
    assert [e.tolist() for e in evaluate._seen_before(np.array([1, 2, 1]), np.array([5, 6, 7]), seen)] == [
        [], [], [5]]
    assert [e.tolist() for e in evaluate._seen_before(np.array([1]), np.array([8]), seen)] == [[5, 7]]


def recording_loader(monkeypatch, log) -> list[dict]:
    """Make ``loaders.load`` return ``log``; returns the list its calls' loader options are appended to."""
    calls = []

    def load(name, data_dir=None, **opts):
        calls.append(opts)
        return log

    monkeypatch.setattr(evaluate.loaders, "load", load)
    return calls


def test_main_options_pick_a_loader_option(tmp_path, monkeypatch):
    calls = recording_loader(monkeypatch, two_scene_log())
    out = tmp_path / "eval.json"
    assert evaluate.main(["--datasets", "moviebook", "--models", "popularity",
                          "--options", "moviebook:split=val", "--out", str(out), "--quiet"]) == 0
    assert calls == [{"split": "val"}]
    [entry] = json.loads(out.read_text())["entries"]
    assert entry["dataset"] == "two-scene[split=val]" and "scene_switch" in entry["result"]["metrics"]
    assert (tmp_path / "prequential_HR10_by_scene.png").exists()


def test_the_shuffle_option_moves_events_in_time_on_any_log_and_names_the_variant(tmp_path, monkeypatch):
    """``DATASET:shuffle=F`` is not a loader option: the loader gets none, the log gets that fraction of its
    events moved in time (``splits.shuffle_in_time``) and the entry is a dataset of its own."""
    log = toy_log()
    calls = recording_loader(monkeypatch, log)
    out = tmp_path / "eval.json"
    assert evaluate.main(["--datasets", "toy", "--models", "popularity", "--options", "toy:shuffle=0.5",
                          "--out", str(out), "--quiet", "--no-plots"]) == 0
    assert calls == [{}]
    [entry] = json.loads(out.read_text())["entries"]
    assert entry["dataset"] == f"{log.name}[shuffle=0.5]" and entry["n_events"] == len(log)
