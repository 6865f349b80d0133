"""Ranking metrics for full-catalogue evaluation: HR@K, NDCG@K, MRR from top-N lists, vectorised in NumPy.

Pure functions plus one accumulator; no I/O. Ranks are 0-based positions in a returned list, -1 = absent.
"""
from __future__ import annotations

import numpy as np

from models.events import EVENT_TYPES


def rank_of(target, ranked) -> np.ndarray | int:
    """0-based position of ``target`` in ``ranked`` (last axis), or -1 when absent.

    Works on one list or row-wise on a batch (``target`` [B], ``ranked`` [B, N]). Padding (-1) never
    matches a real (non-negative) item.

    >>> rank_of(7, [3, 7, 9])
    1
    >>> rank_of(np.array([3, 5]), np.array([[3, 7, 9], [1, 2, -1]])).tolist()
    [0, -1]
    """
    ranked = np.asarray(ranked)
    target = np.asarray(target)
    hits = (ranked == target[..., None]) & (target[..., None] >= 0)
    found = hits.any(axis=-1)
    ranks = np.where(found, hits.argmax(axis=-1), -1)
    return int(ranks) if ranks.ndim == 0 else ranks


def hr_at_k(ranks, k: int) -> np.ndarray:
    """Hit (1.0) when the 0-based rank is within the top ``k``, else 0.0.

    >>> hr_at_k(np.array([0, 9, 10, -1]), 10).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    ranks = np.asarray(ranks)
    return ((ranks >= 0) & (ranks < k)).astype(np.float64)


def ndcg_at_k(ranks, k: int) -> np.ndarray:
    """NDCG@k with one relevant item: ``1 / log2(rank + 2)`` for a 0-based rank < k, else 0.

    >>> ndcg_at_k(np.array([0, 1, 3, 10, -1]), 10).round(4).tolist()
    [1.0, 0.6309, 0.4307, 0.0, 0.0]
    """
    ranks = np.asarray(ranks)
    hit = (ranks >= 0) & (ranks < k)
    return np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def mrr(ranks) -> np.ndarray:
    """Reciprocal rank WITHIN THE RETURNED LIST: ``1 / (rank + 1)``, 0 when the item is not in it.

    With top-N lists this is MRR@N (a truncated MRR), not the full-catalogue reciprocal rank.

    >>> mrr(np.array([0, 1, 4, -1])).tolist()
    [1.0, 0.5, 0.2, 0.0]
    """
    ranks = np.asarray(ranks)
    return np.where(ranks >= 0, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)


def summarize(ranks, ks=(10, 20), list_length: int | None = None) -> dict[str, float]:
    """Mean HR@k and NDCG@k for each k and ``MRR@list_length`` (default ``max(ks)``) over ``ranks``.

    >>> summarize(np.array([0, 15, -1]), ks=(10, 20))  # doctest: +NORMALIZE_WHITESPACE
    {'n': 3, 'HR@10': 0.333333, 'NDCG@10': 0.333333, 'HR@20': 0.666667, 'NDCG@20': 0.414884,
     'MRR@20': 0.354167}
    """
    ranks = np.asarray(ranks)
    out: dict[str, float] = {"n": int(ranks.size)}
    for k in ks:
        out[f"HR@{k}"] = _mean(hr_at_k(ranks, k))
        out[f"NDCG@{k}"] = _mean(ndcg_at_k(ranks, k))
    n = list_length or max(ks)
    out[f"MRR@{n}"] = _mean(mrr(np.where(ranks < n, ranks, -1)))
    return out


def _mean(values: np.ndarray) -> float:
    return round(float(values.mean()), 6) if values.size else 0.0


def scene_switches(users, scenes) -> np.ndarray:
    """True for a *scene-switch* event: the user's previous event (in stream order) was in another scene.

    A user's first event is no switch; rows must be in stream order.

    >>> scene_switches(np.array([0, 1, 0, 0, 1, 0]), np.array([0, 1, 1, 1, 1, 0])).tolist()
    [False, False, True, False, False, True]
    """
    users, scenes = np.asarray(users), np.asarray(scenes)
    order = np.lexsort((np.arange(users.size), users))  # by user, stream order within a user
    previous_same_user = np.r_[False, users[order][1:] == users[order][:-1]]
    changed = np.r_[False, scenes[order][1:] != scenes[order][:-1]]
    out = np.zeros(users.size, bool)
    out[order] = previous_same_user & changed
    return out


def scene_stays(users, scenes) -> np.ndarray:
    """True where the user's previous event was in the same scene (neither first event nor switch).

    >>> scene_stays(np.array([0, 1, 0, 0, 1, 0]), np.array([0, 1, 1, 1, 1, 0])).tolist()
    [False, False, False, True, True, False]
    """
    users = np.asarray(users)
    order = np.lexsort((np.arange(users.size), users))
    first = np.ones(users.size, bool)
    first[order[1:]] = users[order][1:] != users[order][:-1]
    return ~first & ~scene_switches(users, scenes)


def repeats(users, items) -> np.ndarray:
    """True where the user had the same item earlier in the stream (a *repeat* event).

    >>> repeats(np.array([0, 1, 0, 0, 1]), np.array([5, 5, 6, 5, 6])).tolist()
    [False, False, False, True, False]
    """
    users, items = np.asarray(users), np.asarray(items)
    order = np.lexsort((np.arange(users.size), items, users))  # by (user, item), stream order within
    same = np.r_[False, (users[order][1:] == users[order][:-1]) & (items[order][1:] == items[order][:-1])]
    out = np.zeros(users.size, bool)
    out[order] = same
    return out


class MetricAccumulator:
    """Collects per-event ranks and reports metrics overall, by event type and over equal-count time windows.

    ``cold`` flags events whose item the model had never been shown; their share is reported as
    ``cold_share`` (they are misses for every model that only recommends seen items). Given ``scene_names``
    and per-event ``scenes`` / ``switch`` flags (see :func:`scene_switches`), it also reports ``by_scene``,
    ``scene_switch`` (switch events), ``scene_switch_by_scene`` (by the scene switched into) and
    ``scene_stay`` (events whose user's previous event was in the same scene; pass ``stay``). Given
    per-event ``repeat`` flags (see :func:`repeats`) it reports ``repeat`` (the user had this item before)
    and ``new_to_user``: on repeat-heavy logs they show where a model's hits come from.

    >>> acc = MetricAccumulator(ks=(1, 2), n_windows=2)
    >>> acc.add(ranks=np.array([0, -1]), types=np.array([1, 3]), ts=np.array([10.0, 11.0]))
    >>> acc.add(ranks=np.array([1, 0]), types=np.array([1, 1]), ts=np.array([12.0, 13.0]),
    ...         cold=np.array([0, 0]))
    >>> result = acc.result()
    >>> result["overall"]["HR@1"], result["overall"]["HR@2"], result["by_type"]["purchase"]["n"]
    (0.5, 0.75, 1)
    >>> [w["HR@1"] for w in result["windows"]], result["windows"][1]["ts_start"]
    ([0.5, 0.5], 12.0)
    >>> acc = MetricAccumulator(ks=(1,), n_windows=1, scene_names=("movie", "book"))
    >>> acc.add(np.array([0, -1, 0]), np.zeros(3), np.zeros(3), scenes=np.array([0, 1, 1]),
    ...         switch=np.array([0, 1, 0]), stay=np.array([0, 0, 1]))
    >>> out = acc.result()
    >>> out["by_scene"]["book"]["HR@1"], out["scene_switch"]["n"], out["scene_stay"]["HR@1"]
    (0.5, 1, 1.0)
    >>> acc = MetricAccumulator(ks=(1,), n_windows=1)
    >>> acc.add(np.array([0, -1, 0]), np.zeros(3), np.zeros(3), repeat=np.array([1, 0, 0]))
    >>> out = acc.result()
    >>> out["repeat"]["n"], out["new_to_user"]["HR@1"]
    (1, 0.5)
    """

    def __init__(self, ks=(10, 20), n_windows: int = 10, type_names=EVENT_TYPES, scene_names=None):
        self.ks = tuple(ks)
        self.n_windows = n_windows
        self.type_names = tuple(type_names)
        self.scene_names = None if scene_names is None else tuple(scene_names)
        self._ranks: list[np.ndarray] = []
        self._types: list[np.ndarray] = []
        self._ts: list[np.ndarray] = []
        self._cold: list[np.ndarray] = []
        self._scenes: list[np.ndarray] = []
        self._switch: list[np.ndarray] = []
        self._stay: list[np.ndarray] = []
        self._repeat: list[np.ndarray] = []

    def add(self, ranks, types, ts, cold=None, scenes=None, switch=None, stay=None, repeat=None) -> None:
        """Record one batch of events (in stream order); ``scenes``/``switch``/``stay`` need scene names;
        ``repeat`` is given for every batch or for none."""
        ranks = np.asarray(ranks, np.int64)
        if repeat is not None:
            self._repeat.append(np.asarray(repeat, bool))
        self._ranks.append(ranks)
        self._types.append(np.asarray(types, np.int64))
        self._ts.append(np.asarray(ts, np.float64))
        self._cold.append(np.zeros(ranks.shape, bool) if cold is None else np.asarray(cold, bool))
        if self.scene_names is not None:
            for parts, values, dtype in ((self._scenes, scenes, np.int64), (self._switch, switch, bool),
                                         (self._stay, stay, bool)):
                parts.append(np.zeros(ranks.shape, dtype) if values is None else np.asarray(values, dtype))

    def __len__(self) -> int:
        return sum(r.size for r in self._ranks)

    def result(self) -> dict:
        """JSON-ready dict: ``overall``, ``by_type`` (only types that occur) and ``windows``; with scene names
        also ``by_scene``, ``scene_switch``, ``scene_switch_by_scene`` and ``scene_stay``."""
        ranks, types, ts, cold = (np.concatenate(parts) if parts else np.zeros(0)
                                  for parts in (self._ranks, self._types, self._ts, self._cold))
        ranks, types, cold = ranks.astype(np.int64), types.astype(np.int64), cold.astype(bool)

        def block(mask) -> dict:
            out = summarize(ranks[mask], self.ks)
            out["cold_share"] = _mean(cold[mask].astype(np.float64))
            return out

        everything = np.ones(ranks.shape, bool)
        by_type = {name: block(types == code) for code, name in enumerate(self.type_names)
                   if np.any(types == code)}
        windows = []
        bounds = np.linspace(0, ranks.size, self.n_windows + 1).round().astype(int)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if stop <= start:
                continue
            mask = np.zeros(ranks.shape, bool)
            mask[start:stop] = True
            windows.append({"ts_start": float(ts[start]), "ts_end": float(ts[stop - 1]), **block(mask)})
        out = {"overall": block(everything), "by_type": by_type, "windows": windows}
        if self.scene_names is not None:
            scenes, switch, stay = (np.concatenate(parts) if parts else np.zeros(0, dtype)
                                    for parts, dtype in ((self._scenes, np.int64), (self._switch, bool),
                                                         (self._stay, bool)))
            out["by_scene"] = {name: block(scenes == code) for code, name in enumerate(self.scene_names)
                               if np.any(scenes == code)}
            out["scene_switch"] = block(switch)
            out["scene_switch_by_scene"] = {name: block(switch & (scenes == code))
                                            for code, name in enumerate(self.scene_names)
                                            if np.any(switch & (scenes == code))}
            out["scene_stay"] = block(stay)
        if self._repeat:
            repeat = np.concatenate(self._repeat)
            if repeat.size != ranks.size:
                raise ValueError(f"repeat flags for {repeat.size} of {ranks.size} events: "
                                 "pass them for every batch")
            out["repeat"], out["new_to_user"] = block(repeat), block(~repeat)
        return out
