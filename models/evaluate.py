"""Offline evaluation: prequential replay and leave-one-out over the shared datasets, results to JSON
(:mod:`models.eval_results`) and plots (:mod:`models.eval_plots`).

Drives any :class:`~models.baselines.Recommender`; reads datasets through :mod:`models.loaders` and writes
only under the ``--out`` folder. Run ``python -m models.evaluate --help``.
"""
from __future__ import annotations

import os

# Evaluation issues many tiny matrix products (a few users x the catalogue); multi-threaded OpenBLAS spins on
# them and ran RiverMF 3x slower on a loaded 2-core box. Only takes effect when this module is the first
# to import numpy (the CLI); export OPENBLAS_NUM_THREADS to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models import loaders, splits
from models.baselines import DecayedPopularity, Recommender, RiverMF, ScenePopularity, TransitionKNN
from models.eval_plots import plot_results, plot_scene_results
from models.eval_results import git_commit, machine, merge_results, model_config, summary_line
from models.events import EVENT_TYPES, EventLog
from models.metrics import MetricAccumulator, rank_of, repeats, scene_stays, scene_switches, summarize

__all__ = ["DEFAULT_OUT", "MODELS", "PROTOCOLS", "git_commit", "leave_one_out", "machine", "main",
           "merge_results", "plot_results", "plot_scene_results", "prequential", "run", "scene_catalogues",
           "user_unique_batches"]

DEFAULT_OUT = "docs/results/eval.json"
PROTOCOLS = ("prequential", "loo")


def _half_life(log: EventLog) -> float:
    """A decay half-life of 1/20 of the log's robust time span (1st..99th percentile), at least 1 s;
    no decay (infinite half-life) when the timestamps are synthetic (order only)."""
    if log.extra.get("synthetic_ts"):
        return float("inf")
    if len(log) < 2:
        return 1.0
    low, high = np.percentile(log.ts, [1, 99])
    return max(1.0, float(high - low) / 20.0)


# name -> factory(log) -> Recommender. Factories may size themselves from the log; adding a model is one line,
# e.g. MODELS["attention"] = lambda log: AttentionRecommender(n_items_hint=log.n_items).
def _attention(log: EventLog, **options) -> Recommender:
    from models.attention import for_log  # imports JAX; only when asked for

    return for_log(log, **options)


MODELS: dict[str, Callable[[EventLog], Recommender]] = {
    "attention": lambda log: _attention(log),
    "attention_no_transfer": lambda log: _attention(log, transfer=False),
    "attention_full_softmax": lambda log: _attention(log, negatives=0),
    "attention_seed1": lambda log: _attention(log, seed=1),  # robustness: the frozen config on a second seed
    "popularity": lambda log: DecayedPopularity(half_life_s=_half_life(log)),
    "scene_popularity": lambda log: ScenePopularity(half_life_s=_half_life(log)),
    "transition_knn": lambda log: TransitionKNN(window=3, half_life_s=_half_life(log)),
    "scene_history_knn": lambda log: TransitionKNN(window=3, half_life_s=_half_life(log), scene_history=True,
                                                   name="scene_history_knn"),
    "river_mf": lambda log: RiverMF(n_factors=32, n_negatives=4, lr=0.05, l2=1e-4, seed=0),
}


def user_unique_batches(users: np.ndarray, max_size: int) -> np.ndarray:
    """Boundaries of consecutive micro-batches in which no user appears twice (cut at a repeat or at
    max_size).

    >>> user_unique_batches(np.array([1, 2, 1, 3, 4, 5]), 3).tolist()
    [0, 2, 5, 6]
    """
    bounds = [0]
    members: set = set()
    for index, user in enumerate(np.asarray(users).tolist()):
        if user in members or len(members) >= max_size:
            bounds.append(index)
            members.clear()
        members.add(user)
    if len(users):
        bounds.append(len(users))
    return np.asarray(bounds, np.int64)


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="ev", disable=not enabled, leave=False, mininterval=1.0)


