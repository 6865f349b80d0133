"""Host-side preparation of a micro-batch, shared by the streaming engine and offline evaluation.

Given the states of the users in a batch and their new events (dense indices), it appends the
events to the histories, builds the inputs of the fold kernel, the request each list answers, and
(optionally) one training example per event: the history exactly as it was before that event.
Pure NumPy; shapes here are unpadded, ``pad_*`` bring them to kernel buckets.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models import kernels
from models.state import NO_ITEM, append_history


def occurrence(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same key.

    >>> occurrence(np.array([3, 1, 3, 3, 1])).tolist()
    [0, 0, 1, 2, 1]
    """
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    first = np.searchsorted(ranked, ranked, side="left")
    out = np.empty(len(keys), np.int64)
    out[order] = np.arange(len(keys)) - first
    return out


@dataclass
class Examples:
    """Training examples: the history before each event, and the event as the target."""

    hist_item: np.ndarray    # [E, L] int32
    hist_type: np.ndarray    # [E, L] int8
    hist_age: np.ndarray     # [E, L] float32 seconds before the event
    interest: np.ndarray     # [E, S, d] float16 (scene interests at the start of the batch)
    weight: np.ndarray       # [E, S] float32
    scene: np.ndarray        # [E] int8
    target: np.ndarray       # [E] int32
    type: np.ndarray         # [E] int8
    ts: np.ndarray           # [E] float64 event time (the time-decayed popularity counts)

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class Prepared:
    fold: kernels.FoldInputs      # unpadded
    now: np.ndarray               # [B] time of each user's newest event in the batch
    scene: np.ndarray             # [B] scene of that event: the scene the list is for
    last: np.ndarray              # [B] index (into the batch's events) of that event
    examples: Examples | None


def prepare(states: np.ndarray, dense: np.ndarray, item: np.ndarray, etype: np.ndarray, scene: np.ndarray,
            ts: np.ndarray, n_scenes: int, with_examples: bool = False) -> Prepared:
    """Fold events into ``states`` (history, in place) and return the kernel inputs for the rest.

    ``dense[j]`` is the row in ``states`` of event ``j``; events are in time order; every row of
    ``states`` has at least one event.
    """
    B, S, n = len(states), n_scenes, len(dense)
    position = occurrence(dense)
    counts = np.bincount(dense, minlength=B)
    M = int(counts.max())
    grid = {name: np.zeros((B, M), dtype) for name, dtype in
            (("item", np.int32), ("type", np.int8), ("scene", np.int8), ("ts", np.float64))}
    for name, values in (("item", item), ("type", etype), ("scene", scene), ("ts", ts)):
        grid[name][dense, position] = values

    examples = None
    if with_examples:
        L = states["hist_item"].shape[1]
        window = position[:, None] + np.arange(L)[None, :]            # the L entries before event j
        joined = {f: np.concatenate([states[f"hist_{f}"], grid[f].astype(states[f"hist_{f}"].dtype)], axis=1)
                  for f in ("item", "type", "ts")}
        hist_item = np.take_along_axis(joined["item"][dense], window, axis=1)
        hist_ts = np.take_along_axis(joined["ts"][dense], window, axis=1)
        examples = Examples(
            hist_item=hist_item, hist_type=np.take_along_axis(joined["type"][dense], window, axis=1),
            hist_age=np.where(hist_item >= 0, ts[:, None] - hist_ts, 0.0).astype(np.float32),
            interest=states["interest"][dense], weight=states["interest_weight"][dense],
            scene=scene.astype(np.int8), target=item.astype(np.int32), type=etype.astype(np.int8),
            ts=np.asarray(ts, np.float64))

    append_history(states, grid["item"], grid["type"], grid["scene"], grid["ts"], counts)

    last = np.zeros(B, np.int64)
    last[dense] = np.arange(n)  # later events overwrite earlier ones
    slot = dense * S + scene
    slot_count = np.bincount(slot, minlength=B * S).reshape(B, S)
    later = slot_count.reshape(-1)[slot] - occurrence(slot) - 1
    fold = kernels.FoldInputs(item=item.astype(np.int32), type=etype.astype(np.int32),
                              slot=slot.astype(np.int32), later=later.astype(np.int32),
                              slot_count=slot_count.astype(np.int32))
    return Prepared(fold=fold, now=ts[last], scene=scene[last], last=last, examples=examples)


def rank_inputs(states: np.ndarray, now: np.ndarray, scene: np.ndarray, mask_codes: np.ndarray,
                exclude: list[np.ndarray] | None = None) -> kernels.RankInputs:
    """What the rank kernel needs for each user: history with ages at ``now``, scene, exclusions.

    Excluded: items the user did a ``mask_codes`` event to, plus ``exclude[b]`` when given.
    """
    hist_item = states["hist_item"]
    ages = np.where(hist_item >= 0, now[:, None] - states["hist_ts"], 0.0).astype(np.float32)
    masked = np.isin(states["hist_type"], mask_codes)
    columns = [np.where(masked, hist_item, NO_ITEM)] if len(mask_codes) else []
    if exclude is not None:
        width = max(1, max((len(e) for e in exclude), default=1))
        extra = np.full((len(states), width), NO_ITEM, np.int32)
        for row, items in enumerate(exclude):
            extra[row, : len(items)] = items
        columns.append(extra)
    excluded = np.concatenate(columns, axis=1) if columns else np.full((len(states), 1), NO_ITEM, np.int32)
    return kernels.RankInputs(hist_item=hist_item, hist_type=states["hist_type"].astype(np.int32),
                              hist_age=ages, scene=scene.astype(np.int32), exclude=excluded.astype(np.int32))


def pad(array: np.ndarray, size: int, fill) -> np.ndarray:
    """Pad the leading axis to ``size`` rows with ``fill``.

    >>> pad(np.array([1, 2]), 4, -1).tolist()
    [1, 2, -1, -1]
    """
    array = np.asarray(array)
    if array.shape[0] == size:
        return array
    out = np.full((size,) + array.shape[1:], fill, array.dtype)
    out[: array.shape[0]] = array
    return out


def pad_fold(fold: kernels.FoldInputs, users: int, events: int, n_scenes: int) -> kernels.FoldInputs:
    """Pad to bucket sizes; padding events go to a slot past the last one, which the kernel drops."""
    return kernels.FoldInputs(item=pad(fold.item, events, 0), type=pad(fold.type, events, 0),
                              slot=pad(fold.slot, events, users * n_scenes), later=pad(fold.later, events, 0),
                              slot_count=pad(fold.slot_count, users, 0))


def pad_ranks(ranks: kernels.RankInputs, users: int) -> kernels.RankInputs:
    return kernels.RankInputs(hist_item=pad(ranks.hist_item, users, NO_ITEM),
                              hist_type=pad(ranks.hist_type, users, 0),
                              hist_age=pad(ranks.hist_age, users, 0.0), scene=pad(ranks.scene, users, 0),
                              exclude=pad(ranks.exclude, users, NO_ITEM))
