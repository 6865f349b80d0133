"""Slices of an :class:`EventLog` that keep its id spaces (users, items, scenes): a subset of rows, the first
``n`` events, and the leave-one-out split of the SASRec-family protocol. Pure NumPy, no I/O.
"""
from __future__ import annotations

import numpy as np

from models.events import EventLog


def subset(log: EventLog, index: np.ndarray, name: str | None = None) -> EventLog:
    """Rows ``index`` of ``log`` (kept in the given order) with the SAME id spaces (users, items,
    scenes), so indices stay comparable with the full log.

    >>> log = EventLog.from_columns("toy", ["a", "b", "a"], ["x", "y", "z"], [0, 0, 0], [1.0, 2.0, 3.0])
    >>> part = subset(log, np.array([0, 2]))
    >>> part.item.tolist(), part.n_items
    ([0, 2], 3)
    """
    index = np.asarray(index)
    return EventLog(name=name or log.name, user=log.user[index], item=log.item[index], type=log.type[index],
                    ts=log.ts[index], scene=log.scene[index], user_ids=log.user_ids, item_ids=log.item_ids,
                    scene_names=log.scene_names, notes=log.notes, extra=dict(log.extra))


def leave_one_out(log: EventLog) -> tuple[EventLog, EventLog, EventLog]:
    """Split for the SASRec-family protocol: per user, the last event is test, the second-to-last is
    validation, the rest is train. Users with fewer than 3 events stay wholly in train (no valid/test row).

    All three logs are time-ordered and share ``log``'s id spaces.

    >>> log = EventLog.from_columns("toy", list("aaaabb"), list("pqrstu"), [0] * 6, [0, 1, 2, 3, 0, 1])
    >>> train, valid, test = leave_one_out(log)
    >>> [[log.item_ids[i] for i in part.item] for part in (train, valid, test)]
    [['p', 't', 'q', 'u'], ['r'], ['s']]
    """
    n = len(log)
    # Position of each event from the end of its user's history: 0 = last, 1 = second-to-last.
    order = np.lexsort((np.arange(n), log.user))  # by user, then by time (the log is time-ordered)
    sorted_users = log.user[order]
    ends = np.r_[np.flatnonzero(sorted_users[1:] != sorted_users[:-1]), n - 1] if n else np.array([], int)
    counts = np.diff(np.r_[-1, ends])
    from_end = np.empty(n, np.int64)
    from_end[order] = np.repeat(ends, counts) - np.arange(n)
    history = np.empty(n, np.int64)
    history[order] = np.repeat(counts, counts)
    eligible = history >= 3
    test = np.flatnonzero(eligible & (from_end == 0))
    valid = np.flatnonzero(eligible & (from_end == 1))
    train = np.flatnonzero(~eligible | (from_end >= 2))
    return (subset(log, train, f"{log.name}/train"), subset(log, valid, f"{log.name}/valid"),
            subset(log, test, f"{log.name}/test"))


def head(log: EventLog, n: int) -> EventLog:
    """The first ``n`` events (in time order) of ``log``, id spaces kept.

    >>> log = EventLog.from_columns("toy", ["a", "b"], ["x", "y"], [0, 0], [1.0, 2.0])
    >>> len(head(log, 1))
    1
    """
    return subset(log, np.arange(min(n, len(log))), log.name)


def shuffle_in_time(log: EventLog, fraction: float, seed: int = 0) -> EventLog:
    """``log`` with a random ``fraction`` of its events moved in time: those events trade places at random
    among themselves and each takes the time of its new slot, so the log stays time-ordered while each
    moved event's place in its user's history (and in the stream) is wrong. A robustness check: a model
    whose win rests on the exact order of events loses it here.

    >>> log = EventLog.from_columns("toy", list("abcdef"), list("pqrstu"), [0] * 6, [0, 1, 2, 3, 4, 5])
    >>> moved = shuffle_in_time(log, 0.5, seed=1)
    >>> names = lambda part: [part.item_ids[i] for i in part.item]
    >>> moved.ts.tolist() == log.ts.tolist(), sorted(names(moved)) == names(log), names(moved) != names(log)
    (True, True, True)
    >>> moved.item.tolist() == list(range(6)), names(shuffle_in_time(log, 0.0)) == names(log)  # renumbered
    (True, True)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"shuffle fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    slots = np.sort(rng.choice(len(log), size=int(round(fraction * len(log))), replace=False))
    order = np.arange(len(log))
    order[slots] = rng.permutation(slots)
    moved = subset(log, order)
    moved.ts = log.ts.copy()  # every slot keeps its time: the moved events take their new slot's
    # Loaders number items in order of first appearance, and the attention model takes every index below
    # the largest it has seen as a live item: renumber the same way for the new order.
    items, first = np.unique(moved.item, return_index=True)
    appeared = items[np.argsort(first)]
    rest = np.setdiff1d(np.arange(log.n_items), appeared)
    new_of = np.empty(log.n_items, np.int64)
    new_of[np.r_[appeared, rest]] = np.arange(log.n_items)
    moved.item = new_of[moved.item].astype(log.item.dtype)
    moved.item_ids = [log.item_ids[i] for i in np.r_[appeared, rest]]
    moved.extra["shuffled"] = {"fraction": fraction, "seed": seed, "events_moved": int(len(slots))}
    return moved
