"""Learning item embeddings and attention weights from the stream: loss, optax step, replay buffer.

The trainer sees training examples (the user's history just before an event, the event's item as
the target) and minimises a next-item cross-entropy through the same ``kernels.user_vectors`` the
rank path uses, so what is learned is exactly what is served. The softmax is *sampled* once the item
table is large enough (``sampled``): its normaliser is the target, the user's own history items
(exact) and uniform negatives weighted to stand for the rest of the catalogue; the step then reads
and writes only the item rows it used (``sparse_train_step``), so it costs about the same at 10k
and at 100k items.
Examples travel from rank workers to the single trainer as compact binary records
(``examples_to_messages``); the trainer publishes parameter snapshots that workers hot-reload.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import kernels
from models.batching import Examples
from models.config import EngineConfig
from models.counts import TransitionCounts
from models.params import (COUNTED, ITEM_INIT_NORM, NEIGHBOUR_WINDOW, POPULARITY_HALF_LIVES, Params,
                           capacity_for, grow, init_params, learned)


class TrainBatch(NamedTuple):
    hist_item: jax.Array   # [E, L]
    hist_type: jax.Array   # [E, L]
    hist_age: jax.Array    # [E, L]
    interest: jax.Array    # [E, S, d]
    weight: jax.Array      # [E, S]
    scene: jax.Array       # [E]
    target: jax.Array      # [E]
    mask: jax.Array        # [E] 1 for real examples, 0 for padding
    # what the example itself added to the counts it is trained against (``TransitionCounts``), taken
    # out in the loss so that a counted example is not its own evidence (zeros: not counted):
    own_pop: jax.Array     # [E, P] its decayed share of its target's popularity, per half-life
    own_nbr: jax.Array     # [E, W] the transition count it added from its d-th newest source (1/d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and regularisation of the trainer (not part of the served model's shape)."""

    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    history_dropout: float = 0.2   # drop history entries at random: cheap augmentation against overfitting
    replay_steps: int = 2          # extra steps on replayed past examples per batch of new ones
    # uniform negatives of the sampled softmax (see ``sampled``); 0 = always full
    negatives: int = 1024
    buffer_size: int = 65536
    seed: int = 0
    transition_window: int = 3     # history items before an event whose transition to it is counted
    init_norm: float | None = None  # norm of fresh item vectors (None: models.params.ITEM_INIT_NORM)
    # fresh trainer: times the untrained gains of the counted features (0: all learned)
    feature_gain: float = 0.5
    # learning rate of those gains (FEATURE_GAINS), times learning_rate (0: fixed)
    feature_rate: float = 1.0


SAMPLED_FROM_ROWS_PER_NEGATIVE = 8


def sampled(negatives: int, rows: int) -> bool:
    """Whether a table of ``rows`` items trains on the sampled softmax: only from 8 rows per negative.
    Below that the full softmax is about as cheap, and it is exact (measured while choosing this:
    with 1024 negatives, 3.9 ms sampled against 2.3 ms full at 2048 rows; the train-step rows of
    ``python -m tests.benchmarks.bench_kernel`` give both steps at 10k and 100k items)."""
    return negatives > 0 and rows >= SAMPLED_FROM_ROWS_PER_NEGATIVE * negatives


