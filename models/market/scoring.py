"""The attention score of given candidate items for every row of a batch: what the ranking kernel gives
those items (``models.kernels._chunk_scores``), without scoring the catalogue. One jitted call over the
batch's rows and the campaigns' items (padded to a bucket), the auction's second vectorised call.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from models import batching, kernels
from models.params import Params


@partial(jax.jit, static_argnames=())
@kernels.exact_matmuls
def candidate_scores(params: Params, interest: jax.Array, weight: jax.Array, ranks: kernels.RankInputs,
                     items: jax.Array, position: jax.Array) -> jax.Array:
    """``[B, U]`` scores of ``items`` ([U] distinct item rows, -1 padding); ``position`` [C] maps an item row
    to its place in ``items`` (U: none). user . e + bias + popularity prior + repeat and transition scores."""
    B, U = ranks.hist_item.shape[0], items.shape[0]
    user, _ = kernels.user_vectors(params, interest, weight, ranks)
    safe = jnp.maximum(items, 0)
    prior = params.item_bias[safe] + jnp.log1p(params.pop[safe]) @ params.pop_gain
    scores = user @ params.item_emb[safe].T + prior[None, :]
    rows = jnp.arange(B)[:, None]

    def at(item_rows):  # place of each item row in ``items`` (U: not a candidate, dropped)
        return jnp.where(item_rows >= 0, position[jnp.maximum(item_rows, 0)], U)

    hist = ranks.hist_item
    scores = scores.at[jnp.broadcast_to(rows, hist.shape), at(hist)].add(kernels.copy_weights(params, hist),
                                                                         mode="drop")
    pair_items, pair_weights = kernels.neighbour_pairs(params, hist, ranks.scene)
    evidence = jnp.zeros((B, U), scores.dtype)
    evidence = evidence.at[jnp.broadcast_to(rows, pair_items.shape), at(pair_items)].add(pair_weights,
                                                                                       mode="drop")
    return scores + params.nbr_scale * jnp.log1p(evidence)


def bucket(n: int, smallest: int = 64) -> int:
    """Candidate count padded to a power of two (at least ``smallest``), so few shapes ever compile.

    >>> bucket(1), bucket(64), bucket(65)
    (64, 64, 128)
    """
    return max(smallest, 1 << max(0, int(n - 1).bit_length()))


def score_items(params: Params, interest: np.ndarray, weight: np.ndarray, ranks: kernels.RankInputs,
                items: np.ndarray, rows_bucket: int) -> np.ndarray:
    """``[B, len(items)]`` attention scores of the distinct item rows ``items`` for the batch's B rows
    (interest / weight / ranks unpadded; rows are padded to ``rows_bucket``, items to ``bucket``)."""
    B, U = len(interest), len(items)
    if U == 0:
        return np.zeros((B, 0), np.float32)
    Up = bucket(U)
    position = np.full(params.item_emb.shape[0], Up, np.int32)
    position[items] = np.arange(U, dtype=np.int32)
    out = candidate_scores(params, batching.pad(np.asarray(interest, np.float32), rows_bucket, 0.0),
                           batching.pad(weight, rows_bucket, 0.0), batching.pad_ranks(ranks, rows_bucket),
                           jnp.asarray(batching.pad(items.astype(np.int32), Up, -1)), jnp.asarray(position))
    return np.asarray(out)[:B, :U]
