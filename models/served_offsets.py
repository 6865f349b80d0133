"""Served offsets of the repeat, popularity and transition gains, chosen by the hits they would give.

The next-item loss learns the repeat gain ``copy``, the popularity gains ``pop_gain`` and the transition
gain ``nbr_scale`` as well as it learns anything, but a likelihood is not a ranking. On repeat-heavy logs
(Tmall, YooChoose) it drove ``copy`` to about zero, because the attention already puts the history's
probability mass in the right place on average, while the lists lost the recency order that makes "buy
again" the first entry. On the Amazon movie/book log it gave the fast time-decayed popularity prior a
negative gain, where the lists want recently popular items first; and there it kept ``nbr_scale`` near
0.3, where counted successors first (as transition kNN ranks) served better lists. So the scorer adds
``copy_offset`` to ``copy``, the vector ``pop_offset`` to ``pop_gain`` and ``nbr_offset`` to ``nbr_scale``
when serving, and the trainer picks them by hits: before learning from new events it ranks a sample of
them under every repeat offset of a grid (``OFFSETS``), every popularity offset vector (``pop_vectors``:
none, or one prior boosted by one of ``POP_BOOSTS``) and every transition offset (``NBR_OFFSETS``), and
keeps, for each of the three, the choice with the largest exponentially decayed DCG@k of the true next
item. Wide repeat offsets stand for "history first" (+16) and "history last" (-16, as good as excluding
seen items); zero offsets serve what the loss learned. The popularity vectors are chosen whole, not one
prior at a time: moving the priors one by one (they are nearly collinear on some logs) drifted to boosts
that each looked best given the others and served worse lists together (Amazon Beauty).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from models import kernels
from models.counted_scores import elsewhere, neighbour_pairs, pair_scores, popularity_prior
from models.params import Params
from models.train_loss import TrainBatch

OFFSETS = (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
POP_BOOSTS = (1.0, 2.0, 4.0, 8.0)
NBR_OFFSETS = (-1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def pop_vectors(priors: int, boosts=POP_BOOSTS) -> np.ndarray:
    """``[1 + priors * len(boosts), priors]`` the popularity offset vectors to choose from: zeros, then
    each prior boosted by each of ``boosts`` alone.

    >>> pop_vectors(2, (1.0, 4.0)).tolist()
    [[0.0, 0.0], [1.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 4.0]]
    """
    rows = [np.zeros(priors)] + [np.eye(priors)[p] * b for p in range(priors) for b in boosts]
    return np.asarray(rows, np.float32)


@partial(jax.jit, static_argnames=("k",))
@kernels.exact_matmuls
def offset_gains(params: Params, batch: TrainBatch, n_items: jax.Array, offsets: jax.Array,
                 pop_offsets: jax.Array, nbr_offsets: jax.Array, k: int) -> tuple[jax.Array, ...]:
    """Summed DCG@``k`` of each example's target (``batch.mask`` rows whose target was counted before)
    among the items a list could show: ``[G]`` with ``copy + offsets[g]`` as the repeat gain, and ``[V]``
    with ``pop_gain + pop_offsets[v]`` ([V, P]) as the popularity gains and ``[H]`` with
    ``nbr_scale + nbr_offsets[h]`` as the transition gain; every other score as served
    (the current offsets included). Items counted only in other scenes (``elsewhere``) are left out, as
    the scene's catalogue leaves them out when serving. ``E x C`` scores per value."""
    ranks = kernels.RankInputs(hist_item=batch.hist_item, hist_type=batch.hist_type, hist_age=batch.hist_age,
                               scene=batch.scene, exclude=jnp.full((batch.target.shape[0], 1), -1, jnp.int32))
    user, _ = kernels.user_vectors(params, batch.interest, batch.weight, ranks)
    C = params.item_emb.shape[0]
    base = user @ params.item_emb.T + params.item_bias + popularity_prior(params, 0, C)[None, :]
    unit_nbr = params._replace(nbr_scale=jnp.float32(1.0), nbr_offset=jnp.float32(0.0))
    transitions = pair_scores(jnp.zeros_like(base), 0, neighbour_pairs(params, batch.hist_item, batch.scene),
                              unit_nbr)                                                  # [E, C]
    base = base + (params.nbr_scale + params.nbr_offset) * transitions
    index = jnp.broadcast_to(jnp.arange(C, dtype=jnp.int32)[None, :], base.shape)
    # the items a list can show: counted before (every event is counted as a target, so these are the
    # items seen before; the batch's new items would otherwise outrank what was learned), in the scene
    counted = (jnp.max(params.pop, axis=1) > 0)[None, :]
    shown = ((index < n_items) & counted
             & (~elsewhere(params, index, batch.scene) | (index == batch.target[:, None])))
    base = jnp.where(shown, base, kernels.NEG_INF)
    unit = params._replace(copy=jnp.float32(1.0), copy_offset=jnp.float32(0.0))
    repeat = kernels.copy_scores(jnp.zeros_like(base), 0, batch.hist_item, unit)          # [E, C]
    current = base + (params.copy + params.copy_offset) * repeat
    log_pop = jnp.log1p(params.pop)                                                        # [C, P]

    def dcg(scores, mask):
        target = jnp.take_along_axis(scores, batch.target[:, None], axis=1)
        rank = jnp.sum(scores > target, axis=1)
        return jnp.sum(jnp.where(rank < k, 1.0 / jnp.log2(rank + 2.0), 0.0) * mask)

    # only targets counted before can be ranked when serving (an item's first event is in no list); a
    # first event would reward whatever ranks items nobody was shown yet first
    known = batch.mask * (jnp.max(params.pop[batch.target], axis=1) > 0)
    by_copy = jax.lax.map(lambda o: dcg(current + (o - params.copy_offset) * repeat, known), offsets)
    by_pop = jax.lax.map(lambda v: dcg(current + (log_pop @ (v - params.pop_offset))[None, :], known),
                         pop_offsets)
    by_nbr = jax.lax.map(lambda o: dcg(current + (o - params.nbr_offset) * transitions, known), nbr_offsets)
    return by_copy, by_pop, by_nbr


class OffsetChoice:
    """Decayed DCG of each offset of the grid, and the offset it chooses (the current one on ties).

    >>> choice = OffsetChoice((-1.0, 0.0, 1.0), half_life=10.0)
    >>> choice.add(np.array([1.0, 2.0, 3.0]), n=5), choice.add(np.array([4.0, 0.0, 0.0]), n=50)
    (1.0, -1.0)
    """

    def __init__(self, offsets=OFFSETS, half_life: float = 2000.0, current: float = 0.0):
        self.offsets = np.asarray(offsets, np.float32)
        self.half_life = half_life
        self.score = np.zeros(len(self.offsets))
        self.current = float(current)

    def add(self, gains: np.ndarray, n: int) -> float:
        """Fold in the gains of ``n`` more ranked examples; returns the chosen offset."""
        self.score = self.score * 0.5 ** (n / self.half_life) + np.asarray(gains, np.float64)
        best = np.flatnonzero(self.score == self.score.max())
        if not np.any(self.offsets[best] == self.current):
            self.current = float(self.offsets[best[0]])
        return self.current