def _check_recommendations(model: Recommender, recs: np.ndarray, n_rows: int, k: int,
                           known: np.ndarray) -> None:
    """Enforce the interface contract: int [B, k], -1 pads, only items the model has been shown."""
    if recs.shape != (n_rows, k) or not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"{model.name}.recommend returned {recs.dtype}{recs.shape}; "
                         f"expected int [{n_rows}, {k}]")
    real = recs[recs >= 0]
    if np.any(real >= known.shape[0]) or not np.all(known[real]):
        raise ValueError(f"{model.name}.recommend returned items it was never shown in learn/fit")


def scene_catalogues(log: EventLog) -> np.ndarray | None:
    """The per-scene catalogues of a log that has them (``extra["item_scene"]``: each item code's scene) as
    a uint32 bitmask over item codes (bit s: in scene s's catalogue); None for logs without.

    >>> log = EventLog.from_columns("toy", ["a", "b"], ["x", "y"], [0, 0], [0.0, 1.0], scenes=[0, 1],
    ...                             scene_names=("movie", "book"))
    >>> log.extra["item_scene"] = np.array([0, 1])
    >>> scene_catalogues(log).tolist()
    [1, 2]
    """
    item_scene = log.extra.get("item_scene")
    if item_scene is None:
        return None
    return np.left_shift(np.uint32(1), np.asarray(item_scene, np.uint32)).astype(np.uint32)


def _seen_before(users: np.ndarray, items: np.ndarray, seen: dict[int, list[int]]) -> list[np.ndarray]:
    """Each event's user's items before it (``seen`` is updated with the events, in order)."""
    out = []
    for user, item in zip(users.tolist(), items.tolist()):
        history = seen.setdefault(user, [])
        out.append(np.array(history, np.int64))
        history.append(item)
    return out


def _check_restrictions(model: Recommender, recs: np.ndarray, scenes: np.ndarray, item_scenes,
                        exclude) -> None:
    """Enforce the candidate restriction: only items of the row's scene catalogue, none of ``exclude[b]``."""
    if item_scenes is not None:
        bits = np.asarray(item_scenes, np.uint32)[np.clip(recs, 0, len(item_scenes) - 1)]
        inside = (bits >> np.asarray(scenes, np.uint32)[:, None]) & 1 == 1
        if not np.all(inside | (recs < 0)):
            raise ValueError(f"{model.name}.recommend returned an item outside the request's scene catalogue")
    if exclude is not None:
        for row, banned in enumerate(exclude):
            if len(banned) and np.isin(recs[row], banned).any():
                raise ValueError(f"{model.name}.recommend returned an excluded item")


def _learn_in_batches(log: EventLog, model: Recommender, batch: int) -> None:
    bounds = user_unique_batches(log.user, batch)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        model.learn(log.user[start:stop], log.item[start:stop], log.type[start:stop], log.scene[start:stop],
                    log.ts[start:stop])


