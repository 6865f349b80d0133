"""Transition kNN baseline: item-to-item transitions from each user's recent items, filled with
popularity. Online Python/numpy state, no I/O.
"""
from __future__ import annotations

from collections import Counter, defaultdict, deque

import numpy as np

from models.popularity import DecayedPopularity
from models.recommender import PAD, rank_shared, scene_mask


class TransitionKNN:
    """Item-to-item transitions from each user's recent items, scored by recency; filled with popularity.

    Learning event (u, i) adds ``1 / d`` to ``T[j][i]`` for the item j that u touched d steps earlier
    (d = 1..window). A user's score for item i is ``sum_d decay**(d-1) * T[j_d][i] / |T[j_d]|`` over
    the user's last ``window`` items; remaining slots are filled by :class:`DecayedPopularity`.
    With ``scene_history=True`` a user's history is kept per scene: transitions are learned within
    each scene's sequence and a request in scene s looks only at the user's last items in s.

    >>> model = TransitionKNN(window=2)
    >>> z = np.zeros(4, int)
    >>> model.learn(np.array([0, 1, 2, 0]), np.array([10, 10, 10, 11]), z, z, np.arange(4.0))
    >>> model.learn(np.array([1]), np.array([11]), z[:1], z[:1], np.array([5.0]))
    >>> model.learn(np.array([2]), np.array([10]), z[:1], z[:1], np.array([6.0]))  # user 2 last touched 10
    >>> model.recommend(np.array([2]), z[:1], np.array([7.0]), k=2).tolist()
    [[11, 10]]
    """

    def __init__(self, window: int = 3, decay: float = 0.6, half_life_s: float = 86400.0,
                 self_transitions: bool = True, scene_history: bool = False, name: str = "transition_knn"):
        self.name = name
        self.window = window
        self.decay = decay
        self.self_transitions = self_transitions
        self.scene_history = scene_history
        self.transitions: dict[int, Counter] = defaultdict(Counter)
        self.row_totals: Counter = Counter()
        self.recent: dict = {}  # user (or (user, scene) with scene_history) -> last ``window`` items
        self.popularity = DecayedPopularity(half_life_s, name="popularity")

    def learn(self, users, items, types, scenes, ts) -> None:
        window, transitions, row_totals = self.window, self.transitions, self.row_totals
        for key, item in zip(self._keys(users, scenes), np.asarray(items).tolist()):
            history = self.recent.get(key)
            if history is None:
                history = self.recent[key] = deque(maxlen=window)
            for distance, previous in enumerate(reversed(history), start=1):
                if previous == item and not self.self_transitions:
                    continue
                weight = 1.0 / distance
                transitions[previous][item] += weight
                row_totals[previous] += weight
            history.append(item)
        self.popularity.learn(users, items, types, scenes, ts)

    def _keys(self, users, scenes) -> list:
        users = np.asarray(users).tolist()
        return list(zip(users, np.asarray(scenes).tolist())) if self.scene_history else users

    def recommend(self, users, scenes, ts, k, exclude=None, *, item_scenes=None) -> np.ndarray:
        popularity = self.popularity.item_scores()
        n_seen = int(np.isfinite(popularity).sum())
        longest_exclude = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        # Enough popular items to fill any row after dropping its neighbours and its excluded items.
        length = min(n_seen, 2 * k + longest_exclude)
        row_scenes = np.asarray(scenes) if item_scenes is not None else np.zeros(len(users), int)
        popular, allowed = {}, {}
        for scene in np.unique(row_scenes).tolist():
            listed = rank_shared(popularity, np.array([scene]), length, None, item_scenes)[0]
            popular[scene] = listed[listed >= 0].tolist()
            allowed[scene] = None if item_scenes is None else scene_mask(item_scenes, scene, popularity.size)
        out = np.full((len(users), k), PAD, np.int32)
        for row, (key, scene) in enumerate(zip(self._keys(users, scenes), row_scenes.tolist())):
            banned = set() if exclude is None else set(np.asarray(exclude[row]).tolist())
            chosen = self._neighbours(key, k, banned, popularity, allowed[scene])
            taken = set(chosen)
            for item in popular[scene]:
                if len(chosen) >= k:
                    break
                if item not in taken and item not in banned:
                    chosen.append(item)
            out[row, :len(chosen)] = chosen
        return out

    def _neighbours(self, key, k: int, banned: set, popularity: np.ndarray,
                    allowed: np.ndarray | None = None) -> list[int]:
        history = self.recent.get(key)
        if not history:
            return []
        keys, weights = [], []
        for distance, previous in enumerate(reversed(history)):
            row = self.transitions.get(previous)
            if not row:
                continue
            # Rows reach thousands of entries; summing them through numpy beats a Python loop.
            keys.append(np.fromiter(row.keys(), np.int64, len(row)))
            weights.append(np.fromiter(row.values(), np.float64, len(row))
                           * (self.decay ** distance / self.row_totals[previous]))
        if not keys:
            return []
        keys, weights = np.concatenate(keys), np.concatenate(weights)
        if banned:
            keep = ~np.isin(keys, np.fromiter(banned, np.int64, len(banned)))
            keys, weights = keys[keep], weights[keep]
        if allowed is not None:  # the request's scene catalogue (items learned so far are inside the mask)
            keep = allowed[keys]
            keys, weights = keys[keep], weights[keep]
        if keys.size == 0:
            return []
        candidates, slots = np.unique(keys, return_inverse=True)
        values = np.bincount(slots, weights, minlength=candidates.size)
        # Best transition score first; ties go to the more popular item, then to the lower index.
        best = np.lexsort((candidates, -popularity[candidates], -values))[:k]
        return candidates[best].tolist()
