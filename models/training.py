"""The online trainer: learns item embeddings and attention weights from the stream (``Trainer``, its
``TrainConfig``, the replay buffer).

The trainer sees training examples (the user's history just before an event, the event's item as
the target), counts them (``models.counts``) and minimises the next-item cross-entropy of
``models.train_loss`` with the optax steps of ``models.train_step``. Examples travel from rank workers
to the single trainer as compact binary records (``models.train_examples``); the trainer publishes
parameter snapshots that workers hot-reload. This module also gathers those names:
``from models.training import ...`` gives the loss, the steps and the wire format too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.batching import Examples
from models.config import EngineConfig
from models.counts import TransitionCounts
from models.params import ITEM_INIT_NORM, Params, capacity_for, grow, init_params, learned
from models.served_offsets import NBR_OFFSETS, OFFSETS, POP_BOOSTS, OffsetChoice, offset_gains, pop_vectors
from models.train_examples import (TRAIN_MESSAGE_MAX_BYTES, example_dtype, examples_from_bytes,
                                   examples_to_messages, toy_examples)
from models.train_loss import (SAMPLED_FROM_ROWS_PER_NEGATIVE, TrainBatch, learn_from, nll, sampled,
                               sampled_losses, to_batch)
from models.train_step import (ADAM_B1, ADAM_B2, ADAM_EPS, FEATURE_GAINS, _loss, counted_part,  # noqa: F401
                               sparse_train_step, train_step)

__all__ = ["ADAM_B1", "ADAM_B2", "ADAM_EPS", "FEATURE_GAINS", "SAMPLED_FROM_ROWS_PER_NEGATIVE",
           "TRAIN_MESSAGE_MAX_BYTES", "TrainBatch", "TrainConfig", "Trainer", "TransitionCounts",
           "counted_part", "example_dtype", "examples_from_bytes", "examples_to_messages", "learn_from",
           "nll", "sampled", "sampled_losses", "sparse_train_step", "to_batch", "toy_examples", "train_step"]


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
    # what the served repeat, popularity and transition offsets are chosen from by hits
    # (models.served_offsets): the repeat grid, the boosts of one popularity prior, the transition grid;
    # (): that offset is always 0; all three (): no choice
    repeat_offsets: tuple[float, ...] = OFFSETS
    pop_boosts: tuple[float, ...] = POP_BOOSTS
    nbr_offsets: tuple[float, ...] = NBR_OFFSETS
    offset_half_life: float = 2000.0   # examples, of the decayed hits that choose it
    offset_sample: int = 32            # new examples ranked under every offset per learn call


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
        self.offset_choice = self.pop_choice = self.nbr_choice = None
        if train.repeat_offsets or train.pop_boosts or train.nbr_offsets:
            self.offset_choice = OffsetChoice(train.repeat_offsets or (0.0,), train.offset_half_life)
            self.nbr_choice = OffsetChoice(train.nbr_offsets or (0.0,), train.offset_half_life)
            # the popularity choice is over the rows of ``pop_vectors``, by index
            self.pop_vectors = pop_vectors(params.pop.shape[1], train.pop_boosts)
            self.pop_choice = OffsetChoice(np.arange(len(self.pop_vectors)), train.offset_half_life)
            self._resume_offsets(params)
        self._offset_rng = np.random.default_rng(train.seed + 1)
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
        self._resume_offsets(params)
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
        if self.offset_choice is not None:
            sample = to_batch(toy_examples(cfg, n=1, n_items=1), self.train_cfg.offset_sample)
            offset_gains.lower(self.params, sample, jnp.int32(1), jnp.asarray(self.offset_choice.offsets),
                               jnp.asarray(self.pop_vectors), jnp.asarray(self.nbr_choice.offsets),
                               k=cfg.k).compile()
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
        self._choose_offset(examples, n_items)
        self._pending_at.append(self.counts.observed + np.arange(len(examples)))
        self.counts.observe(np.asarray(examples.hist_item), np.asarray(examples.target),
                            np.asarray(examples.scene), np.asarray(examples.ts))
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

    def _resume_offsets(self, params: Params) -> None:
        """Go on from the served offsets ``params`` carry (a snapshot's, or the initial zeros)."""
        if self.offset_choice is None:
            return
        self.offset_choice.current = float(params.copy_offset)
        self.nbr_choice.current = float(params.nbr_offset)
        match = np.flatnonzero(np.all(self.pop_vectors == np.asarray(params.pop_offset)[None, :], axis=1))
        self.pop_choice.current = float(match[0]) if len(match) else 0.0

    def _choose_offset(self, examples: Examples, n_items: int) -> None:
        """Rank a sample of the new examples under every repeat, popularity and transition offset, before
        they are counted or learned from, and serve the offsets with the best decayed hits so far
        (``models.served_offsets``)."""
        if self.offset_choice is None:
            return
        size = self.train_cfg.offset_sample
        rows = (np.sort(self._offset_rng.choice(len(examples), size, replace=False)) if len(examples) > size
                else np.arange(len(examples)))
        by_copy, by_pop, by_nbr = offset_gains(
            self.params, to_batch(_take(examples, rows), size), jnp.int32(n_items),
            jnp.asarray(self.offset_choice.offsets), jnp.asarray(self.pop_vectors),
            jnp.asarray(self.nbr_choice.offsets), k=self.cfg.k)
        copy_offset = self.offset_choice.add(np.asarray(by_copy), len(rows))
        pop_offset = self.pop_vectors[int(self.pop_choice.add(np.asarray(by_pop), len(rows)))]
        nbr_offset = self.nbr_choice.add(np.asarray(by_nbr), len(rows))
        self.weights = self.weights._replace(copy_offset=jnp.asarray(copy_offset, jnp.float32),
                                             pop_offset=jnp.asarray(pop_offset, jnp.float32),
                                             nbr_offset=jnp.asarray(nbr_offset, jnp.float32))

    def _step(self, examples: Examples, observed_at: np.ndarray, n_items: int) -> jax.Array:
        if self.before_step is not None:
            self.before_step()
        self.key, sub = jax.random.split(self.key)
        step, options = self._step_fn()
        own = self.counts.own(observed_at, self.weights.nbr_gain.shape[1], np.asarray(examples.ts))
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
