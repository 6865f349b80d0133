"""Model parameters: the pytree, its deterministic initialisation, catalogue growth and snapshots.

Item rows are seeded by their dense index, so every worker that has never seen a trained snapshot
still agrees on the same vectors. Snapshots are self-describing ``.npz`` bytes; the store keeps them.
"""
from __future__ import annotations

import io
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.config import EngineConfig
from models.events import EVENT_TYPES

# Attention prior of each event type before training: a purchase says more than a view.
DEFAULT_TYPE_WEIGHTS = {"view": 1.0, "click": 1.5, "cart": 2.5, "purchase": 3.0}

# Item-to-item transitions counted online (``models.training.TransitionCounts``): each item keeps its
# NEIGHBOURS strongest successors in two tables, one over the user's whole sequence and one over the
# sequence within the event's scene; a list scores the successors of the user's NEIGHBOUR_WINDOW newest
# items (per table: the newest overall, the newest in the request's scene).
NEIGHBOURS = 32
NEIGHBOUR_WINDOW = 3
NEIGHBOUR_TABLES = ("sequence", "scene")
# Popularity priors: counts of each item as a target, decayed per training example with the first
# half-lives (a fast and a slow one) and in event time with the second (seconds: a week, a quarter; a
# log whose event rate changes over the years is popular by time, not by event count). The gains say
# how much each matters; ``POPULARITY_PRIORS`` columns in all.
POPULARITY_HALF_LIVES = (2000.0, 50000.0)
POPULARITY_HALF_LIVES_S = (7 * 86400.0, 90 * 86400.0)
POPULARITY_PRIORS = len(POPULARITY_HALF_LIVES) + len(POPULARITY_HALF_LIVES_S)
# Norm of a cold-start item vector. Small: an item seen once or twice should be scored by what was
# learned about it, not by the noise it started from (online Adam moves a row ~0.1 per occurrence).
ITEM_INIT_NORM = 0.1
# Fields the trainer counts rather than learns by gradient (they travel in snapshots like the rest).
COUNTED = ("pop", "nbr_item", "nbr_weight", "nbr_total", "item_scene_bits")
# Fields added to a learned gain when serving, chosen by the trainer by hits (``models.served_offsets``):
# the loss and the optimiser never see them (``unoffset``).
SERVED_OFFSETS = ("copy_offset", "pop_offset", "nbr_offset")


class Params(NamedTuple):
    """Everything the kernels learn. ``item_*`` rows beyond the catalogue are padding for growth."""

    item_emb: jax.Array      # [C, d]
    item_bias: jax.Array     # [C]
    type_emb: jax.Array      # [T, d]
    type_logit: jax.Array    # [T]   log attention weight of each event type
    pos_emb: jax.Array       # [L, d] by history slot (slot L-1 is the newest event)
    scene_query: jax.Array   # [S, d]
    w_query: jax.Array       # [d, d]
    w_key: jax.Array         # [d, d]
    w_value: jax.Array       # [d, d]
    decay: jax.Array         # []    time decay per log-hour of age, through softplus
    transfer: jax.Array      # []    gate of the scene-transfer term, through sigmoid
    copy: jax.Array          # []    signed gain of the repeat (copy-from-history) score
    copy_tau: jax.Array      # []    its recency horizon in events: 1 + softplus(copy_tau)
    # []    added to ``copy`` when serving; chosen online by the hits it gives (``models.served_offsets``),
    # never by the loss
    copy_offset: jax.Array
    pop_gain: jax.Array      # [P]   gain of log1p(decayed popularity) per half-life
    # [P]   added to ``pop_gain`` when serving; chosen by hits like ``copy_offset``, never by the loss
    pop_offset: jax.Array
    # [2, W] weight of a neighbour's transition share, per table and distance (softplus)
    nbr_gain: jax.Array
    nbr_scale: jax.Array     # []    gain of log1p(summed transition evidence)
    # []    added to ``nbr_scale`` when serving; chosen by hits like ``copy_offset``, never by the loss
    nbr_offset: jax.Array
    # counted (``COUNTED``), not learned:
    pop: jax.Array           # [C, P] decayed target counts (``POPULARITY_HALF_LIVES``, then ``_S``)
    nbr_item: jax.Array      # [C, 2, M] int32 strongest successors per table, -1 padding
    nbr_weight: jax.Array    # [C, 2, M] their share of the row's transition mass
    nbr_total: jax.Array     # [C, 2] the row's transition mass (to resume counting from a snapshot)
    item_scene_bits: jax.Array  # [C] uint32 scenes the item was a target in (bit s: scene s)


