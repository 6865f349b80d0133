"""The one interface the evaluator drives (``Recommender``; the attention model implements it too) and
the numpy ranking helpers the baselines share: top-k with exclusions, per-scene catalogue masks, arrays
grown by capacity doubling.
"""
from __future__ import annotations

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