def prequential(log: EventLog, model: Recommender, k: int = 10, batch: int = 256, n_windows: int = 10,
                progress: bool = False, exclude_seen: bool | None = None) -> dict:
    """Test-then-train replay in time order with full-catalogue ranking.

    Micro-batches hold each user at most once. For every event, before its batch is learned, the model
    returns a top-``2k`` list; HR and NDCG at ``k`` and ``2k`` and MRR within the ``2k`` list are recorded,
    overall, by event type and over ``n_windows`` equal-count windows. Events whose item the model had
    not been shown yet are misses by construction; their share is ``cold_share``.

    A log with several scenes is also reported per scene, on scene-switch events (the user's previous
    event was in another scene) and on scene-stay events. A log with per-scene catalogues
    (:func:`scene_catalogues`) restricts every list to the event's scene catalogue; with ``exclude_seen``
    (default: the log's ``extra["exclude_seen"]``) the user's earlier items are excluded too. The
    evaluator checks both restrictions on every list.

    >>> log = EventLog.from_columns("toy", ["a", "b", "c", "d"], ["x", "x", "x", "y"], [1, 1, 3, 1],
    ...                             [0, 1, 2, 3.0])
    >>> result = prequential(log, DecayedPopularity(half_life_s=10.0), k=1, batch=2)
    >>> result["metrics"]["overall"]["HR@1"], result["metrics"]["overall"]["cold_share"], result["n_batches"]
    (0.25, 0.75, 2)
    """
    ks = (k, 2 * k)
    list_length = max(ks)
    by_scene = len(log.scene_names) > 1
    accumulator = MetricAccumulator(ks=ks, n_windows=n_windows, type_names=EVENT_TYPES,
                                    scene_names=log.scene_names if by_scene else None)
    switch, stay = ((scene_switches(log.user, log.scene), scene_stays(log.user, log.scene)) if by_scene
                    else (None, None))
    item_scenes = scene_catalogues(log)
    restrict = {} if item_scenes is None else {"item_scenes": item_scenes}
    exclude_seen = bool(log.extra.get("exclude_seen", False)) if exclude_seen is None else exclude_seen
    seen: dict[int, list[int]] = {}
    # Repeat events can only be hit when seen items stay in the lists.
    repeat = None if exclude_seen else repeats(log.user, log.item)
    known = np.zeros(max(log.n_items, 1), bool)
    # A model that can rank each event from its exact pre-event history inside one call
    # (``recommend_then_learn``) takes plain batches, where users may repeat; others get user-unique ones.
    fused = hasattr(model, "recommend_then_learn")
    bounds = (np.unique(np.r_[np.arange(0, len(log), batch), len(log)]) if fused
              else user_unique_batches(log.user, batch))
    first_seen = np.full(max(log.n_items, 1), len(log), np.int64)
    np.minimum.at(first_seen, log.item, np.arange(len(log)))
    started = time.perf_counter()
    with _progress(len(log), f"{log.name}/{model.name}/prequential", progress) as bar:
        for start, stop in zip(bounds[:-1], bounds[1:]):
            users, items, types = log.user[start:stop], log.item[start:stop], log.type[start:stop]
            scenes, ts = log.scene[start:stop], log.ts[start:stop]
            exclude = _seen_before(users, items, seen) if exclude_seen else None
            groups = ({"scenes": scenes, "switch": switch[start:stop], "stay": stay[start:stop]} if by_scene
                      else {})
            if repeat is not None:
                groups["repeat"] = repeat[start:stop]
            if fused:
                extra = {"exclude": exclude} if exclude is not None else {}
                recs = np.asarray(model.recommend_then_learn(users, items, types, scenes, ts, list_length,
                                                             **extra, **restrict))
                known[items] = True
                _check_recommendations(model, recs, stop - start, list_length, known)
                _check_restrictions(model, recs, scenes, item_scenes, exclude)
                cold = first_seen[items] >= np.arange(start, stop)  # not seen before this very event
                accumulator.add(rank_of(items, recs), types, ts, cold=cold, **groups)
                bar.update(stop - start)
                continue
            recs = np.asarray(model.recommend(users, scenes, ts, list_length, exclude, **restrict))
            _check_recommendations(model, recs, stop - start, list_length, known)
            _check_restrictions(model, recs, scenes, item_scenes, exclude)
            accumulator.add(rank_of(items, recs), types, ts, cold=~known[items], **groups)
            model.learn(users, items, types, scenes, ts)
            known[items] = True
            bar.update(stop - start)
    candidates = "scene catalogue of the event's scene" if item_scenes is not None else "full catalogue"
    return {"protocol": "prequential", "n_events": len(log), "n_batches": len(bounds) - 1, "batch": batch,
            "batching": "fused (users may repeat; each event ranked from its pre-event history)" if fused
            else "user-unique",
            "candidates": candidates + (", the user's seen items excluded" if exclude_seen else ""),
            "seconds": round(time.perf_counter() - started, 3), "metrics": accumulator.result()}


