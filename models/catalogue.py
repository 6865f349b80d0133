"""Per-scene catalogues: which items each scene may rank, as one 32-bit scene mask per item.

Pure bookkeeping over the change log the store keeps (``(item index, mask)`` in the order made); the
kernels take the mask array (``models.kernels.in_scene``). An item no change names is in every scene,
so a deployment without a catalogue topic ranks the whole catalogue everywhere; mask 0 hides an item.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

ALL_SCENES = np.uint32(0xFFFFFFFF)


def scene_mask(scenes: Iterable[str] | None, configured: tuple[str, ...]) -> int:
    """The mask of ``scenes`` (None: every scene); ``KeyError`` names a scene that is not configured.

    >>> scene_mask(["home", "search"], ("default", "home", "search")), scene_mask(None, ("default",))
    (6, 4294967295)
    """
    if scenes is None:
        return int(ALL_SCENES)
    mask = 0
    for scene in scenes:
        if scene not in configured:
            raise KeyError(scene)
        mask |= 1 << configured.index(scene)
    return mask


class SceneCatalogue:
    """Each item's scene mask, kept in step with the store's change log.

    >>> catalogue = SceneCatalogue()
    >>> catalogue.apply([(2, 0b01), (0, 0)])
    >>> catalogue.version, catalogue.mask(4).tolist()
    (2, [0, 4294967295, 1, 4294967295])
    """

    def __init__(self) -> None:
        self.version = 0       # changes applied (the store's catalogue version they came to)
        self._masks = np.full(0, ALL_SCENES, np.uint32)
        self._cached: np.ndarray | None = None

    def apply(self, changes: list[tuple[int, int]]) -> None:
        """Apply changes in order (the last change of an item wins)."""
        if not changes:
            return
        index = np.fromiter((i for i, _ in changes), np.int64, len(changes))
        masks = np.fromiter((m for _, m in changes), np.uint32, len(changes))
        need = int(index.max()) + 1
        if need > len(self._masks):
            grown = np.full(need - len(self._masks), ALL_SCENES, np.uint32)
            self._masks = np.concatenate([self._masks, grown])
        _, first_from_end = np.unique(index[::-1], return_index=True)
        last = len(index) - 1 - first_from_end   # each item's last change
        self._masks[index[last]] = masks[last]
        self.version += len(changes)
        self._cached = None

    def mask(self, capacity: int) -> np.ndarray:
        """The masks of items ``0..capacity`` (every scene where no change names the item)."""
        cached = self._cached
        if cached is None or len(cached) != capacity:
            cached = np.full(capacity, ALL_SCENES, np.uint32)
            n = min(capacity, len(self._masks))
            cached[:n] = self._masks[:n]
            self._cached = cached
        return cached

    def hidden(self) -> np.ndarray:
        """Indices of items hidden in every scene."""
        return np.flatnonzero(self._masks == 0)