def mismatch(params: Params, cfg: EngineConfig) -> str | None:
    """Why ``params`` (a snapshot) cannot serve ``cfg``, or None when they fit: a snapshot trained with
    another ``dim``, ``history`` or number of scenes has other shapes (and a kernel would index past them).

    >>> mismatch(init_params(EngineConfig(dim=8, history=4, k=2)), EngineConfig(dim=8, history=6, k=2))
    'dim/history/scenes 8/4/4, configured 8/6/4'
    """
    have = (params.item_emb.shape[1], params.pos_emb.shape[0], params.scene_query.shape[0])
    want = (cfg.dim, cfg.history, cfg.n_scenes)
    if have != want:
        return f"dim/history/scenes {'/'.join(map(str, have))}, configured {'/'.join(map(str, want))}"
    neighbours = tuple(params.nbr_item.shape[1:]) + (params.nbr_gain.shape[1], params.pop.shape[1])
    expected = (len(NEIGHBOUR_TABLES), NEIGHBOURS, NEIGHBOUR_WINDOW, POPULARITY_PRIORS)
    if neighbours != expected:
        return (f"neighbour tables/neighbours/window/priors {'/'.join(map(str, neighbours))}, "
                f"this build {'/'.join(map(str, expected))}")
    return None


def item_rows(seed: int, start: int, stop: int, dim: int) -> jax.Array:
    """Deterministic vectors for item indices ``start..stop-1`` (the cold-start vector of an item).

    >>> a = item_rows(0, 0, 4, 8); b = item_rows(0, 2, 4, 8)
    >>> bool(jnp.allclose(a[2:], b))
    True
    """
    key = jax.random.PRNGKey(seed)
    index = jnp.arange(start, stop, dtype=jnp.uint32)
    rows = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (dim,)))(index)
    return rows * (ITEM_INIT_NORM / np.sqrt(dim))


def counted_rows(rows: int) -> dict:
    """The counted fields (``COUNTED``) for ``rows`` items that were never seen: no popularity, no
    neighbours."""
    tables = len(NEIGHBOUR_TABLES)
    return {"pop": jnp.zeros((rows, POPULARITY_PRIORS), jnp.float32),
            "nbr_item": jnp.full((rows, tables, NEIGHBOURS), -1, jnp.int32),
            "nbr_weight": jnp.zeros((rows, tables, NEIGHBOURS), jnp.float32),
            "nbr_total": jnp.zeros((rows, tables), jnp.float32),
            "item_scene_bits": jnp.zeros((rows,), jnp.uint32)}


def unoffset(tree: Params) -> Params:
    """``tree`` (parameters, or their updates) with every served offset (``SERVED_OFFSETS``) at 0."""
    return tree._replace(**{name: jnp.zeros_like(getattr(tree, name)) for name in SERVED_OFFSETS})


def learned(params: Params) -> Params:
    """``params`` without the counted fields (None leaves): the tree the optimiser sees."""
    return params._replace(**{name: None for name in COUNTED})


