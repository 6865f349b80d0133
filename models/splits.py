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
