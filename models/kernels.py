"""JIT-compiled kernels of the attention engine: fold events into scene interests, attend, score, top-K.

Pure functions of (params, arrays); no I/O, no Python state. Callers pad every array to a bucket
size (see ``models.engine``) so each kernel compiles once per bucket. A slow NumPy twin of every
kernel lives in ``models.reference`` and the tests hold the two together. The scores of the counted
features (popularity prior, transition evidence) live in ``models.counted_scores``.
"""
from __future__ import annotations

from functools import partial, wraps
from typing import NamedTuple

import jax
import jax.numpy as jnp

# The counted features' scores, kept importable as ``kernels.X`` (training, candidates and the
# market call them through this module).
from models.counted_scores import (merge_rows, neighbour_pairs, pair_scores,  # noqa: F401
                                   popularity_prior, popularity_prior_of)
from models.params import Params

NEG_INF = -1e30  # finite so that masked softmax rows stay NaN-free


def enable_compile_cache(path: str) -> None:
    """Keep compiled kernels on disk so a restarted worker warms up in seconds, not tens of seconds."""
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


class FoldInputs(NamedTuple):
    """New events, flattened across users. Padding rows carry ``slot == n_users * n_scenes``."""

    item: jax.Array         # [E] int32
    type: jax.Array         # [E] int32
    slot: jax.Array         # [E] int32  user_row * S + scene
    later: jax.Array        # [E] int32  events after this one in the same slot and batch
    slot_count: jax.Array   # [B, S] int32 events per (user, scene) in this batch


class RankInputs(NamedTuple):
    """Each user's history after folding (right-aligned, newest at slot L-1) and the request."""

    hist_item: jax.Array    # [B, L] int32, -1 where empty
    hist_type: jax.Array    # [B, L] int32
    hist_age: jax.Array     # [B, L] float32 seconds before the request
    scene: jax.Array        # [B] int32 scene the list is for
    exclude: jax.Array      # [B, X] int32 items never to return, -1 padding


def fold_interests(params: Params, interest: jax.Array, weight: jax.Array, events: FoldInputs,
                   gamma: float) -> tuple[jax.Array, jax.Array]:
    """Fold new events into per-scene interest vectors (decayed weighted means of item vectors).

    Within a slot an event followed by ``r`` later ones contributes ``gamma**r * w(type)``; the old
    mean decays by ``gamma**count``. Equivalent to applying the events one by one.
    """
    B, S, d = interest.shape
    w_type = jnp.exp(params.type_logit)[events.type]
    contrib = (gamma ** events.later.astype(jnp.float32)) * w_type                     # [E]
    vectors = params.item_emb[events.item] * contrib[:, None]                           # [E, d]
    added = jax.ops.segment_sum(vectors, events.slot, num_segments=B * S).reshape(B, S, d)
    added_weight = jax.ops.segment_sum(contrib, events.slot, num_segments=B * S).reshape(B, S)
    kept = weight * gamma ** events.slot_count.astype(jnp.float32)
    new_weight = kept + added_weight
    new_interest = (interest * kept[..., None] + added) / jnp.maximum(new_weight, 1e-12)[..., None]
    return new_interest, new_weight


def user_vectors(params: Params, interest: jax.Array, weight: jax.Array,
                 ranks: RankInputs) -> tuple[jax.Array, jax.Array]:
    """The query vector of each user and the attention weights over their history (see ``attend``)."""
    user, attn, _ = attend(params, interest, weight, ranks)
    return user, attn


