"""What the stores hand back and take, as plain values: a batch's read, the market's read, the popularity
windows, and the fences inside stored values. Shared by ``RedisStore`` and ``MemoryStore``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from models.state import FENCE_INDEX_SLICE, FENCE_SLICE

SPEND_TTL_S = 40 * 86400  # a day's spend hash (and its charge ids) outlives the month it is billed in
SHOWN_TTL_S = 7 * 86400   # a shown list older than any attribution window is of no use


def shown_fence(value: bytes) -> tuple[int, int, int]:
    """(partition, offset, index) of a shown-list value (``_WRITE_SHOWN``)."""
    return struct.unpack("<iqH", value[4:18])


@dataclass
class MarketRead:
    """What a batch reads for the market in one round trip: the campaigns' version, each user's last shown
    sponsored list (``None``: none) and the micros spent per asked (campaign id, day)."""

    campaigns_version: int
    shown: list[bytes | None]
    spend: list[int]


@dataclass(frozen=True)
class PopularityWindows:
    """How scene popularity is windowed: ``windows`` windows of ``window_s`` seconds are summed, each keeps
    its ``keep`` most counted items per scene.

    >>> PopularityWindows(window_s=3600, windows=24).window(7200.5), PopularityWindows().ttl_s
    (2, 90000)
    """

    window_s: float = 3600.0
    windows: int = 24
    keep: int = 5000

    def window(self, now: float) -> int:
        return int(now // self.window_s)

    @property
    def ttl_s(self) -> int:
        return int(self.window_s * (self.windows + 1))


def scene_counts(scenes: np.ndarray, items: np.ndarray, names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """``(scene name, item index, events)`` per distinct pair of one batch's applied events.

    >>> scene_counts(np.array([0, 1, 0]), np.array([5, 5, 5]), ("default", "home"))
    [('default', 5, 2), ('home', 5, 1)]
    """
    if not len(items):
        return []
    stride = int(items.max()) + 1
    pairs, counts = np.unique(scenes.astype(np.int64) * stride + items, return_counts=True)
    return [(names[p // stride], int(p % stride), int(c)) for p, c in zip(pairs.tolist(), counts.tolist())]


def fence_of(value: bytes) -> tuple[int, int, int]:
    """(partition, offset, index within the message) written into a state value."""
    return (*struct.unpack("<iq", value[FENCE_SLICE]), struct.unpack("<H", value[FENCE_INDEX_SLICE])[0])


@dataclass
class BatchRead:
    states: list[bytes | None]
    item_index: list[int]
    n_items: int
    params_version: int
    catalogue_version: int = 0  # changes in the per-scene catalogue log (``item_scene_changes``)


def parse_scene_changes(values) -> list[tuple[int, int]]:
    """``(item index, scene mask)`` pairs from the change log's ``b"index:mask"`` entries.

    >>> parse_scene_changes([b"3:5", "0:0"])
    [(3, 5), (0, 0)]
    """
    out = []
    for value in values:
        index, mask = (value.decode() if isinstance(value, bytes) else value).split(":")
        out.append((int(index), int(mask)))
    return out