def nll(params: Params, batch: TrainBatch, n_items: jax.Array, key: jax.Array, dropout: float,
        drawn: jax.Array | None = None) -> jax.Array:
    """Mean next-item cross-entropy over the real examples of ``batch``: the full softmax over the
    item table, or the sampled one (``sampled_losses``) over ``drawn`` negatives when given. Scores are
    the served ones: embeddings, popularity prior, repeat score and the history's transition neighbours
    (from the whole history: dropout only thins what the attention sees).

    The counted features (popularity, repeat and transition scores) learn only from examples whose
    target was counted before (``known``): an item's first event can never be ranked (nothing unseen
    is), and on a log where half the events are an item's first (Amazon reviews) those examples
    taught the gains that unpopular, unconnected items come next. The embeddings learn from all."""
    hist_item = batch.hist_item
    pairs = kernels.neighbour_pairs(params, hist_item, batch.scene, (batch.target, batch.own_nbr))
    # the target's popularity prior without the example's own count
    pop = params.pop[batch.target]
    before = jnp.maximum(pop - batch.own_pop, 0.0)
    held_out = (jnp.log1p(before) - jnp.log1p(pop)) @ params.pop_gain                                  # [E]
    known = jnp.max(before, axis=1) > 1e-12
    if dropout > 0:
        keep = jax.random.bernoulli(key, 1.0 - dropout, hist_item.shape)
        hist_item = jnp.where(keep, hist_item, -1)
    ranks = kernels.RankInputs(hist_item=hist_item, hist_type=batch.hist_type, hist_age=batch.hist_age,
                               scene=batch.scene, exclude=jnp.full((hist_item.shape[0], 1), -1, jnp.int32))
    user, _ = kernels.user_vectors(params, jax.lax.stop_gradient(batch.interest), batch.weight, ranks)
    if drawn is not None:
        losses = sampled_losses(params, user, hist_item, batch.target, drawn, n_items, pairs, held_out, known)
    else:
        C = params.item_emb.shape[0]
        E = hist_item.shape[0]
        features = jnp.broadcast_to(kernels.popularity_prior(params, 0, C)[None, :], (E, C))
        features = kernels.pair_scores(kernels.copy_scores(features, 0, hist_item, params), 0, pairs, params)
        features = features.at[jnp.arange(E), batch.target].add(held_out)
        logits = user @ params.item_emb.T + params.item_bias + learn_from(known, features)
        logits = jnp.where(jnp.arange(logits.shape[1])[None, :] < n_items, logits, kernels.NEG_INF)
        picked = jnp.take_along_axis(logits, batch.target[:, None], axis=1)[:, 0]
        losses = jax.nn.logsumexp(logits, axis=1) - picked
    return jnp.sum(losses * batch.mask) / jnp.maximum(jnp.sum(batch.mask), 1.0)


def learn_from(rows: jax.Array | None, x: jax.Array) -> jax.Array:
    """``x`` ([E, ...]) with its gradient kept only in the ``rows`` ([E] bool) given (all when None)."""
    if rows is None:
        return x
    return jnp.where(rows.reshape(rows.shape + (1,) * (x.ndim - 1)), x, jax.lax.stop_gradient(x))


def sampled_losses(params: Params, user: jax.Array, hist_item: jax.Array, target: jax.Array, drawn: jax.Array,
                   n_items: jax.Array, pairs: tuple[jax.Array, jax.Array] | None = None,
                   target_extra: jax.Array | None = None, known: jax.Array | None = None) -> jax.Array:
    """Per-example ``log Z - score(target)`` with ``Z`` estimated from a sample of the catalogue.

    ``Z`` = the terms of the target, of each distinct history item and of each distinct transition
    neighbour (``pairs``, see ``kernels.neighbour_pairs``), all exact (they carry the repeat and
    transition scores, so those gains learn as under the full softmax) + ``negatives`` items drawn
    uniformly from the catalogue (``drawn``, shared by the batch), each standing for
    ``n_items / negatives`` items. Draws that hit an exact term are dropped, which keeps the estimate of
    the rest's sum unbiased. Item ids may be rows of a gathered sub-table (``sparse_train_step``);
    ``n_items`` is always the catalogue's size. ``target_extra`` ([E], optional) is added to the
    target's score (``nll``: its popularity prior without the example's own count); ``known`` ([E] bool,
    optional): the examples whose feature terms (popularity, repeat, transitions) pass gradients.
    """
    E, L = hist_item.shape
    if pairs is None:
        pairs = (jnp.full((E, 1), -1, jnp.int32), jnp.zeros((E, 1), jnp.float32))
    # each distinct item of the history and the neighbours once, with its repeat weight (summed over its
    # history slots) and transition evidence: a sort of each row's few hundred ids, nothing catalogue-sized
    copy = kernels.copy_weights(params, hist_item)                                       # [E, L]
    P = pairs[0].shape[1]
    slots, (repeat, evidence) = kernels.merge_rows(
        jnp.concatenate([hist_item, pairs[0]], axis=1),
        jnp.concatenate([copy, jnp.zeros((E, P), copy.dtype)], axis=1),
        jnp.concatenate([jnp.zeros((E, L), copy.dtype), pairs[1]], axis=1))
    extra = repeat + params.nbr_scale * jnp.log1p(evidence)
    is_target = slots == target[:, None]
    first = (slots >= 0) & ~is_target

    def score(items):
        return jnp.einsum("ed,e...d->e...", user, params.item_emb[items]) + params.item_bias[items]

    target_extras = jnp.sum(jnp.where(is_target, extra, 0.0), axis=1)
    target_features = kernels.popularity_prior_of(params, target) + target_extras
    if target_extra is not None:
        target_features = target_features + target_extra
    target_score = score(target) + learn_from(known, target_features)
    slot_features = kernels.popularity_prior_of(params, jnp.maximum(slots, 0)) + extra
    slot_score = jnp.where(first, score(jnp.maximum(slots, 0)) + learn_from(known, slot_features),
                           kernels.NEG_INF)
    # draws that are an exact term (a binary search per draw: merged rows are sorted but for the copies
    # dropped to -1, which a running max fills with the id before them), or the target
    ordered = jax.lax.cummax(slots, axis=1)
    found = jax.vmap(lambda row: jnp.searchsorted(row, drawn))(ordered)
    hit = (jnp.take_along_axis(ordered, jnp.minimum(found, slots.shape[1] - 1), axis=1) == drawn[None, :])
    hit = hit | (drawn[None, :] == target[:, None])
    weight = jnp.log(n_items.astype(jnp.float32) / drawn.shape[0])
    drawn_prior = jnp.broadcast_to(kernels.popularity_prior_of(params, drawn)[None, :], (E, drawn.shape[0]))
    drawn_score = (user @ params.item_emb[drawn].T + params.item_bias[drawn] + learn_from(known, drawn_prior)
                   + weight)
    drawn_score = jnp.where(hit, kernels.NEG_INF, drawn_score)
    log_z = jax.nn.logsumexp(jnp.concatenate([target_score[:, None], slot_score, drawn_score], axis=1),
                             axis=1)
    return log_z - target_score


