"""Scores from the counted fields of ``Params`` (``models.params.COUNTED``): the decayed popularity
prior and the item-to-item transition evidence, added to the attention scores by ``models.kernels``
and by training. Pure JAX functions of (params, arrays), like the kernels that call them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.params import Params


def neighbour_pairs(params: Params, hist_item: jax.Array, scene: jax.Array,
                    held_out: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """The counted item-to-item transition evidence of each row: ``[B, P]`` candidate items (-1: none)
    and each one's evidence, summed over the sources that name it (``merge_rows``: each item at most
    once per row, so ``pair_scores`` adds one score per item without a dense ``[B, C]`` pass).

    Table 0 (the user's whole sequence) gives the successors of the row's ``W`` newest items, table 1
    (sequences within one scene) those of its ``W`` newest items in the request's ``scene``
    (``item_scene_bits``). The ``d``-th newest source adds ``softplus(nbr_gain[t, d]) * share`` to each
    of its successors (``share``: the successor's part of the source's transition mass). A table-0
    source from another scene is also weighted by ``2 * sigmoid(transfer)`` (1 untrained): what the user
    did elsewhere transfers to this scene through the same gate as the scene interests.

    ``held_out`` (training only): ``(target [B], own [B, W])``, the transition count the row's own
    example added from its ``d``-th newest source to ``target`` (summed per source item when one item
    is several of them); the shares are taken without it
    (``(count - own) / (total - own)``), so a counted example does not see itself as evidence.
    """
    B, L = hist_item.shape
    T, W = params.nbr_gain.shape
    valid = hist_item >= 0
    items = jnp.where(valid, hist_item, 0)
    scene_bits = params.item_scene_bits[items]
    in_scene = valid & (((scene_bits >> scene.astype(jnp.uint32)[:, None]) & 1) == 1)
    position = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    gate = 2.0 * jax.nn.sigmoid(params.transfer)
    out_items, out_scores = [], []
    for table, sources in enumerate((valid, in_scene)[:T]):
        newest, _ = jax.lax.top_k(jnp.where(sources, position, -1), W)                  # [B, W], -1: none
        found = newest >= 0
        at = jnp.maximum(newest, 0)
        source = jnp.take_along_axis(items, at, axis=1)
        gain = jax.nn.softplus(params.nbr_gain[table])[None, :] * found
        if table == 0:
            gain = gain * jnp.where(jnp.take_along_axis(in_scene, at, axis=1), 1.0, gate)
        successor = params.nbr_item[source, table]                                      # [B, W, M]
        share = params.nbr_weight[source, table]
        if held_out is not None:
            target, own = held_out
            # an item that is several of the W newest sources got each one's count in its one row
            same = (source[:, :, None] == source[:, None, :]) & found[:, None, :]
            own = jnp.einsum("bvw,bw->bv", same.astype(own.dtype), own)
            total = jnp.maximum(params.nbr_total[source, table], 1e-9)
            part = jnp.clip(own / total, 0.0, 1.0)[..., None]
            mine = successor == target[:, None, None]
            share = jnp.maximum(share - part * mine, 0.0) / jnp.maximum(1.0 - part, 1e-6)
        out_items.append(jnp.where(found[..., None], successor, -1).reshape(B, -1))
        out_scores.append((share * gain[..., None]).reshape(B, -1))
    items, (evidence,) = merge_rows(jnp.concatenate(out_items, axis=1),
                                    jnp.concatenate(out_scores, axis=1))
    return items, evidence


def merge_rows(items: jax.Array, *values: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Per row of ``items`` ([B, Q] ids, -1: none), each distinct id once and the rest -1, with every
    ``values`` array ([B, Q]) summed over the id's copies; rows come back sorted by id. One small
    sort per row instead of a ``[B, C]`` scatter over the catalogue.

    >>> ids, (total,) = merge_rows(jnp.array([[4, -1, 4, 2]]), jnp.array([[1.0, 5.0, 2.0, 0.5]]))
    >>> ids.tolist(), total.tolist()
    ([[-1, 2, 4, -1]], [[0.0, 0.5, 3.0, 0.0]])
    """
    B, Q = items.shape
    position = jnp.broadcast_to(jnp.arange(Q, dtype=jnp.int32), (B, Q))
    ordered, order = jax.lax.sort((items, position), dimension=1, num_keys=1)
    starts = jnp.concatenate([jnp.ones((B, 1), bool), ordered[:, 1:] != ordered[:, :-1]], axis=1)
    first = jax.lax.cummax(jnp.where(starts, position, 0), axis=1)  # each slot's run start
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, Q))
    keep = starts & (ordered >= 0)
    in_order = (jnp.take_along_axis(v, order, axis=1) for v in values)
    sums = tuple(jnp.where(keep, jnp.zeros_like(v).at[rows, first].add(v), 0.0) for v in in_order)
    return jnp.where(keep, ordered, -1), sums


def pair_scores(scores: jax.Array, start: int | jax.Array, pairs: tuple[jax.Array, jax.Array],
                params: Params) -> jax.Array:
    """Add ``(nbr_scale + nbr_offset) * log1p(evidence)`` of the rows' ``pairs`` (``neighbour_pairs``: each
    item at most once per row) to the scores of items ``start .. start + C``: a log, so strong evidence
    ranks a neighbour first whatever its popularity (as transition kNN does) while weak evidence is about
    linear.
    """
    items, evidence = pairs
    B, C = scores.shape
    local = items - start
    local = jnp.where((items >= 0) & (local >= 0) & (local < C), local, C)
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], local.shape)
    gain = params.nbr_scale + params.nbr_offset
    return scores.at[rows, local].add(gain * jnp.log1p(evidence), mode="drop")


def elsewhere(params: Params, items: jax.Array, scene: jax.Array) -> jax.Array:
    """Bool, shaped like ``items`` ([E, ...] ids, -1: none): the item was a target only in scenes other
    than its row's ``scene`` ([E]), so that scene's catalogue most likely leaves it out. Items never
    counted are not elsewhere, so on a single-scene log nothing is.

    >>> p = Params(**{name: None for name in Params._fields})._replace(
    ...     item_scene_bits=jnp.array([0, 1, 2, 3], jnp.uint32))
    >>> elsewhere(p, jnp.array([[0, 1, 2, 3, -1]]), jnp.array([1])).tolist()
    [[False, True, False, False, False]]
    """
    bits = params.item_scene_bits[jnp.maximum(items, 0)]
    shift = scene.astype(jnp.uint32).reshape(scene.shape + (1,) * (items.ndim - 1))
    return (items >= 0) & (bits != 0) & (((bits >> shift) & 1) == 0)


def pop_gains(params: Params) -> jax.Array:
    """``[P]`` the served popularity gains: the learned ``pop_gain`` plus the chosen ``pop_offset``."""
    return params.pop_gain + params.pop_offset


def popularity_prior(params: Params, start: int | jax.Array, size: int) -> jax.Array:
    """``sum_p (pop_gain + pop_offset)[p] * log1p(pop[i, p])`` for items ``start .. start + size``: the
    decayed popularity prior."""
    pop = jax.lax.dynamic_slice_in_dim(params.pop, start, size)
    return jnp.log1p(pop) @ pop_gains(params)


def popularity_prior_of(params: Params, items: jax.Array) -> jax.Array:
    """The popularity prior (``popularity_prior``) of the given item ids (any shape)."""
    return jnp.log1p(params.pop[items]) @ pop_gains(params)
