"""Baseline recommenders behind the one interface the evaluator drives (the attention model implements it too).

Online and in-process: numpy state grown by capacity doubling, no I/O. Items and users are the dense
indices of an :class:`~models.events.EventLog`; the catalogue grows as ``learn`` sees new items, and a
model only ever recommends items it has learned.
"""
from __future__ import annotations

from collections import Counter, defaultdict, deque
from typing import Protocol, runtime_checkable

import numpy as np

PAD = -1


@runtime_checkable
class Recommender(Protocol):
    """What the evaluator drives. Batches hold numpy arrays of equal length B.

    ``recommend`` returns int32 [B, k] dense item indices, best first, padded with -1 when fewer than k
    items are eligible; ``exclude[b]`` lists items that must not appear in row b (top-k among the rest).
    ``item_scenes`` (keyword, given only for logs with per-scene catalogues): a uint32 array over item
    indices with bit s set when the item is in scene s's catalogue; row b may then only return items in
    the catalogue of ``scenes[b]`` (items past the array's end are in none).
    ``learn`` consumes one micro-batch of events in time order. Optional: ``fit(log)`` for an offline
    bootstrap (leave-one-out calls it on the train part instead of replaying it through ``learn``).
    """

    name: str

    def recommend(self, users: np.ndarray, scenes: np.ndarray, ts: np.ndarray, k: int,
                  exclude: list[np.ndarray] | None = None, *,
                  item_scenes: np.ndarray | None = None) -> np.ndarray: ...

    def learn(self, users, items, types, scenes, ts) -> None: ...


def grow(array: np.ndarray, size: int, fill=0) -> np.ndarray:
    """``array`` with first axis at least ``size``, doubling capacity; new slots hold ``fill``.

    >>> grow(np.zeros(20), 21).shape, grow(np.zeros(20), 5).shape
    ((40,), (20,))
    """
    capacity = array.shape[0]
    if size <= capacity:
        return array
    new_capacity = max(size, 2 * capacity, 16)
    out = np.full((new_capacity,) + array.shape[1:], fill, dtype=array.dtype)
    out[:capacity] = array
    return out


def scene_mask(item_scenes: np.ndarray, scene: int, n_items: int) -> np.ndarray:
    """[n_items] bool: item i is in scene ``scene``'s catalogue (bit ``scene`` of ``item_scenes[i]``).

    >>> scene_mask(np.array([1, 2, 3], np.uint32), 1, 4).tolist()  # item 3 is past the array: in no scene
    [False, True, True, False]
    """
    bits = np.zeros(n_items, np.uint32)
    known = min(n_items, len(item_scenes))
    bits[:known] = np.asarray(item_scenes, np.uint32)[:known]
    return (bits >> np.uint32(scene)) & 1 == 1


def in_scene(item_scenes: np.ndarray, scenes: np.ndarray, n_items: int) -> np.ndarray:
    """[B, n_items] bool: item i is in the catalogue of row b's scene.

    >>> in_scene(np.array([1, 2, 3], np.uint32), np.array([0, 1]), 3).astype(int).tolist()
    [[1, 0, 1], [0, 1, 1]]
    """
    masks = {int(s): scene_mask(item_scenes, int(s), n_items) for s in np.unique(scenes)}
    if not len(scenes):
        return np.zeros((0, n_items), bool)
    return np.stack([masks[int(s)] for s in np.asarray(scenes)])


