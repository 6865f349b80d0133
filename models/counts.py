"""Counted features of the attention model: decayed item popularity, item scenes and item-to-item transitions.

The trainer counts them from its training examples (NumPy, vectorised); the kernels read them from
``Params`` (``models.params.COUNTED``), which the device copies here keep up to date row by row.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from models.params import NEIGHBOUR_TABLES, NEIGHBOURS, POPULARITY_HALF_LIVES, POPULARITY_HALF_LIVES_S, Params


@partial(jax.jit, donate_argnums=(0,))
def _set_rows(tables: dict, index: jax.Array, rows: dict) -> dict:
    """``tables[name][index] = rows[name]`` in place (donated; an index past the table is dropped)."""
    return {name: tables[name].at[index].set(rows[name], mode="drop") for name in tables}


class TransitionCounts:
    """Online counts behind the model's priors: decayed target popularity, the scenes each item was a
    target in, and item-to-item transitions compacted to each item's strongest successors.

    Each training example (history before an event + the event) adds ``1 / d`` to the transition from
    the ``d``-th newest history item to the target, d = 1..``window``, in two tables: over the whole
    history (table 0) and over the history items in the event's scene (table 1), as ``TransitionKNN``
    and its scene-history variant count. A row keeps ``NEIGHBOURS`` successors by Space-Saving (a new
    successor in a full row replaces the weakest, inheriting its count as error), so memory is bounded;
    a successor's share is its guaranteed count (count - error) over the row's total. A batch is applied
    in rounds of at most one transition per row, in example order, so the result is that of counting
    the examples one by one.

    >>> counts = TransitionCounts(window=2)
    >>> counts.observe(np.array([[-1, 5, 7]]), np.array([9]), np.array([0]))
    >>> arrays = counts.arrays(16)
    >>> (arrays["nbr_item"][7, 0, :2].tolist(), arrays["nbr_weight"][7, 0, :1].tolist(),
    ...  int(arrays["nbr_total"][5, 0]))
    ([9, -1], [1.0], 0)
    """

    def __init__(self, window: int = 3, half_lives=POPULARITY_HALF_LIVES,
                 half_lives_s=POPULARITY_HALF_LIVES_S):
        self.window = window
        self.keep = np.power(0.5, 1.0 / np.asarray(half_lives, np.float64))      # per example
        self.half_lives_s = np.asarray(half_lives_s, np.float64)                  # in event time
        self.clock: float | None = None      # the latest event time counted (None: none since a resume)
        self.capacity = 0
        tables = len(NEIGHBOUR_TABLES)
        self.pop = np.zeros((0, len(half_lives) + len(half_lives_s)))
        self.bits = np.zeros(0, np.uint32)
        self.item = np.full((0, tables, NEIGHBOURS), -1, np.int32)               # Space-Saving slots
        self.count = np.zeros((0, tables, NEIGHBOURS), np.float32)
        self.error = np.zeros((0, tables, NEIGHBOURS), np.float32)
        self.total = np.zeros((0, tables), np.float32)
        self.dirty: set = set()
        self.observed = 0                    # examples counted so far (``own``)
        self._arrays: dict | None = None    # device arrays of every count
        self._fresh = False                  # whether ``_arrays`` hold every count

    def ensure(self, capacity: int) -> None:
        if capacity > self.capacity:
            have = self.capacity

            def grown(array, fill):
                out = np.full((capacity,) + array.shape[1:], fill, array.dtype)
                out[:have] = array
                return out

            self.pop, self.bits = grown(self.pop, 0.0), grown(self.bits, 0)
            self.item, self.count = grown(self.item, -1), grown(self.count, 0.0)
            self.error = grown(self.error, 0.0)
            self.total = grown(self.total, 0.0)
            self.capacity = capacity
            self._arrays = None

    def resume(self, params: Params) -> None:
        """Start from the counts a snapshot carries (Space-Saving errors are not kept: taken as 0)."""
        self.ensure(params.item_emb.shape[0])
        rows = params.pop.shape[0]
        self.pop[:rows] = np.asarray(params.pop)
        self.clock = None
        self.bits[:rows] = np.asarray(params.item_scene_bits)
        self.item[:rows] = np.asarray(params.nbr_item)
        self.total[:rows] = np.asarray(params.nbr_total)
        self.count[:rows] = np.where(self.item[:rows] >= 0,
                                     np.asarray(params.nbr_weight) * self.total[:rows, :, None], 0)
        self.error[:rows] = 0.0
        self._arrays = None

    def observe(self, hist_item: np.ndarray, target: np.ndarray, scene: np.ndarray,
                ts: np.ndarray | None = None) -> None:
        """Count a batch of examples (in time order): histories ``[E, L]``, targets, scenes and event times
        ``[E]`` (None: at the latest time counted, so the time-decayed popularity does not decay)."""
        E = len(target)
        if E == 0:
            return
        self.observed += E
        self.ensure(int(max(target.max(), hist_item.max())) + 1)
        # later examples decay less: per example in the first columns, by event time in the others
        by_count = self.keep[None, :] ** np.arange(E - 1, -1, -1)[:, None]
        events = len(self.keep)
        self.pop[:, :events] *= self.keep[None, :] ** E
        ts = self._times(ts, E)
        clock = float(ts.max()) if self.clock is None else max(self.clock, float(ts.max()))
        if self.clock is not None:  # the first batch after a resume takes the counts as of its time
            self.pop[:, events:] *= np.power(0.5, (clock - self.clock) / self.half_lives_s)[None, :]
        self.clock = clock
        np.add.at(self.pop, target, np.concatenate([by_count, self._time_decay(ts)], axis=1))
        np.bitwise_or.at(self.bits, target, np.left_shift(np.uint32(1), scene.astype(np.uint32)))
        valid = hist_item >= 0
        hist_bits = self.bits[np.maximum(hist_item, 0)]
        in_scene = valid & ((hist_bits >> scene.astype(np.uint32)[:, None]) & 1 == 1)
        parts = []
        for table, sources in enumerate((valid, in_scene)):
            distance = np.cumsum(sources[:, ::-1], axis=1)[:, ::-1]                 # 1 = the newest source
            example, slot = np.nonzero(sources & (distance <= self.window))
            parts.append((example, np.full(len(example), table), hist_item[example, slot], target[example],
                          1.0 / distance[example, slot]))
        example, table, source, dest, weight = (np.concatenate(column) for column in zip(*parts))
        if len(example) == 0:
            self._fresh = False
            return
        # rounds: the r-th transition of each (source, table) row, in example order, goes in round r
        order = np.lexsort((example, source * len(NEIGHBOUR_TABLES) + table))
        key = (source * len(NEIGHBOUR_TABLES) + table)[order]
        starts = np.r_[True, key[1:] != key[:-1]]
        rank = np.arange(len(key)) - np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0))
        for r in range(int(rank.max()) + 1):
            pick = order[rank == r]
            self._apply(source[pick], table[pick], dest[pick], weight[pick].astype(np.float32))
        self.dirty.update(np.unique(source).tolist())
        self._fresh = False  # popularity decayed: re-sent; neighbours: the dirty rows

    def _apply(self, source, table, dest, weight) -> None:
        """One Space-Saving update per row (``(source, table)`` pairs are distinct)."""
        items, counts = self.item[source, table], self.count[source, table]              # [n, M]
        match = items == dest[:, None]
        found = match.any(axis=1)
        free = items < 0
        has_free = free.any(axis=1)
        weakest = np.argmin(np.where(free, np.inf, counts), axis=1)
        slot = np.where(found, match.argmax(axis=1), np.where(has_free, free.argmax(axis=1), weakest))
        old = counts[np.arange(len(slot)), slot]
        floor = np.where(found | has_free, 0.0, old).astype(np.float32)             # a replaced row's count
        self.count[source, table, slot] = np.where(found, old, floor) + weight
        self.error[source, table, slot] = np.where(found, self.error[source, table, slot], floor)
        self.item[source, table, slot] = dest
        self.total[source, table] += weight

    def _times(self, ts: np.ndarray | None, n: int) -> np.ndarray:
        """``ts`` as float64, or ``n`` times at the latest time counted when None."""
        return np.full(n, self.clock or 0.0) if ts is None else np.asarray(ts, np.float64)

    def _time_decay(self, ts: np.ndarray) -> np.ndarray:
        """``[E, P_s]`` what a count at each time ``ts`` is worth now (at ``clock``)."""
        age = np.maximum((self.clock or 0.0) - np.asarray(ts, np.float64), 0.0)
        return np.power(0.5, age[:, None] / self.half_lives_s[None, :])

    def own(self, observed_at: np.ndarray, width: int,
            ts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """What the examples counted as the ``observed_at``-th ones (``observed`` before their batch + row)
        at event times ``ts`` (None: the latest) still add to the counts: ``[E, P]`` decayed popularity of
        their targets and ``[E, width]`` the transition count from the d-th newest source (``1/d`` within
        ``window``); see ``TrainBatch``. A negative ``observed_at`` marks an example these counts do not
        hold (zeros).

        >>> counts = TransitionCounts(window=2, half_lives=(1.0,), half_lives_s=(10.0,))
        >>> counts.observe(np.array([[3, 4], [4, 5]]), np.array([5, 6]), np.array([0, 0]),
        ...                np.array([0.0, 10.0]))
        >>> pop, nbr = counts.own(np.array([0, 1, -1]), 3, np.array([0.0, 10.0, 10.0]))
        >>> pop.tolist(), nbr[0].tolist(), nbr[2].tolist()
        ([[0.5, 0.5], [1.0, 1.0], [0.0, 0.0]], [1.0, 0.5, 0.0], [0.0, 0.0, 0.0])
        """
        observed_at = np.asarray(observed_at, np.float64)
        counted = (observed_at >= 0)[:, None]
        age = np.maximum(self.observed - 1 - observed_at, 0.0)
        distance = np.arange(1, width + 1, dtype=np.float64)
        nbr = np.where(distance <= self.window, 1.0 / distance, 0.0)[None, :]
        by_time = self._time_decay(self._times(ts, len(observed_at)))
        pop = np.concatenate([self.keep[None, :] ** age[:, None], by_time], axis=1) * counted
        return pop.astype(np.float32), (nbr * counted).astype(np.float32)

    def _ranked(self, rows: np.ndarray) -> dict:
        """The neighbour fields of ``rows``: successors strongest first, their shares and the row totals."""
        items, total = self.item[rows], self.total[rows]
        guaranteed = self.count[rows] - self.error[rows]
        share = np.where(items >= 0, guaranteed / np.maximum(total, 1e-30)[..., None], 0.0)
        order = np.argsort(np.where(items >= 0, -share, np.inf), axis=-1, kind="stable")
        return {"nbr_item": np.take_along_axis(items, order, axis=-1),
                "nbr_weight": np.take_along_axis(share, order, axis=-1).astype(np.float32),
                "nbr_total": total.astype(np.float32)}

    def arrays(self, capacity: int) -> dict:
        """The counted fields of ``Params`` (``models.params.COUNTED``) for a table of ``capacity`` rows.

        The neighbour tables are updated in place on the device (the rows that changed): arrays taken
        from an earlier call are invalid after a later one has changed counts (copy them to keep them,
        as ``to_bytes`` does)."""
        self.ensure(capacity)
        if self._arrays is not None and self._arrays["pop"].shape[0] == capacity and self._fresh:
            return self._arrays
        same_shape = self._arrays is not None and self._arrays["pop"].shape[0] == capacity
        neighbours = self._arrays if same_shape else None
        dirty = self.dirty
        if neighbours is None or len(dirty) > capacity // 8:
            ranked = self._ranked(np.arange(capacity))
            neighbours = {name: jnp.asarray(value) for name, value in ranked.items()}
        elif dirty:  # only the changed rows travel (the tables are ~0.5 KB a row, 64 MB at 128k items)
            # padded to a power of two, so there are few shapes to compile
            padded = np.full(1 << int(np.ceil(np.log2(len(dirty)))), capacity, np.int64)
            padded[: len(dirty)] = np.fromiter(dirty, np.int64, len(dirty))
            rows = self._ranked(np.minimum(padded, capacity - 1))
            neighbours = _set_rows({name: neighbours[name] for name in rows}, jnp.asarray(padded),
                                   {name: jnp.asarray(value) for name, value in rows.items()})
        self.dirty = set()
        self._arrays = {"pop": jnp.asarray(self.pop[:capacity], jnp.float32),
                        "item_scene_bits": jnp.asarray(self.bits[:capacity]),
                        **{name: neighbours[name] for name in ("nbr_item", "nbr_weight", "nbr_total")}}
        self._fresh = True
        return self._arrays