def attend(params: Params, interest: jax.Array, weight: jax.Array,
           ranks: RankInputs) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The query vector of each user, the attention weights over their history ``[B, L]`` and over
    their scene interests ``[B, S]``.

    logits_j = q.k_j / sqrt(d) + log w(type_j) - decay * log1p(age_j / 1h); q is the newest item
    plus the target scene's query; the scene term attends over the user's scene interests.
    """
    d = params.item_emb.shape[1]
    scale = 1.0 / jnp.sqrt(jnp.float32(d))
    valid = ranks.hist_item >= 0                                                        # [B, L]
    items = jnp.where(valid, ranks.hist_item, 0)
    h = params.item_emb[items] + params.type_emb[ranks.hist_type]                       # [B, L, d]
    h = jnp.where(valid[..., None], h, 0.0)
    newest = h[:, -1, :]                                                                 # right-aligned
    q = (newest + params.scene_query[ranks.scene]) @ params.w_query                      # [B, d]
    # q.(k_j W_k) = (q W_k^T).k_j and sum_j a_j (h_j W_v) = (sum_j a_j h_j) W_v: the projections
    # act on [B, d] rows, never on the [B, L, d] history (that was most of this function's time).
    age_hours = jnp.log1p(jnp.maximum(ranks.hist_age, 0.0) / 3600.0)
    logits = (jnp.einsum("bd,bld->bl", q @ params.w_key.T, h + params.pos_emb[None]) * scale
              + params.type_logit[ranks.hist_type]
              - jax.nn.softplus(params.decay) * age_hours)
    logits = jnp.where(valid, logits, NEG_INF)
    attn = jax.nn.softmax(logits, axis=-1) * valid                                       # empty rows -> 0
    pooled = jnp.einsum("bl,bld->bd", attn, h) @ params.w_value

    has_scene = weight > 0                                                                # [B, S]
    scene_logits = jnp.where(has_scene, jnp.einsum("bd,bsd->bs", q, interest) * scale, NEG_INF)
    beta = jax.nn.softmax(scene_logits, axis=-1) * has_scene
    transfer = jnp.einsum("bs,bsd->bd", beta, interest)
    return newest + pooled + jax.nn.sigmoid(params.transfer) * transfer, attn, beta


def copy_weights(params: Params, hist_item: jax.Array) -> jax.Array:
    """Repeat weight of each history slot: ``(copy + copy_offset) * exp(-steps_back / tau)``, 0 when
    empty.

    A pointer over the history with a learned recency horizon ``tau = 1 + softplus(copy_tau)``, so
    "buy again / click again" is scored directly rather than through embedding similarity. The
    gain is signed: where people do not repeat (ratings, one-off purchases) it pushes recently seen
    items down. ``copy`` is learned by the loss, ``copy_offset`` chosen by the hits of the lists
    (``models.served_offsets``); the loss sees ``copy`` alone.
    """
    L = hist_item.shape[1]
    steps_back = jnp.arange(L - 1, -1, -1, dtype=jnp.float32)       # history is right-aligned
    tau = 1.0 + jax.nn.softplus(params.copy_tau)
    weights = (params.copy + params.copy_offset) * jnp.exp(-steps_back / tau)
    return jnp.where(hist_item >= 0, weights[None, :], 0.0)


def copy_scores(scores: jax.Array, start: int | jax.Array, hist_item: jax.Array,
                params: Params) -> jax.Array:
    """Add each history item's repeat weight to its score (repeated items accumulate)."""
    B, C = scores.shape
    local = hist_item - start
    local = jnp.where((hist_item >= 0) & (local >= 0) & (local < C), local, C)
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], local.shape)
    return scores.at[rows, local].add(copy_weights(params, hist_item), mode="drop")


TOPK_BLOCK = 32  # items per block in the running block top-k

# Catalogue items scored per loop step when the caller passes ``chunk=0`` (the default): measured by
# ``tests.benchmarks.bench_kernel``'s chunk table. On CPU small chunks keep the scores in cache; on a
# GPU every loop step costs launches, so one step over up to 2**20 items wins (H100, 1M items, 512
# users: 4096-item chunks took 1.3-1.6x as long as 262144; one chunk was 5-10% faster than 262144 in
# two runs of three). Above 2**20 items the B x N scores are chunked there too.
AUTO_CHUNK = {"cpu": 4096}
AUTO_CHUNK_ACCELERATOR = 1 << 20


def resolve_chunk(chunk: int) -> int:
    """``chunk``, or the backend's default for ``0``."""
    return chunk or AUTO_CHUNK.get(jax.default_backend(), AUTO_CHUNK_ACCELERATOR)