def counted_part(params: Params) -> dict:
    """The counted fields of ``params`` (``models.params.COUNTED``), as the steps take them."""
    return {name: getattr(params, name) for name in COUNTED}


def _loss(weights: Params, counted: dict, *args) -> jax.Array:
    return nll(weights._replace(**counted), *args)


# the learned gains of the counted features (``TrainConfig.feature_gain`` / ``feature_rate``)
FEATURE_GAINS = ("pop_gain", "nbr_gain", "nbr_scale")


def _scale_features(updates: Params, rate: float) -> Params:
    """``updates`` with the feature gains' steps times ``rate`` (their own learning rate)."""
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
                      key: jax.Array, *, optimizer: optax.GradientTransformation, dropout: float,
                      train: TrainConfig):
    """One step on the sampled softmax that reads and writes only the item rows it uses.

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


def _pad_items(tree, capacity: int, rows_fn):
    """Pad the item rows of a Params-shaped tree (parameters or optimiser moments)."""
    if isinstance(tree, Params):
        have = tree.item_emb.shape[0]
        if capacity <= have:
            return tree
        emb_rows, bias_rows = rows_fn(have, capacity, tree.item_emb.shape[1])
        return tree._replace(item_emb=jnp.concatenate([tree.item_emb, emb_rows]),
                             item_bias=jnp.concatenate([tree.item_bias, bias_rows]))
    if isinstance(tree, tuple):
        parts = [_pad_items(t, capacity, rows_fn) for t in tree]
        return type(tree)(*parts) if hasattr(tree, "_fields") else tuple(parts)
    return tree


def _zeros(start, stop, dim):
    return jnp.zeros((stop - start, dim), jnp.float32), jnp.zeros((stop - start,), jnp.float32)


class Trainer:
    """Online trainer: ``learn(examples, n_items)`` counts the examples' transitions and popularity and
    runs optax steps; ``params`` is what to publish (learned weights + counts).

    >>> cfg = EngineConfig(dim=8, history=4, scenes=("default",), k=2, initial_capacity=16)
    >>> trainer = Trainer(cfg, TrainConfig(batch_size=8, history_dropout=0.0, replay_steps=0))
    >>> ex = toy_examples(cfg, n=64, n_items=10)
    >>> first = trainer.learn(ex, n_items=10); later = [trainer.learn(ex, n_items=10) for _ in range(15)][-1]
    >>> bool(later < first)
    True
    """

    def __init__(self, cfg: EngineConfig, train: TrainConfig = TrainConfig(), params: Params | None = None):
        self.cfg, self.train_cfg = cfg, train
        self.counts = TransitionCounts(train.transition_window)
        fresh = params is None
        params = params if params is not None else init_params(cfg)
        if fresh and train.init_norm is not None:
            params = params._replace(item_emb=params.item_emb * (train.init_norm / ITEM_INIT_NORM))
        if fresh and train.feature_gain != 1.0:  # how much the counts speak before anything is learned
            params = params._replace(nbr_scale=params.nbr_scale * train.feature_gain,
                                     pop_gain=params.pop_gain * train.feature_gain)
        self.counts.resume(params)
        self.weights = learned(params)
        self.optimizer = optax.adamw(train.learning_rate, weight_decay=train.weight_decay)
        self.opt_state = self.optimizer.init(self.weights)
        self.key = jax.random.PRNGKey(train.seed)
        self.rng = np.random.default_rng(train.seed)
        self.steps = 0
        self.last_loss = float("nan")
        # Called before every optimiser step; a trainer sharing cores with ranking waits there for a gap
        self.before_step: Callable[[], object] | None = None
        self.buffer: Examples | None = None
        self._pending: list[Examples] = []
        self._pending_at: list[np.ndarray] = []   # each pending example's place in the counts (``own``)
        self._buffer_at: np.ndarray | None = None
        self._pending_n = 0
        self._buffer_len = 0
        self._buffer_pos = 0

    @property
    def params(self) -> Params:
        """The served parameters: the learned weights with the current counts."""
        return self.weights._replace(**self.counts.arrays(self.weights.item_emb.shape[0]))

    @params.setter
    def params(self, params: Params) -> None:
        """Serve (and go on learning from) ``params``: its weights, and its counts resumed."""
        self.counts = TransitionCounts(self.train_cfg.transition_window)
        self.counts.resume(params)
        self.weights = learned(params)
        # the examples queued or remembered so far are not in these counts
        self._pending_at = [np.full(len(at), -1, np.int64) for at in self._pending_at]
        if self._buffer_at is not None:
            self._buffer_at[:] = -1

    def warmup(self) -> None:
        """Compile the step ahead of the first examples (kept in the persistent cache when enabled)."""
        cfg, size = self.cfg, self.train_cfg.batch_size
        batch = to_batch(toy_examples(cfg, n=1, n_items=1), size)
        step, options = self._step_fn()
        step.lower(self.weights, self.opt_state, counted_part(self.params), batch, jnp.int32(1), self.key,
                   **options).compile()
        # the per-step key split (and its unpacking) compile too; key unchanged
        _, _ = jax.random.split(self.key)

    def ensure_capacity(self, n_items: int) -> None:
        capacity = capacity_for(n_items, self.cfg.initial_capacity)
        have = self.weights.item_emb.shape[0]
        if capacity > have:
            grown = grow(self.params, capacity, self.cfg.seed)
            if self.train_cfg.init_norm is not None:
                grown = grown._replace(item_emb=grown.item_emb.at[have:].multiply(
                    self.train_cfg.init_norm / ITEM_INIT_NORM))
            self.weights = learned(grown)
            self.counts.ensure(capacity)
            self.opt_state = _pad_items(self.opt_state, capacity, _zeros)

    def learn(self, examples: Examples, n_items: int) -> float:
        """Count ``examples`` and queue them; every full batch of ``batch_size`` gets a step, plus
        ``replay_steps`` on past examples. Returns the mean loss of the steps taken (the previous loss if
        none ran)."""
        if len(examples) == 0:
            return self.last_loss
        self.ensure_capacity(max(n_items, int(examples.target.max()) + 1))
        self._pending_at.append(self.counts.observed + np.arange(len(examples)))
        self.counts.observe(np.asarray(examples.hist_item), np.asarray(examples.target),
                            np.asarray(examples.scene))
        self._pending.append(examples)
        self._pending_n += len(examples)
        size = self.train_cfg.batch_size
        if self._pending_n < size:
            return self.last_loss
        queued, queued_at = _concat(self._pending), np.concatenate(self._pending_at)
        full = len(queued) - len(queued) % size
        self._pending = [_take(queued, np.arange(full, len(queued)))] if full < len(queued) else []
        self._pending_at = [queued_at[full:]] if full < len(queued) else []
        self._pending_n = len(queued) - full
        losses = []
        for start in range(0, full, size):
            rows = np.arange(start, start + size)
            losses.append(self._step(_take(queued, rows), queued_at[rows], n_items))
            self._remember(_take(queued, rows), queued_at[rows])
            for _ in range(self.train_cfg.replay_steps):
                replay = self.rng.integers(0, self._buffer_len, size)
                losses.append(self._step(_take(self.buffer, replay), self._buffer_at[replay], n_items))
        self.last_loss = float(np.mean(losses))
        return self.last_loss

    def _step(self, examples: Examples, observed_at: np.ndarray, n_items: int) -> jax.Array:
        if self.before_step is not None:
            self.before_step()
        self.key, sub = jax.random.split(self.key)
        step, options = self._step_fn()
        own = self.counts.own(observed_at, self.weights.nbr_gain.shape[1])
        batch = to_batch(examples, self.train_cfg.batch_size, *own)
        counted = counted_part(self.params)
        self.weights, self.opt_state, loss = step(self.weights, self.opt_state, counted, batch,
                                                  jnp.int32(n_items), sub, **options)
        self.steps += 1
        return loss

    def _step_fn(self):
        """The step for the table's current size: sampled and row-sparse once it is large enough."""
        options = {"optimizer": self.optimizer, "dropout": self.train_cfg.history_dropout}
        if sampled(self.train_cfg.negatives, self.weights.item_emb.shape[0]):
            return sparse_train_step, {**options, "train": self.train_cfg}
        return train_step, {**options, "feature_rate": self.train_cfg.feature_rate}

    def _remember(self, examples: Examples, observed_at: np.ndarray) -> None:
        cap = self.train_cfg.buffer_size
        if cap <= 0:
            return
        if self.buffer is None:  # allocated on first use, shaped like the examples
            self.buffer = Examples(**{f: np.zeros((cap,) + getattr(examples, f).shape[1:],
                                                  getattr(examples, f).dtype)
                                      for f in Examples.__dataclass_fields__})
            self._buffer_at = np.zeros(cap, np.int64)
        n = min(len(examples), cap)
        where = (self._buffer_pos + np.arange(n)) % cap
        self._buffer_at[where] = observed_at[-n:]
        for f in Examples.__dataclass_fields__:
            getattr(self.buffer, f)[where] = getattr(examples, f)[-n:]
        self._buffer_pos = (self._buffer_pos + n) % cap
        self._buffer_len = min(self._buffer_len + n, cap)