def rank_shared(scores: np.ndarray, scenes: np.ndarray, k: int, exclude: list[np.ndarray] | None = None,
                item_scenes: np.ndarray | None = None) -> np.ndarray:
    """Top-``k`` of one score vector shared by every row, each row restricted to its scene's catalogue
    when ``item_scenes`` is given (one masked vector per distinct scene in the batch).

    >>> rank_shared(np.array([3.0, 2.0, 1.0]), np.array([0, 1]), 2, item_scenes=np.array([1, 2, 1])).tolist()
    [[0, 2], [1, -1]]
    """
    scenes = np.asarray(scenes)
    if item_scenes is None:
        if exclude is not None:
            return top_k(scores, k, exclude)
        return np.repeat(top_k(scores, k), len(scenes), axis=0)
    out = np.full((len(scenes), k), PAD, np.int32)
    for scene in np.unique(scenes):
        rows = np.flatnonzero(scenes == scene)
        masked = np.where(scene_mask(item_scenes, int(scene), len(scores)), scores, -np.inf)
        out[rows] = top_k(masked, k, [exclude[r] for r in rows] if exclude is not None else [()] * len(rows))
    return out


def top_k(scores: np.ndarray, k: int, exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """Row-wise top-``k`` item indices of ``scores`` [B, N] (or [N], shared by every row), best first.

    Entries at ``-inf`` are never returned (use it for unseen items); ``exclude[b]`` is removed from row b
    before selection; rows with fewer than k eligible items are padded with -1. Ties go to the lower index.

    >>> top_k(np.array([[0.1, 0.9, 0.5, -np.inf]]), 3).tolist()
    [[1, 2, 0]]
    >>> top_k(np.array([0.1, 0.9, 0.5, -np.inf]), 3, exclude=[np.array([1]), np.array([], int)]).tolist()
    [[2, 0, -1], [1, 2, 0]]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1 and exclude is not None:
        # One ranking for every row: its top (k + longest exclusion) holds each row's top k after exclusion.
        longest = max((len(items) for items in exclude), default=0)
        ranked = top_k(scores, k + longest)[0]
        ranked = ranked[ranked >= 0]
        out = np.full((len(exclude), k), PAD, np.int32)
        for row, items in enumerate(exclude):
            kept = ranked[~np.isin(ranked, np.asarray(items, np.int64))][:k] if len(items) else ranked[:k]
            out[row, :len(kept)] = kept
        return out
    if scores.ndim == 1:
        scores = scores[None, :]
    n_rows, n_items = scores.shape
    cost = -scores  # ascending cost = descending score; +inf marks ineligible entries
    if exclude is not None:
        for row, items in enumerate(exclude):
            if len(items):
                items = np.asarray(items, np.int64)
                cost[row, items[(items >= 0) & (items < n_items)]] = np.inf
    out = np.full((n_rows, k), PAD, np.int32)
    take = min(k, n_items)
    if take == 0:
        return out
    rows = np.arange(n_rows)[:, None]
    if take < n_items:
        candidates = np.argpartition(cost, take - 1, axis=1)[:, :take]
        picked = cost[rows, candidates]
        # argpartition splits a tie at the boundary arbitrarily; rows with a finite tie there are re-ranked
        # over all their items so that ties deterministically go to the lower index.
        kth = picked.max(axis=1)
        finite = np.flatnonzero(kth < np.inf)
        if finite.size:
            split = (cost[finite] == kth[finite, None]).sum(1) > (picked[finite] == kth[finite, None]).sum(1)
            for row in finite[split]:
                candidates[row] = np.lexsort((np.arange(n_items), cost[row]))[:take]
                picked[row] = cost[row, candidates[row]]
    else:
        candidates = np.broadcast_to(np.arange(n_items), (n_rows, n_items))
        picked = cost
    order = np.lexsort((candidates, picked), axis=1)
    best = candidates[rows, order]
    out[:, :take] = np.where(picked[rows, order] == np.inf, PAD, best)
    return out


class DecayedPopularity:
    """Most popular items under exponentially decayed (optionally type-weighted) counts; same list for everyone.

    Counts are stored scaled by ``2 ** ((t - t_ref) / half_life_s)`` so a learn step touches only the new
    events; the reference time is moved forward before the scale can overflow.

    >>> model = DecayedPopularity(half_life_s=10.0)
    >>> model.learn(np.array([0, 1, 2]), np.array([5, 5, 3]), np.zeros(3, int), np.zeros(3, int), np.array([0.0, 0.0, 0.0]))
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
    >>> model.learn(np.array([2]), np.array([10]), z[:1], z[:1], np.array([6.0]))  # user 2 now last touched 10
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


class RiverMF:
    """river's online biased matrix factorisation (``river.reco.BiasedMF``) on implicit feedback.

    Each event is a positive (y=1) followed by ``n_negatives`` items sampled uniformly from the items seen
    so far (y=0), trained with logistic loss. Ranking reads the learned item latents and biases out of
    river into numpy mirrors (synced for the items a learn step touched) and scores the whole catalogue
    with one matrix product; an unknown user gets item biases only.

    >>> model = RiverMF(n_factors=4, n_negatives=2, seed=0)
    >>> z = np.zeros(6, int)
    >>> for _ in range(30):
    ...     model.learn(np.array([0, 1, 2, 0, 1, 2]), np.array([0, 0, 0, 1, 2, 3]), z, z, z.astype(float))
    >>> int(model.recommend(np.array([5]), z[:1], z[:1].astype(float), k=1)[0, 0])  # most popular: item 0
    0
    """

    def __init__(self, n_factors: int = 32, n_negatives: int = 4, lr: float = 0.05, l2: float = 1e-4,
                 seed: int = 0, name: str = "river_mf"):
        from river import optim, reco

        self.name = name
        self.n_negatives = n_negatives
        self.mf = reco.BiasedMF(
            n_factors=n_factors,
            bias_optimizer=optim.SGD(lr),
            latent_optimizer=optim.SGD(lr),
            loss=optim.losses.Log(),
            l2_bias=l2,
            l2_latent=l2,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            seed=seed,
        )
        self.rng = np.random.default_rng(seed)
        self.item_factors = np.zeros((0, n_factors), np.float64)
        self.item_bias = np.zeros(0, np.float64)  # -inf for items never learned: they are never ranked
        self.seen = np.zeros(0, bool)
        self.seen_items: list[int] = []
        self.size = 0  # 1 + the largest item index learned

    def learn(self, users, items, types, scenes, ts) -> None:
        users = np.asarray(users).tolist()
        items = np.asarray(items, np.int64)
        if items.size == 0:
            return
        self.size = max(self.size, int(items.max()) + 1)
        self.item_factors = grow(self.item_factors, self.size)
        self.item_bias = grow(self.item_bias, self.size, -np.inf)
        self.seen = grow(self.seen, self.size, False)
        items = items.tolist()
        touched = set(items)
        learn_one = self.mf.learn_one
        draws = self.rng.random((len(items), self.n_negatives)).tolist()
        seen_items = self.seen_items
        for user, item, uniforms in zip(users, items, draws):
            if not self.seen[item]:
                self.seen[item] = True
                seen_items.append(item)
            learn_one(user, item, 1)
            if len(seen_items) > 1:
                for uniform in uniforms:
                    negative = seen_items[int(uniform * len(seen_items))]
                    if negative != item:
                        learn_one(user, negative, 0)
                        touched.add(negative)
        latents, biases = self.mf.i_latents, self.mf.i_biases
        for item in touched:
            self.item_factors[item] = latents[item]
            self.item_bias[item] = biases[item]

    def recommend(self, users, scenes, ts, k, exclude=None, *, item_scenes=None) -> np.ndarray:
        if self.size == 0:
            return np.full((len(users), k), PAD, np.int32)
        user_factors = np.zeros((len(users), self.item_factors.shape[1]))
        for row, user in enumerate(np.asarray(users).tolist()):
            latent = self.mf.u_latents.get(user)  # .get: a defaultdict lookup would invent a user
            if latent is not None:
                user_factors[row] = latent
        scores = user_factors @ self.item_factors[:self.size].T + self.item_bias[:self.size]
        if item_scenes is not None:
            scores = np.where(in_scene(item_scenes, scenes, self.size), scores, -np.inf)
        return top_k(scores, k, exclude)
