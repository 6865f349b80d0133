"""The served repeat offset, chosen by the hits it would have given.

The next-item loss learns the repeat gain ``copy`` as well as it learns anything, but a likelihood is
not a ranking: on repeat-heavy logs (Tmall, YooChoose) it drove ``copy`` to about zero, because the
attention already puts the history's probability mass in the right place on average, while the lists
lost the recency order that makes "buy again" the first entry. So the scorer adds ``copy_offset`` to
``copy`` when serving, and the trainer picks it from a fixed grid (``OFFSETS``): before learning from
new events it ranks a sample of them under every offset, and keeps the offset with the largest
exponentially decayed DCG@k of the true next item. Wide offsets stand for "history first" (+16) and
"history last" (-16, as good as excluding seen items); 0 serves what the loss learned.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from models import kernels
from models.counted_scores import neighbour_pairs, pair_scores, popularity_prior
from models.params import Params
from models.train_loss import TrainBatch

OFFSETS = (-16.0, -8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


@partial(jax.jit, static_argnames=("k",))
@kernels.exact_matmuls
def offset_gains(params: Params, batch: TrainBatch, n_items: jax.Array, offsets: jax.Array,
                 k: int) -> jax.Array:
    """[G] summed DCG@``k`` of each example's target (``batch.mask`` rows) over the whole catalogue, with
    ``copy + offsets[g]`` as the repeat gain. The other scores are the served ones; ``E x C`` scores."""
    ranks = kernels.RankInputs(hist_item=batch.hist_item, hist_type=batch.hist_type, hist_age=batch.hist_age,
                               scene=batch.scene, exclude=jnp.full((batch.target.shape[0], 1), -1, jnp.int32))
    user, _ = kernels.user_vectors(params, batch.interest, batch.weight, ranks)
    C = params.item_emb.shape[0]
    base = user @ params.item_emb.T + params.item_bias + popularity_prior(params, 0, C)[None, :]
    base = pair_scores(base, 0, neighbour_pairs(params, batch.hist_item, batch.scene), params)
    base = jnp.where(jnp.arange(C)[None, :] < n_items, base, kernels.NEG_INF)
    unit = kernels.copy_weights(params._replace(copy=jnp.float32(1.0), copy_offset=jnp.float32(0.0)),
                                batch.hist_item)
    rows = jnp.broadcast_to(jnp.arange(batch.hist_item.shape[0])[:, None], batch.hist_item.shape)
    slots = jnp.where(batch.hist_item >= 0, batch.hist_item, C)

    def gain(offset):
        scores = base.at[rows, slots].add((params.copy + offset) * unit, mode="drop")
        target = jnp.take_along_axis(scores, batch.target[:, None], axis=1)
        rank = jnp.sum(scores > target, axis=1)
        return jnp.sum(jnp.where(rank < k, 1.0 / jnp.log2(rank + 2.0), 0.0) * batch.mask)

    return jax.lax.map(gain, offsets)


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