def _concat(parts: list[Examples]) -> Examples:
    if len(parts) == 1:
        return parts[0]
    return Examples(**{f: np.concatenate([getattr(p, f) for p in parts])
                       for f in Examples.__dataclass_fields__})


def _take(examples: Examples, index: np.ndarray) -> Examples:
    return Examples(**{f: getattr(examples, f)[index] for f in Examples.__dataclass_fields__})


def to_batch(examples: Examples, size: int, own_pop: np.ndarray | None = None,
             own_nbr: np.ndarray | None = None) -> TrainBatch:
    """Pad examples to exactly ``size`` rows (mask 0 for padding) so the step compiles once. ``own_*``:
    what each example added to the counts (``TransitionCounts.own``); None: not counted (zeros)."""
    from models.batching import pad

    n = len(examples)
    if own_pop is None:
        own_pop = np.zeros((n, len(POPULARITY_HALF_LIVES)), np.float32)
    if own_nbr is None:
        own_nbr = np.zeros((n, NEIGHBOUR_WINDOW), np.float32)
    return TrainBatch(
        hist_item=pad(examples.hist_item.astype(np.int32), size, -1),
        hist_type=pad(examples.hist_type.astype(np.int32), size, 0),
        hist_age=pad(examples.hist_age.astype(np.float32), size, 0.0),
        interest=pad(examples.interest.astype(np.float32), size, 0.0),
        weight=pad(examples.weight.astype(np.float32), size, 0.0),
        scene=pad(examples.scene.astype(np.int32), size, 0),
        target=pad(examples.target.astype(np.int32), size, 0),
        mask=pad(np.ones(n, np.float32), size, 0.0),
        own_pop=pad(np.asarray(own_pop, np.float32), size, 0.0),
        own_nbr=pad(np.asarray(own_nbr, np.float32), size, 0.0))


# ---- the wire format of training examples (rank workers → train topic → trainer) -----------------

def example_dtype(cfg: EngineConfig) -> np.dtype:
    L, S, d = cfg.history, cfg.n_scenes, cfg.dim
    return np.dtype([("hist_item", "<i4", (L,)), ("hist_type", "i1", (L,)), ("hist_age", "<f4", (L,)),
                     ("interest", "<f2", (S, d)), ("weight", "<f4", (S,)), ("scene", "i1"), ("target", "<i4"),
                     ("type", "i1")])


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
                    type=np.zeros(n, np.int8))
