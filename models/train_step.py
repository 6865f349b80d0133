"""The trainer's optax steps on the next-item loss (``models.train_loss``): the full-softmax step, and
the sampled one that reads and writes only the item rows it used (``sparse_train_step``), so it costs
about the same at 10k and at 100k items. Pure jitted functions of (weights, optimiser state, batch).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from models import kernels
from models.params import COUNTED, Params, unoffset
from models.train_loss import TrainBatch, nll


def counted_part(params: Params) -> dict:
    """The counted fields of ``params`` (``models.params.COUNTED``), as the steps take them."""
    return {name: getattr(params, name) for name in COUNTED}


def _loss(weights: Params, counted: dict, *args) -> jax.Array:
    return nll(weights._replace(**counted), *args)


# the learned gains of the counted features (``TrainConfig.feature_gain`` / ``feature_rate``)
FEATURE_GAINS = ("pop_gain", "nbr_gain", "nbr_scale")


def _scale_features(updates: Params, rate: float) -> Params:
    """``updates`` with the feature gains' steps times ``rate`` (their own learning rate), and none for
    the served offsets, which the trainer chooses by hits (``models.served_offsets``), not by gradient."""
    updates = unoffset(updates)
    if rate == 1.0:
        return updates
    return updates._replace(**{name: getattr(updates, name) * rate for name in FEATURE_GAINS})


@partial(jax.jit, static_argnames=("optimizer", "dropout", "feature_rate"), donate_argnums=(0, 1))
@kernels.exact_matmuls
def train_step(weights: Params, opt_state, counted: dict, batch: TrainBatch, n_items: jax.Array,
               key: jax.Array, *, optimizer: optax.GradientTransformation, dropout: float,
               feature_rate: float = 1.0):
    """One optax step on the full softmax; returns ``(weights, opt_state, loss)``. ``weights`` is
    ``learned(params)`` (what the optimiser updates), ``counted`` the rest (``counted_part``)."""
    loss, grads = jax.value_and_grad(_loss)(weights, counted, batch, n_items, key, dropout)
    updates, opt_state = optimizer.update(grads, opt_state, weights)
    updates = _scale_features(updates, feature_rate)
    return optax.apply_updates(weights, updates), opt_state, loss


ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # optax.adamw's defaults, which the trainer's optimiser uses


@partial(jax.jit, static_argnames=("optimizer", "dropout", "train"), donate_argnums=(0, 1))
@kernels.exact_matmuls
def sparse_train_step(weights: Params, opt_state, counted: dict, batch: TrainBatch, n_items: jax.Array,
                      key: jax.Array, *, optimizer: optax.GradientTransformation, dropout: float, train):
    """One step on the sampled softmax that reads and writes only the item rows it uses; ``train`` is the
    trainer's ``models.training.TrainConfig`` (negatives, learning rate, weight decay, feature rate).

    The rows of the batch (history, targets, the history's transition neighbours, negatives) are
    gathered into a sub-table (neighbour ids remapped to it), the loss is taken on it, and AdamW
    updates those rows' moments and values ("lazy" Adam, as for sparse embeddings elsewhere); the rest
    of the parameters take the usual optax step. The optimiser state keeps optax's layout, so the
    full-softmax step can take over from it and back.
    """
    capacity = weights.item_emb.shape[0]
    params = weights._replace(**counted)
    drawn = jax.random.randint(jax.random.fold_in(key, 1), (train.negatives,), 0, n_items)
    neighbours, _ = kernels.neighbour_pairs(params, batch.hist_item, batch.scene)
    ids = jnp.concatenate([batch.hist_item.ravel(), batch.target, drawn, neighbours.ravel()])
    ids = jnp.where(ids >= 0, ids, capacity)                    # empty slots: one row past the table
    # distinct rows in index order, without a sort (XLA's CPU sort took 1 ms here): mark, count, place
    marked = jnp.zeros(capacity + 1, jnp.int32).at[ids].set(1)
    position = jnp.cumsum(marked) - 1
    rows = jnp.full(ids.shape[0], capacity, jnp.int32).at[position[ids]].set(ids)

    def local(index):
        index = jnp.where(index >= 0, index, capacity)
        return jnp.where((index < capacity) & (marked[index] == 1), position[index], -1).astype(jnp.int32)

    def gather(table, fill):
        return table.at[rows].get(mode="fill", fill_value=fill)

    sub = weights._replace(item_emb=gather(weights.item_emb, 0.0), item_bias=gather(weights.item_bias, 0.0))
    sub_counted = {name: gather(counted[name], 0) for name in COUNTED if name != "nbr_item"}
    sub_counted["nbr_item"] = local(gather(counted["nbr_item"], -1))
    sub_batch = batch._replace(hist_item=local(batch.hist_item), target=local(batch.target))
    loss, grads = jax.value_and_grad(_loss)(sub, sub_counted, sub_batch, n_items, key, dropout, local(drawn))

    # everything but the item table: optax, on a tree whose item leaves are empty
    def no_items(tree):
        return tree._replace(item_emb=tree.item_emb[:0], item_bias=tree.item_bias[:0])

    adam = opt_state[0]
    rest_state = (adam._replace(mu=no_items(adam.mu), nu=no_items(adam.nu)),) + tuple(opt_state[1:])
    updates, rest_state = optimizer.update(no_items(grads), rest_state, no_items(weights))
    updates = _scale_features(updates, train.feature_rate)
    rest = optax.apply_updates(no_items(weights), updates)

    # the item rows in the batch: the same AdamW update, applied to those rows only
    t = rest_state[0].count.astype(jnp.float32)
    new = {}
    for name in ("item_emb", "item_bias"):
        g, value = getattr(grads, name), getattr(sub, name)
        mu = ADAM_B1 * getattr(adam.mu, name).at[rows].get(mode="fill", fill_value=0.0) + (1 - ADAM_B1) * g
        nu = (ADAM_B2 * getattr(adam.nu, name).at[rows].get(mode="fill", fill_value=0.0)
              + (1 - ADAM_B2) * g * g)
        adam_step = (mu / (1 - ADAM_B1 ** t)) / (jnp.sqrt(nu / (1 - ADAM_B2 ** t)) + ADAM_EPS)
        step = adam_step + train.weight_decay * value
        new[name] = (getattr(weights, name).at[rows].set(value - train.learning_rate * step, mode="drop"),
                     getattr(adam.mu, name).at[rows].set(mu, mode="drop"),
                     getattr(adam.nu, name).at[rows].set(nu, mode="drop"))
    weights = rest._replace(**{name: v[0] for name, v in new.items()})
    adam = rest_state[0]._replace(mu=rest_state[0].mu._replace(**{name: v[1] for name, v in new.items()}),
                                  nu=rest_state[0].nu._replace(**{name: v[2] for name, v in new.items()}))
    return weights, (adam,) + tuple(rest_state[1:]), loss