# Items per step over the catalogue's last, partial chunk (``top_k_items``), by backend; elsewhere the
# last chunk is scored whole (``tail == chunk``), as on a GPU every loop step costs launches.
AUTO_TAIL = {"cpu": 1024}


def resolve_tail(chunk: int) -> int:
    """The tail step for ``chunk`` (0: the backend's default chunk): the backend's ``AUTO_TAIL``, else
    the chunk."""
    chunk = resolve_chunk(chunk)
    return min(AUTO_TAIL.get(jax.default_backend(), chunk), chunk)


def exact_matmuls(fn):
    """Trace ``fn`` with full float32 matmuls. GPUs otherwise multiply float32 in TF32 (10-bit
    mantissa): on an H100 that changed the top-20 of 2 of the 8 users compared with the float64
    reference at 1M items, and of 15% of 512 users against NumPy at 100k. On CPU this changes nothing."""
    @wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)
    return wrapped


def in_scene(item_scenes: jax.Array, scene: jax.Array) -> jax.Array:
    """[B, N] bool: item ``i`` is in the catalogue of row ``b``'s scene (bit ``scene[b]`` of
    ``item_scenes[i]``)."""
    return ((item_scenes[None, :] >> scene.astype(jnp.uint32)[:, None]) & 1) == 1


def _chunk_scores(user, params: Params, hist_item, n_items, exclude, start, done, size: int,
                  item_scenes=None, scene=None, pairs=None) -> jax.Array:
    """``user . e_i + b_i`` + popularity prior + repeat score (+ the rows' transition ``pairs``, see
    ``neighbour_pairs``) for items ``start .. start+size``; -inf for items past the
    catalogue (``n_items``: [] or [B]), for items before ``done`` (already scored), for excluded ones and,
    given ``item_scenes`` ([C] uint32 scene bitmask per item) and ``scene`` ([B]), for items outside the
    row's scene catalogue (a hidden item has no bit set)."""
    B = user.shape[0]
    emb = jax.lax.dynamic_slice_in_dim(params.item_emb, start, size)
    bias = jax.lax.dynamic_slice_in_dim(params.item_bias, start, size)
    index = start + jnp.arange(size)
    live = (index >= done)[None, :] & (index[None, :] < jnp.reshape(n_items, (-1, 1)))  # [1 or B, size]
    if item_scenes is not None:
        live = live & in_scene(jax.lax.dynamic_slice_in_dim(item_scenes, start, size), scene)  # [B, size]
    prior = bias + popularity_prior(params, start, size)
    scores = copy_scores(user @ emb.T + jnp.where(live, prior[None, :], NEG_INF), start, hist_item,
                         params)
    if pairs is not None:
        scores = pair_scores(scores, start, pairs, params)
    local = exclude - start
    local = jnp.where((exclude >= 0) & (local >= 0) & (local < size), local, size)  # size: dropped
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], local.shape)
    return scores.at[rows, local].set(NEG_INF, mode="drop")


