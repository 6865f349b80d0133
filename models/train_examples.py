"""Training examples on the wire (rank workers -> train topic -> trainer): fixed-size binary records
whose layout the engine config fixes, and a learnable toy problem for tests and warm-up.
"""
from __future__ import annotations

import numpy as np

from models.batching import Examples
from models.config import EngineConfig


def example_dtype(cfg: EngineConfig) -> np.dtype:
    L, S, d = cfg.history, cfg.n_scenes, cfg.dim
    return np.dtype([("hist_item", "<i4", (L,)), ("hist_type", "i1", (L,)), ("hist_age", "<f4", (L,)),
                     ("interest", "<f2", (S, d)), ("weight", "<f4", (S,)), ("scene", "i1"), ("target", "<i4"),
                     ("type", "i1"), ("ts", "<f8")])


TRAIN_MESSAGE_MAX_BYTES = 512 * 1024


def examples_to_messages(examples: Examples, cfg: EngineConfig,
                         max_bytes: int = TRAIN_MESSAGE_MAX_BYTES) -> list[bytes]:
    """Pack examples as binary messages (fixed-size records, layout fixed by ``cfg``) of at most
    ``max_bytes`` each, at least one example each.

    A rank batch of 512 events makes half a megabyte of examples at the default shapes; with a longer
    history or more dimensions, one message would pass Kafka's 1 MiB limit, and its delivery, hence
    the batch, would fail every time.

    >>> cfg = EngineConfig(dim=4, history=3, scenes=("default",), k=2)
    >>> ex = toy_examples(cfg, n=5, n_items=7)
    >>> [back] = [examples_from_bytes(m, cfg) for m in examples_to_messages(ex, cfg)]
    >>> back.target.tolist() == ex.target.tolist(), back.hist_item.shape
    (True, (5, 3))
    >>> size = example_dtype(cfg).itemsize
    >>> [len(m) // size for m in examples_to_messages(ex, cfg, max_bytes=2 * size)]
    [2, 2, 1]
    """
    records = np.zeros(len(examples), example_dtype(cfg))
    for f in Examples.__dataclass_fields__:
        records[f] = getattr(examples, f)
    per_message = max(1, max_bytes // records.dtype.itemsize)
    return [records[start:start + per_message].tobytes() for start in range(0, len(records), per_message)]


def examples_from_bytes(blob: bytes, cfg: EngineConfig) -> Examples:
    dtype = example_dtype(cfg)
    if len(blob) % dtype.itemsize:
        raise ValueError(f"training message of {len(blob)} bytes is not a whole number of "
                         f"{dtype.itemsize}-byte examples: produced with another history/dim/scenes?")
    records = np.frombuffer(blob, dtype)
    return Examples(**{f: records[f] for f in Examples.__dataclass_fields__})


def toy_examples(cfg: EngineConfig, n: int, n_items: int, seed: int = 0) -> Examples:
    """A learnable toy problem: the target is always the item after the newest history item."""
    rng = np.random.default_rng(seed)
    L, S, d = cfg.history, cfg.n_scenes, cfg.dim
    hist = rng.integers(0, n_items, (n, L)).astype(np.int32)
    return Examples(hist_item=hist, hist_type=np.zeros((n, L), np.int8),
                    hist_age=np.zeros((n, L), np.float32),
                    interest=np.zeros((n, S, d), np.float16), weight=np.zeros((n, S), np.float32),
                    scene=np.zeros(n, np.int8), target=((hist[:, -1] + 1) % n_items).astype(np.int32),
                    type=np.zeros(n, np.int8), ts=np.arange(n, dtype=np.float64))
