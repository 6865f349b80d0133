"""Popularity baselines: decayed item counts, one list for everyone (``DecayedPopularity``) or one per
scene (``ScenePopularity``). Online numpy state, no I/O.
"""
from __future__ import annotations

import numpy as np

from models.recommender import PAD, grow, rank_shared


class DecayedPopularity:
    """Most popular items under exponentially decayed (optionally type-weighted) counts; same list for
    everyone.

    Counts are stored scaled by ``2 ** ((t - t_ref) / half_life_s)`` so a learn step touches only the new
    events; the reference time is moved forward before the scale can overflow.

    >>> model = DecayedPopularity(half_life_s=10.0)
    >>> z = np.zeros(3, int)
    >>> model.learn(np.array([0, 1, 2]), np.array([5, 5, 3]), z, z, np.array([0.0, 0.0, 0.0]))
    >>> model.learn(np.array([0]), np.array([2]), np.zeros(1, int), np.zeros(1, int), np.array([30.0]))
    >>> model.recommend(np.array([9]), np.zeros(1, int), np.array([30.0]), k=4).tolist()
    [[2, 5, 3, -1]]
    """

    def __init__(self, half_life_s: float = 86400.0, type_weights=None, name: str = "popularity"):
        self.name = name
        self.half_life_s = float(half_life_s)
        self.type_weights = None if type_weights is None else np.asarray(type_weights, np.float64)
        self.scores = np.zeros(0, np.float64)
        self.seen = np.zeros(0, bool)
        self.size = 0  # 1 + the largest item index learned
        self.t_ref: float | None = None

    def learn(self, users, items, types, scenes, ts) -> None:
        items = np.asarray(items, np.int64)
        if items.size == 0:
            return
        ts = np.asarray(ts, np.float64)
        self.size = max(self.size, int(items.max()) + 1)
        self.scores = grow(self.scores, self.size)
        self.seen = grow(self.seen, self.size, False)
        if self.t_ref is None:
            self.t_ref = float(ts[0])
        exponent = (ts - self.t_ref) / self.half_life_s
        if exponent.max() > 600.0:  # rebase long before 2**1023 overflows
            shift = float(exponent.max())
            self.scores *= 2.0 ** (-shift)
            self.t_ref += shift * self.half_life_s
            exponent -= shift
        weight = np.exp2(exponent)
        if self.type_weights is not None:
            weight = weight * self.type_weights[np.asarray(types, np.int64)]
        np.add.at(self.scores, items, weight)
        self.seen[items] = True

    def recommend(self, users, scenes, ts, k, exclude=None, *, item_scenes=None) -> np.ndarray:
        scenes = np.zeros(len(users), int) if item_scenes is None else scenes
        return rank_shared(self.item_scores(), scenes, k, exclude, item_scenes)

    def item_scores(self) -> np.ndarray:
        """Current decayed popularity of every item index; ``-inf`` for items never learned."""
        return np.where(self.seen[:self.size], self.scores[:self.size], -np.inf)


class ScenePopularity:
    """Decayed popularity counted per scene: a row in scene s gets the items most popular in s, then
    (when fewer than k) the most popular items overall.

    >>> model = ScenePopularity(half_life_s=1e9)
    >>> z = np.zeros(3, int)
    >>> model.learn(np.array([0, 1, 2]), np.array([5, 5, 3]), z, np.array([0, 0, 1]), np.zeros(3))
    >>> model.recommend(np.array([9, 9]), np.array([0, 1]), np.zeros(2), k=2).tolist()
    [[5, 3], [3, 5]]
    """

    def __init__(self, half_life_s: float = 86400.0, name: str = "scene_popularity"):
        self.name = name
        self.half_life_s = float(half_life_s)
        self.by_scene: dict[int, DecayedPopularity] = {}
        self.overall = DecayedPopularity(half_life_s)

    def learn(self, users, items, types, scenes, ts) -> None:
        users, items, types, scenes, ts = (np.asarray(x) for x in (users, items, types, scenes, ts))
        for scene in np.unique(scenes):
            rows = np.flatnonzero(scenes == scene)
            model = self.by_scene.setdefault(int(scene), DecayedPopularity(self.half_life_s))
            model.learn(users[rows], items[rows], types[rows], scenes[rows], ts[rows])
        self.overall.learn(users, items, types, scenes, ts)

    def recommend(self, users, scenes, ts, k, exclude=None, *, item_scenes=None) -> np.ndarray:
        scenes = np.asarray(scenes)
        overall = self.overall.item_scores()
        out = np.full((len(users), k), PAD, np.int32)
        for scene in np.unique(scenes):
            rows = np.flatnonzero(scenes == scene)
            scores = np.full(overall.shape, -np.inf)
            if int(scene) in self.by_scene:
                own = self.by_scene[int(scene)].item_scores()
                scores[:own.size] = own
            none = np.zeros(0, np.int64)
            banned = [exclude[r] for r in rows] if exclude is not None else [none] * len(rows)
            scene_rows = np.full(rows.size, scene)
            first = rank_shared(scores, scene_rows, k, banned, item_scenes)
            # fill from overall popularity, never repeating an item of the scene's own list
            taken = [np.r_[b, f] for b, f in zip(banned, first)]
            fill = rank_shared(overall, scene_rows, k, taken, item_scenes)
            for index, row in enumerate(rows):
                chosen = np.r_[first[index][first[index] >= 0], fill[index][fill[index] >= 0]][:k]
                out[row, :chosen.size] = chosen
        return out
