"""The per-user attention state: its binary layout in the store, batch codec, and history folding.

One fixed-size little-endian record per user. Bytes 4..16 hold the fence (source partition and
offset of the last applied event) so the store's compare-and-set can read it without decoding
the rest. No I/O here; the store moves the bytes.
"""
from __future__ import annotations

import zlib

import numpy as np

from models.config import EngineConfig

MAGIC = b"AF"
FORMAT_VERSION = 1
FENCE_SLICE = slice(4, 16)  # partition <i4, offset <i8: the store's Lua script reads exactly these bytes
NO_ITEM = -1


class StateLayoutError(ValueError):
    """A stored state does not match the configured layout (dimensions changed, or foreign bytes)."""


def state_dtype(cfg: EngineConfig) -> np.dtype:
    """The packed record of one user's state for this configuration.

    >>> state_dtype(EngineConfig(dim=8, history=4, scenes=("default",), k=2)).itemsize
    120
    """
    L, S, d, K = cfg.history, cfg.n_scenes, cfg.dim, cfg.k
    return np.dtype([
        ("magic", "S2"), ("format", "u1"), ("pad", "u1"),
        ("partition", "<i4"), ("offset", "<i8"),
        ("layout", "<u4"), ("n_events", "<u4"),
        ("list_ts", "<f8"), ("list_scene", "i1"), ("pad2", "u1", (3,)),
        ("hist_item", "<i4", (L,)), ("hist_type", "i1", (L,)), ("hist_scene", "i1", (L,)),
        ("hist_ts", "<f8", (L,)),
        ("interest", "<f2", (S, d)), ("interest_weight", "<f4", (S,)),
        ("last_list", "<i4", (K,)),
    ])


def layout_tag(cfg: EngineConfig) -> int:
    """A checksum of the dimensions baked into the record, stored in every state."""
    return zlib.crc32(f"{FORMAT_VERSION}:{cfg.history}:{cfg.n_scenes}:{cfg.dim}:{cfg.k}".encode())


class StateCodec:
    """Encodes and decodes batches of user states for one configuration.

    >>> codec = StateCodec(EngineConfig(dim=4, history=3, scenes=("default",), k=2))
    >>> states = codec.decode([None])
    >>> states["hist_item"].tolist(), int(states["offset"][0])
    ([[-1, -1, -1]], -1)
    >>> bool(codec.decode(codec.encode(states))["layout"][0] == codec.layout)
    True
    """

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.dtype = state_dtype(cfg)
        self.layout = layout_tag(cfg)
        empty = np.zeros((), self.dtype)
        empty["magic"], empty["format"], empty["layout"] = MAGIC, FORMAT_VERSION, self.layout
        empty["partition"], empty["offset"] = -1, -1
        empty["hist_item"] = NO_ITEM
        empty["last_list"] = NO_ITEM
        empty["list_ts"] = np.nan
        self.empty = empty

    def decode(self, values: list[bytes | None]) -> np.ndarray:
        """Structured array of states; ``None`` (unknown user) decodes to a fresh state."""
        states = np.repeat(self.empty[None], len(values))
        present = [i for i, v in enumerate(values) if v is not None]
        if present:
            size = self.dtype.itemsize
            bad = [i for i in present if len(values[i]) != size]
            if bad:
                raise StateLayoutError(
                    f"stored state is {len(values[bad[0]])} bytes, this configuration expects {size} "
                    f"(history={self.cfg.history}, scenes={self.cfg.n_scenes}, dim={self.cfg.dim}, k={self.cfg.k})")
            stored = np.frombuffer(b"".join(values[i] for i in present), self.dtype)
            if (stored["magic"] != MAGIC).any() or (stored["layout"] != self.layout).any():
                raise StateLayoutError("stored state was written with a different layout or is not an attnflow state")
            states[present] = stored
        return states

    def encode(self, states: np.ndarray) -> list[bytes]:
        """One bytes value per state, ready for the store."""
        raw = np.ascontiguousarray(states, self.dtype).tobytes()
        size = self.dtype.itemsize
        return [raw[i * size:(i + 1) * size] for i in range(len(states))]


def append_history(states: np.ndarray, items: np.ndarray, types: np.ndarray, scenes: np.ndarray,
                   ts: np.ndarray, counts: np.ndarray) -> None:
    """Append each user's new events (left-aligned rows of ``[B, M]``, ``counts[b]`` valid) in place.

    The history keeps the most recent ``L`` events, oldest first, newest at the end.

    >>> codec = StateCodec(EngineConfig(dim=2, history=3, scenes=("default",), k=1))
    >>> s = codec.decode([None, None])
    >>> append_history(s, np.array([[5, 6], [7, 0]]), np.zeros((2, 2)), np.zeros((2, 2)),
    ...                np.array([[1., 2.], [3., 0.]]), np.array([2, 1]))
    >>> s["hist_item"].tolist(), s["n_events"].tolist()
    ([[-1, 5, 6], [-1, -1, 7]], [2, 1])
    """
    L = states["hist_item"].shape[1]
    window = counts[:, None] + np.arange(L)[None, :]
    for field, new in (("hist_item", items), ("hist_type", types), ("hist_scene", scenes), ("hist_ts", ts)):
        joined = np.concatenate([states[field], np.asarray(new, states[field].dtype)], axis=1)
        states[field] = np.take_along_axis(joined, window, axis=1)
    states["n_events"] += counts.astype(np.uint32)
