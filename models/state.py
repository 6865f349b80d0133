"""The per-user attention state: its binary layout in the store, batch codec, and history folding.

One fixed-size little-endian record per user. Bytes 4..16 and 34..36 hold the fence (source
partition, offset and index within the message of the last applied event) so the store's
compare-and-set can read it without decoding the rest. No I/O here; the store moves the bytes.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from models.config import EngineConfig

MAGIC = b"AF"
FORMAT_VERSION = 1
FENCE_SLICE = slice(4, 16)  # partition <i4, offset <i8: the store's Lua script reads exactly these bytes
# and the index of the event within its Kafka message <u2 (0 for a single-event message): what was a
# padding byte pair, zero in states written before batched messages, which therefore read as index 0
FENCE_INDEX_SLICE = slice(34, 36)
MAX_MESSAGE_EVENTS = 65535  # events one batched message may hold: the largest fence index
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
        ("list_ts", "<f8"), ("list_scene", "i1"), ("pad2", "u1"), ("fence_index", "<u2"),
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
        self.previous = previous_layout(cfg)
        # states read in the previous layout and converted (``migrate``), this codec's lifetime
        self.migrated = 0
        empty = np.zeros((), self.dtype)
        empty["magic"], empty["format"], empty["layout"] = MAGIC, FORMAT_VERSION, self.layout
        empty["partition"], empty["offset"] = -1, -1
        empty["hist_item"] = NO_ITEM
        empty["last_list"] = NO_ITEM
        empty["list_ts"] = np.nan
        self.empty = empty

    def decode(self, values: list[bytes | None]) -> np.ndarray:
        """Structured array of states; ``None`` (unknown user) decodes to a fresh state. States in the
        configuration's ``previous_layout`` are converted (``migrate``); any other layout raises."""
        states = np.repeat(self.empty[None], len(values))
        present = [i for i, v in enumerate(values) if v is not None]
        if not present:
            return states
        size = self.dtype.itemsize
        if all(len(values[i]) == size for i in present):
            stored = np.frombuffer(b"".join(values[i] for i in present), self.dtype)
            if _tagged(stored, self.layout).all():  # the usual case: every state in this layout
                states[present] = stored
                return states
        current, old, bad = self._sort(values, present)
        if bad:
            raise StateLayoutError(next(iter(bad.values())))
        if current:
            states[current] = np.frombuffer(b"".join(values[i] for i in current), self.dtype)
        if old:
            stored = np.frombuffer(b"".join(values[i] for i in old), self.previous.dtype)
            states[old] = migrate(stored, self.previous.cfg, self)
            self.migrated += len(old)
        return states

    def unreadable(self, values: list[bytes | None]) -> dict[int, str]:
        """Why each value that ``decode`` would refuse cannot be read, by position; converts nothing."""
        return self._sort(values, [i for i, v in enumerate(values) if v is not None])[2]

    def _sort(self, values, present) -> tuple[list[int], list[int], dict[int, str]]:
        """``present`` positions split into this layout's, the previous layout's,
        and the rest with a reason."""
        current, old, bad = [], [], {}
        for layout in filter(None, (self, self.previous)):
            size = layout.dtype.itemsize
            rows = [i for i in present if len(values[i]) == size]
            if rows:
                tagged = _tagged(np.frombuffer(b"".join(values[i] for i in rows), layout.dtype),
                                 layout.layout)
                (current if layout is self else old).extend(i for i, ok in zip(rows, tagged) if ok)
        taken = set(current) | set(old)
        hint = ("" if self.previous is None else
                "; it is not in the previous layout either (ATTNFLOW_STATE_MIGRATE_FROM: "
                f"{describe(self.previous.cfg)})")
        for i in present:
            if i in taken:
                continue
            if len(values[i]) != self.dtype.itemsize:
                bad[i] = (f"stored state is {len(values[i])} bytes, this configuration expects "
                          f"{self.dtype.itemsize} ({describe(self.cfg)}){hint}")
            else:
                bad[i] = f"stored state was written with a different layout or is not an attnflow state{hint}"
        return current, old, bad

    def encode(self, states: np.ndarray) -> list[bytes]:
        """One bytes value per state, ready for the store."""
        raw = np.ascontiguousarray(states, self.dtype).tobytes()
        size = self.dtype.itemsize
        return [raw[i * size:(i + 1) * size] for i in range(len(states))]