def _items_by_user(log: EventLog) -> dict[int, np.ndarray]:
    order = np.argsort(log.user, kind="stable")
    users, starts = np.unique(log.user[order], return_index=True)
    return {int(u): np.unique(part) for u, part in zip(users, np.split(log.item[order], starts[1:]))}


def _rank_held_out(held_out: EventLog, model: Recommender, history: dict[int, np.ndarray], known: np.ndarray,
                   list_length: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    ranks = np.empty(len(held_out), np.int64)
    empty = np.zeros(0, np.int64)
    item_scenes = scene_catalogues(held_out)
    restrict = {} if item_scenes is None else {"item_scenes": item_scenes}
    for start in range(0, len(held_out), chunk):
        stop = min(start + chunk, len(held_out))
        users, scenes = held_out.user[start:stop], held_out.scene[start:stop]
        exclude = [history.get(int(u), empty) for u in users]
        recs = np.asarray(model.recommend(users, scenes, held_out.ts[start:stop], list_length, exclude,
                                          **restrict))
        _check_recommendations(model, recs, stop - start, list_length, known)
        _check_restrictions(model, recs, scenes, item_scenes, exclude)
        ranks[start:stop] = rank_of(held_out.item[start:stop], recs)
    return ranks, ~known[held_out.item]


def leave_one_out(log: EventLog, model: Recommender, k: int = 10, batch: int = 256, chunk: int = 512,
                  progress: bool = False) -> dict:
    """SASRec-style leave-one-out with full ranking (see :func:`models.loaders.leave_one_out` for the split).

    The model learns the train part in time order (or ``fit(train)`` if it has ``fit``; then train is not
    replayed), ranks every user's validation item excluding the user's train items, learns the validation
    events, then ranks the test item excluding train and validation items. A held-out item that is also in
    the user's history is therefore a miss, as in the S3-Rec evaluation code.

    >>> log = EventLog.from_columns("toy", list("aaabbbccc"), list("xyzxyzyzw"), [0] * 9, [0, 1, 2] * 3)
    >>> result = leave_one_out(log, DecayedPopularity(half_life_s=10.0), k=1)
    >>> result["valid"]["HR@1"], result["test"]["HR@1"], result["test"]["cold_share"], result["n_train"]
    (0.666667, 0.666667, 0.333333, 3)
    """
    ks = (k, 2 * k)
    list_length = max(ks)
    train, valid, test = loaders.leave_one_out(log)
    started = time.perf_counter()
    known = np.zeros(max(log.n_items, 1), bool)
    with _progress(len(train), f"{log.name}/{model.name}/loo-train", progress) as bar:
        if hasattr(model, "fit"):
            model.fit(train)
        else:
            _learn_in_batches(train, model, batch)
        bar.update(len(train))
    known[train.item] = True
    history = _items_by_user(train)
    valid_ranks, valid_cold = _rank_held_out(valid, model, history, known, list_length, chunk)
    _learn_in_batches(valid, model, batch)
    known[valid.item] = True
    for user, item in zip(valid.user.tolist(), valid.item.tolist()):
        history[user] = np.union1d(history.get(user, np.zeros(0, np.int64)), [item])
    test_ranks, test_cold = _rank_held_out(test, model, history, known, list_length, chunk)

    def report(ranks, cold) -> dict:
        return {**summarize(ranks, ks), "cold_share": round(float(cold.mean()), 6) if cold.size else 0.0}

    return {"protocol": "loo", "n_events": len(log), "n_train": len(train), "n_valid": len(valid),
            "n_test": len(test), "users_train_only": int(log.n_users - len(test)),
            "seconds": round(time.perf_counter() - started, 3),
            "valid": report(valid_ranks, valid_cold), "test": report(test_ranks, test_cold)}


def run(datasets, models, protocols=("prequential",), out: str | Path = DEFAULT_OUT, limit: int | None = None,
        k: int = 10, batch: int = 256, data_dir=None, progress: bool = True, plots: bool = True,
        dataset_options: dict | None = None) -> list[dict]:
    """Evaluate every dataset x model x protocol, merge the entries into ``out`` and redraw the plots.

    A fresh model (from :data:`MODELS`) is built for each protocol. Returns this run's entries.
    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {PROTOCOLS}")
    out = Path(out)
    context = {"command": list(getattr(sys, "orig_argv", sys.argv)), "machine": machine(),
               "git": git_commit()}
    entries = []
    for dataset in datasets:
        options = (dataset_options or {}).get(dataset, {})
        loader_options = {key: value for key, value in options.items() if key != "shuffle"}
        log = loaders.load(dataset, data_dir=data_dir, **loader_options)
        if "shuffle" in options:  # robustness check on any log: that fraction of its events moved in time
            log = splits.shuffle_in_time(log, float(options["shuffle"]))
        if limit is not None:
            log = loaders.head(log, limit)
        if options:  # a variant of the dataset (e.g. with scenes) is a dataset of its own in the results
            log.name = log.name + "".join(f"[{key}={value}]" for key, value in sorted(options.items()))
        for model_name in models:
            for protocol in protocols:
                model = MODELS[model_name](log)
                started = time.perf_counter()
                if protocol == "prequential":
                    result = prequential(log, model, k=k, batch=batch, progress=progress)
                else:
                    result = leave_one_out(log, model, k=k, batch=batch, progress=progress)
                entry = {"dataset": log.name, "model": model_name, "protocol": protocol, "limit": limit,
                         "n_events": len(log), "n_users": log.n_users, "n_items": log.n_items,
                         "seconds": round(time.perf_counter() - started, 3), "dataset_notes": log.notes,
                         "model_config": model_config(model), **context,
                         "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "result": result}
                entries.append(entry)
                print(summary_line(entry), flush=True)
                # after every entry, so an interrupted run keeps its work
                merged = merge_results(out, entries)
    if plots and entries:
        plot_results(merged, out.parent, k=k)
    return entries


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m models.evaluate --datasets ml-100k --models popularity --limit 5000``."""
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__)
    parser.add_argument("--datasets", type=_csv, default=list(loaders.DATASETS),
                        help=f"comma-separated; default all: {','.join(loaders.DATASETS)}")
    parser.add_argument("--models", type=_csv, default=list(MODELS),
                        help=f"comma-separated; default all: {','.join(MODELS)}")
    parser.add_argument("--protocols", type=_csv, default=["prequential"],
                        help="comma-separated subset of prequential,loo (default prequential)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N events (quick runs)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"JSON file to merge results into ({DEFAULT_OUT})")
    parser.add_argument("--k", type=int, default=10, help="report HR/NDCG at k and 2k (default 10)")
    parser.add_argument("--batch", type=int, default=256, help="max micro-batch size (default 256)")
    parser.add_argument("--data-dir", default=None,
                        help=f"dataset folder (default ${loaders.DATA_ENV} or shared)")
    parser.add_argument("--scene", type=_csv, default=[],
                        help="derive scenes, per dataset: e.g. tmall=type,taobao=category "
                             "(see models.loaders)")
    parser.add_argument("--options", type=_csv, default=[],
                        help="loader options, per dataset: e.g. moviebook:split=val (see models.loaders); "
                             "DATASET:shuffle=0.1 moves that fraction of events in time (robustness)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in args.models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    options = {}
    for spec in args.scene:
        name, _, scene = spec.partition("=")
        options[loaders.ALIASES.get(name, name)] = {"scene": scene}
    for spec in args.options:
        name, _, setting = spec.partition(":")
        key, _, value = setting.partition("=")
        if not key or not value:
            parser.error(f"--options takes dataset:key=value, got {spec!r}")
        value = int(value) if value.isdigit() else value
        options.setdefault(loaders.ALIASES.get(name, name), {})[key] = value
    datasets = [loaders.ALIASES.get(d, d) for d in args.datasets]
    run(datasets, args.models, args.protocols, out=args.out, limit=args.limit, k=args.k, batch=args.batch,
        data_dir=args.data_dir, progress=not args.quiet, plots=not args.no_plots, dataset_options=options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
