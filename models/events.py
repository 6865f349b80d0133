"""The event vocabulary every part of the engine shares: event types, scenes and the columnar log.

Plain data only; no I/O, no JAX.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase")
TYPE_CODE: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}
DEFAULT_SCENE = "default"


@dataclass(frozen=True, slots=True)
class Event:
    """One user event as producers send it (external string ids).

    >>> Event("u1", "sku-9", "click", 1700000000.0).scene
    'default'
    """

    user_id: str
    item_id: str
    type: str
    ts: float
    scene: str = DEFAULT_SCENE
    event_id: str | None = None

    @property
    def type_code(self) -> int:
        return TYPE_CODE[self.type]


@dataclass
class EventLog:
    """A time-ordered interaction log in columnar form with dense indices.

    ``user``/``item``/``scene`` index into ``user_ids``/``item_ids``/``scene_names``;
    ``type`` holds codes of :data:`EVENT_TYPES`; ``ts`` is seconds (synthetic where the
    source has only an order). ``notes`` says how the source was mapped (e.g. ratings → types).

    >>> log = EventLog.from_columns("toy", ["a", "a", "b"], ["x", "y", "x"], [0, 3, 1], [1.0, 2.0, 3.0])
    >>> len(log), log.n_items, log.item_ids
    (3, 2, ['x', 'y'])
    """

    name: str
    user: np.ndarray
    item: np.ndarray
    type: np.ndarray
    ts: np.ndarray
    scene: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    scene_names: tuple[str, ...] = (DEFAULT_SCENE,)
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_columns(cls, name, users, items, types, ts, scenes=None, scene_names=(DEFAULT_SCENE,),
                     notes="") -> "EventLog":
        """Build a log from raw columns, assigning dense ids in order of first appearance.

        Rows are stably sorted by ``ts`` so ties keep file order.
        """
        ts = np.asarray(ts, dtype=np.float64)
        order = np.argsort(ts, kind="stable")
        user_index: dict = {}
        item_index: dict = {}
        users = [users[i] for i in order]
        items = [items[i] for i in order]
        u = np.fromiter((user_index.setdefault(x, len(user_index)) for x in users), np.int64, len(users))
        it = np.fromiter((item_index.setdefault(x, len(item_index)) for x in items), np.int32, len(items))
        sc = (np.zeros(len(order), np.int8) if scenes is None
              else np.asarray(scenes, dtype=np.int8)[order])
        return cls(name=name, user=u, item=it, type=np.asarray(types, dtype=np.int8)[order], ts=ts[order],
                   scene=sc, user_ids=[str(x) for x in user_index], item_ids=[str(x) for x in item_index],
                   scene_names=tuple(scene_names), notes=notes)