def chunk_plan(live, size: int, tail: int):
    """``(whole chunks, tail steps)`` that score the first ``live`` items (a Python or a traced int):
    whole chunks of ``size``, then the rest in steps of ``tail`` where those cover at most half a
    chunk; otherwise the rest is one more whole chunk (each step has a fixed cost, so more steps
    over about as many items would be slower).

    >>> chunk_plan(10_000, 4096, 1024), chunk_plan(12_000, 4096, 1024), chunk_plan(8192, 4096, 1024)
    ((2, 2), (3, 0), (2, 0))
    >>> chunk_plan(10_000, 4096, 4096)  # tail == chunk: whole chunks only
    (3, 0)
    """
    whole = live // size
    steps = -(-(live - whole * size) // tail)
    finer = steps * tail * 2 <= size
    return whole + (steps > 0) * (1 - finer), steps * finer


def step_sizes(rows: int, k: int, chunk: int, tail: int | None = None) -> tuple[int, int]:
    """The items per whole chunk and per tail step ``top_k_items`` uses on a table of ``rows``: whole
    blocks, no more than the table holds, at least ``k`` blocks a chunk (smaller chunks only add loop
    steps); the tail (``resolve_tail`` when None) at most a chunk."""
    chunk = resolve_chunk(chunk)
    size = min(-(-max(chunk, k * TOPK_BLOCK) // TOPK_BLOCK) * TOPK_BLOCK, rows - rows % TOPK_BLOCK)
    return size, min(-(-(resolve_tail(chunk) if tail is None else tail) // TOPK_BLOCK) * TOPK_BLOCK, size)


def items_scored(n_items: int, rows: int, k: int, chunk: int, tail: int | None = None) -> int:
    """How many items ``top_k_items`` scores for a catalogue of ``n_items`` in a table of ``rows``.

    >>> items_scored(10_000, 16384, 20, 4096), items_scored(10_000, 16384, 20, 4096, tail=4096)
    (10240, 12288)
    """
    if rows < k * TOPK_BLOCK:
        return rows
    size, tail = step_sizes(rows, k, chunk, tail)
    whole, steps = chunk_plan(min(n_items, rows), size, tail)
    return whole * size + steps * tail


def top_k_items(user: jax.Array, attn: jax.Array, hist_item: jax.Array, params: Params, n_items: jax.Array,
                exclude: jax.Array, k: int, chunk: int, tail: int | None = None, item_scenes=None,
                scene=None, pairs=None) -> tuple[jax.Array, jax.Array]:
    """Exact top-``k`` of ``user . e_i + b_i`` (+ repeat score) over the catalogue, ``chunk`` items at a
    time.

    A running *block* top-k: each chunk's scores are cut into blocks of ``TOPK_BLOCK`` items, and the
    ``k`` blocks with the largest maxima seen so far are kept whole. One ``top_k`` over the kept
    blocks' ``k * TOPK_BLOCK`` scores at the end gives the answer. Exact: a block holding one of the
    top-k scores has a maximum at least that score, so at most ``k - 1`` blocks can beat it (ties may
    pick a different, equally scored item). ``chunk`` is rounded up to at least ``k`` whole blocks.
    Per chunk this costs a matmul, one max-reduce and a ``top_k`` over ``k + chunk / TOPK_BLOCK``
    maxima; XLA's CPU ``top_k`` costs a few ns per score, so this is 1.5-2.5x faster than a
    ``top_k`` over each chunk's candidates plus a merge. The ``B x N`` score matrix never exists,
    and only chunks that hold live items are scored (the table's growth padding is not).

    The catalogue's last, partial chunk may be scored ``tail`` items at a time (``resolve_tail``;
    whole blocks, at most ``chunk``; ``chunk_plan`` says when): the whole chunks run in one loop and
    the rest of the catalogue in a second one of smaller steps. At 10k items with 4096-item chunks,
    that scores 10,240 items, not 12,288.

    ``item_scenes`` / ``scene`` (optional): rank each row only over its scene's catalogue
    (``_chunk_scores``).
    ``pairs`` (optional, ``neighbour_pairs``): transition scores added to the rows' candidates.
    """
    C, d = params.item_emb.shape
    B = user.shape[0]
    chunk = resolve_chunk(chunk)
    if C < k * TOPK_BLOCK:  # a table smaller than k blocks: one matmul, one plain top-k
        top, items = jax.lax.top_k(_chunk_scores(user, params, hist_item, n_items, exclude, 0, 0, C,
                                                           item_scenes, scene, pairs), k)
        return jnp.where(top > NEG_INF / 2, items.astype(jnp.int32), -1), top
    size, tail = step_sizes(C, k, chunk, tail)

    def scan(best, first_item, steps, width):
        """``steps`` chunks of ``width`` items from ``first_item`` on, folded into ``best``."""
        def step(c, best):
            # [B, k] maxima, [B, k, blk] scores, [B, k] first item
            best_max, best_blocks, best_first = best
            at = first_item + c * width
            # the last chunk may overlap its predecessor: ``done`` masks that
            start = jnp.minimum(at, C - width)
            blocks = _chunk_scores(user, params, hist_item, n_items, exclude, start, at, width, item_scenes,
                                   scene, pairs)
            blocks = blocks.reshape(B, width // TOPK_BLOCK, TOPK_BLOCK)
            top, pos = jax.lax.top_k(jnp.concatenate([best_max, blocks.max(axis=2)], axis=1), k)
            kept = pos < k  # an earlier block stays
            old = jnp.where(kept, pos, 0)
            new = jnp.where(kept, 0, pos - k)
            contents = jnp.where(kept[:, :, None], jnp.take_along_axis(best_blocks, old[:, :, None], axis=1),
                                 jnp.take_along_axis(blocks, new[:, :, None], axis=1))
            first = jnp.where(kept, jnp.take_along_axis(best_first, old, axis=1), start + new * TOPK_BLOCK)
            return top, contents, first

        return jax.lax.fori_loop(0, steps, step, best)

    best = (jnp.full((B, k), NEG_INF, user.dtype), jnp.full((B, k, TOPK_BLOCK), NEG_INF, user.dtype),
            jnp.zeros((B, k), jnp.int32))
    whole, steps = chunk_plan(jnp.minimum(jnp.max(n_items), C), size, tail)
    best = scan(best, 0, whole, size)
    if tail < size:
        best = scan(best, whole * size, steps, tail)
    _, contents, first = best
    top, pos = jax.lax.top_k(contents.reshape(B, k * TOPK_BLOCK), k)
    items = jnp.take_along_axis(first, pos // TOPK_BLOCK, axis=1) + pos % TOPK_BLOCK
    return jnp.where(top > NEG_INF / 2, items.astype(jnp.int32), -1), top


@partial(jax.jit, static_argnames=("k", "chunk", "gamma", "tail"), donate_argnums=(1, 2))
@exact_matmuls
def step(params: Params, interest: jax.Array, weight: jax.Array, events: FoldInputs, ranks: RankInputs,
         n_items: jax.Array, item_scenes: jax.Array | None = None, *, k: int, chunk: int, gamma: float,
         tail: int | None = None):
    """One micro-batch: fold new events into scene interests, then rank the catalogue for each user.

    Returns ``(interest, weight, top_items [B, k], top_scores [B, k])``; items are -1 where fewer
    than ``k`` may be shown. ``tail``: see ``top_k_items`` (None: the backend's default). ``item_scenes``
    ([C] uint32, optional): each item's scene bitmask; a row ranks only items in its scene's catalogue.
    """
    interest, weight = fold_interests(params, interest, weight, events, gamma)
    user, attn = user_vectors(params, interest, weight, ranks)
    pairs = neighbour_pairs(params, ranks.hist_item, ranks.scene)
    items, scores = top_k_items(user, attn, ranks.hist_item, params, n_items, ranks.exclude, k, chunk, tail,
                                item_scenes, ranks.scene, pairs)
    return interest, weight, items, scores


fold = jax.jit(exact_matmuls(fold_interests), static_argnames=("gamma",))


@partial(jax.jit, static_argnames=("k", "chunk", "tail"))
@exact_matmuls
def rank(params: Params, interest: jax.Array, weight: jax.Array, ranks: RankInputs, n_items: jax.Array,
         item_scenes: jax.Array | None = None, *, k: int, chunk: int, tail: int | None = None):
    """Rank without folding (evaluation asks for a list before it applies the event; requests at serve
    time)."""
    user, attn = user_vectors(params, interest, weight, ranks)
    return top_k_items(user, attn, ranks.hist_item, params, n_items, ranks.exclude, k, chunk, tail,
                       item_scenes, ranks.scene, neighbour_pairs(params, ranks.hist_item, ranks.scene))


@partial(jax.jit, static_argnames=("events",))
@exact_matmuls
def explain(params: Params, interest: jax.Array, weight: jax.Array, ranks: RankInputs, *, events: int):
    """Why a list is what it is: the ``events`` history slots with the largest attention weight
    (``[B, events]`` positions into the history and their weights; weight 0 where the history is
    shorter), each scene interest's weight in the query ``[B, S]``, and the transfer gate in [0, 1]."""
    _, attn, beta = attend(params, interest, weight, ranks)
    top_weight, top_slot = jax.lax.top_k(attn, min(events, attn.shape[1]))
    return top_slot.astype(jnp.int32), top_weight, beta, jax.nn.sigmoid(params.transfer)