def init_params(cfg: EngineConfig, capacity: int | None = None) -> Params:
    """Untrained parameters: index-seeded item vectors, identity projections, type priors.

    >>> p = init_params(EngineConfig(dim=8, history=4, k=2), capacity=16)
    >>> p.item_emb.shape, p.w_query.shape
    ((16, 8), (8, 8))
    """
    capacity = capacity or cfg.initial_capacity
    d = cfg.dim
    return Params(
        item_emb=item_rows(cfg.seed, 0, capacity, d),
        item_bias=jnp.zeros((capacity,), jnp.float32),
        type_emb=jnp.zeros((len(EVENT_TYPES), d), jnp.float32),
        type_logit=jnp.log(jnp.array([DEFAULT_TYPE_WEIGHTS[t] for t in EVENT_TYPES], jnp.float32)),
        pos_emb=jnp.zeros((cfg.history, d), jnp.float32),
        scene_query=jnp.zeros((cfg.n_scenes, d), jnp.float32),
        # distinct arrays, not one shared buffer: kernels may donate parameters
        w_query=jnp.eye(d, dtype=jnp.float32), w_key=jnp.eye(d, dtype=jnp.float32),
        w_value=jnp.eye(d, dtype=jnp.float32),
        decay=jnp.asarray(-2.0, jnp.float32),      # softplus(-2) ~ 0.13 per log-hour
        transfer=jnp.asarray(0.0, jnp.float32),    # gate 0.5
        copy=jnp.asarray(2.0, jnp.float32),        # recent items first until trained
        copy_tau=jnp.asarray(7.0, jnp.float32),    # horizon ~ 8 events
        copy_offset=jnp.asarray(0.0, jnp.float32),
        # before training: transitions first (recency-decayed as in TransitionKNN), then popularity
        pop_gain=jnp.asarray([0.5] + [0.0] * (POPULARITY_PRIORS - 1), jnp.float32),
        pop_offset=jnp.zeros((POPULARITY_PRIORS,), jnp.float32),
        nbr_gain=jnp.tile(50.0 * 0.6 ** jnp.arange(NEIGHBOUR_WINDOW, dtype=jnp.float32),
                          (len(NEIGHBOUR_TABLES), 1)),
        nbr_scale=jnp.asarray(2.0, jnp.float32),
        nbr_offset=jnp.asarray(0.0, jnp.float32),
        **counted_rows(capacity),
    )


def capacity_for(n_items: int, minimum: int) -> int:
    """Smallest power-of-two multiple of ``minimum`` that holds ``n_items`` (growth by doubling).

    >>> capacity_for(1025, 1024), capacity_for(10, 1024)
    (2048, 1024)
    """
    capacity = minimum
    while capacity < n_items:
        capacity *= 2
    return capacity


def grow(params: Params, capacity: int, seed: int) -> Params:
    """Pad the item table to ``capacity`` rows with cold-start vectors (no-op when it is large enough)."""
    have = params.item_emb.shape[0]
    if capacity <= have:
        return params
    rows = item_rows(seed, have, capacity, params.item_emb.shape[1])
    fresh = counted_rows(capacity - have)
    return params._replace(
        item_emb=jnp.concatenate([params.item_emb, rows]),
        item_bias=jnp.concatenate([params.item_bias, jnp.zeros((capacity - have,), jnp.float32)]),
        **{name: jnp.concatenate([getattr(params, name), fresh[name]]) for name in COUNTED},
    )


def to_bytes(params: Params, meta: dict) -> bytes:
    """Serialise a snapshot (parameters + JSON-able metadata such as version and n_items)."""
    buf = io.BytesIO()
    arrays = {name: np.asarray(value) for name, value in params._asdict().items()}
    np.savez(buf, __meta__=np.frombuffer(repr(meta).encode(), np.uint8), **arrays)
    return buf.getvalue()


def from_bytes(blob: bytes) -> tuple[Params, dict]:
    """Inverse of :func:`to_bytes`.

    >>> p = init_params(EngineConfig(dim=4, history=2, k=1), capacity=8)
    >>> q, meta = from_bytes(to_bytes(p, {"version": 3}))
    >>> meta["version"], bool(jnp.all(q.item_emb == p.item_emb))
    (3, True)
    """
    import ast

    with np.load(io.BytesIO(blob)) as npz:
        meta = ast.literal_eval(npz["__meta__"].tobytes().decode())
        stored = {name: npz[name] for name in Params._fields if name in npz.files}
    # a snapshot from before the transition features: no counts yet, the untrained gains
    missing = [name for name in Params._fields if name not in stored]
    if missing:
        fresh = init_params(EngineConfig(dim=1, history=1, scenes=("default",), k=1, initial_capacity=1), 1)
        never_seen = counted_rows(stored["item_emb"].shape[0])
        counted = {name: np.asarray(value) for name, value in never_seen.items()}
        for name in missing:
            stored[name] = counted[name] if name in counted else np.asarray(getattr(fresh, name))
    # device_put, not jnp.asarray: asarray lifts a NumPy array through a small jitted function
    # that compiles once per new shape, so every leaf of a snapshot with new shapes (a worker's
    # first snapshot, a grown item table) cost a compile on the rank path (~50 ms each, 7 leaves).
    params = Params(**{name: jax.device_put(stored[name]) for name in Params._fields})
    return params, meta