def _tagged(stored: np.ndarray, layout: int) -> np.ndarray:
    """Whether each stored record is an attnflow state carrying the layout tag ``layout``."""
    return (stored["magic"] == MAGIC) & (stored["layout"] == layout)


def describe(cfg: EngineConfig) -> str:
    """The dimensions baked into a state layout, in the form ``ATTNFLOW_STATE_MIGRATE_FROM`` takes.

    >>> describe(EngineConfig(dim=8, history=4, scenes=("default", "search"), k=2))
    'history=4 dim=8 k=2 scenes=default,search'
    """
    return f"history={cfg.history} dim={cfg.dim} k={cfg.k} scenes={','.join(cfg.scenes)}"


def parse_layout(spec: str, cfg: EngineConfig) -> EngineConfig:
    """The layout ``spec`` describes (``key=value`` pairs separated by spaces or ``;``, keys history,
    dim, k and scenes), taking whatever it leaves out from ``cfg``.

    >>> old = parse_layout("history=30; scenes=default,home", EngineConfig(dim=8, history=4, k=2))
    >>> old.history, old.dim, old.scenes
    (30, 8, ('default', 'home'))
    >>> parse_layout("width=3", EngineConfig())
    Traceback (most recent call last):
    ...
    ValueError: state layout 'width=3': unknown key 'width' (expected history, dim, k, scenes)
    """
    changes: dict = {}
    for part in spec.replace(";", " ").split():
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise ValueError(f"state layout {spec!r}: expected key=value, got {part!r}")
        if key in ("history", "dim", "k"):
            try:
                changes[key] = int(value)
            except ValueError:
                raise ValueError(f"state layout {spec!r}: {key} must be an integer, got {value!r}") from None
        elif key == "scenes":
            changes[key] = tuple(name.strip() for name in value.split(",") if name.strip())
        else:
            raise ValueError(f"state layout {spec!r}: unknown key {key!r} (expected history, dim, k, scenes)")
    return replace(cfg, **changes, previous_layout="")


@dataclass(frozen=True)
class PreviousLayout:
    cfg: EngineConfig
    dtype: np.dtype
    layout: int


def previous_layout(cfg: EngineConfig) -> PreviousLayout | None:
    """The layout ``cfg.previous_layout`` names, if any; None when unset or the same as ``cfg``'s."""
    if not cfg.previous_layout:
        return None
    old = parse_layout(cfg.previous_layout, cfg)
    if layout_tag(old) == layout_tag(cfg):
        return None
    return PreviousLayout(old, state_dtype(old), layout_tag(old))


def migrate(old: np.ndarray, old_cfg: EngineConfig, codec: "StateCodec") -> np.ndarray:
    """States of ``old_cfg``'s layout converted to ``codec``'s.

    Kept: the fence (source partition and offset), so replays stay skipped; the event count; the
    newest events of the history, as many as the new layout holds; the last list shown, cut or
    padded to the new ``k``; each scene's interest where the scene is still configured and ``dim``
    is unchanged. Scenes are matched by name; history entries and a last list of a scene no longer
    configured count as ``default``. Interests of a changed ``dim`` start empty and refill from new
    events.
    """
    cfg = codec.cfg
    new = np.repeat(codec.empty[None], len(old))
    for name in ("partition", "offset", "fence_index", "n_events", "list_ts"):
        new[name] = old[name]
    scene_map = np.array([cfg.scenes.index(s) if s in cfg.scenes else 0 for s in old_cfg.scenes], np.int8)
    new["list_scene"] = scene_map[old["list_scene"]]
    keep = min(old_cfg.history, cfg.history)  # the newest events; the history is right-aligned
    for name in ("hist_item", "hist_type", "hist_ts"):
        new[name][:, cfg.history - keep:] = old[name][:, old_cfg.history - keep:]
    new["hist_scene"][:, cfg.history - keep:] = scene_map[old["hist_scene"][:, old_cfg.history - keep:]]
    k = min(old_cfg.k, cfg.k)
    new["last_list"][:, :k] = old["last_list"][:, :k]
    if old_cfg.dim == cfg.dim:
        for s_old, scene in enumerate(old_cfg.scenes):
            if scene in cfg.scenes:
                s_new = cfg.scenes.index(scene)
                new["interest"][:, s_new] = old["interest"][:, s_old]
                new["interest_weight"][:, s_new] = old["interest_weight"][:, s_old]
    return new


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
