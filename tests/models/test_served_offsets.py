"""The served repeat and popularity offsets: ranked by hits on the new examples, chosen by the trainer,
never learned."""
from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import pytest

from models.config import EngineConfig
from models.params import POPULARITY_PRIORS, init_params
from models.served_offsets import OFFSETS, offset_gains
from models.training import TrainConfig, Trainer, to_batch, toy_examples

CFG = EngineConfig(dim=8, history=4, scenes=("default",), k=2, initial_capacity=16)
N_ITEMS = 10


def streams():
    """History: four distinct items of 0-4; items 5-9 have a higher bias. 'repeat': the next item is
    the newest history item (ranked first only with a large enough repeat gain); 'new': one of items
    5-9 (ranked first only once history items are pushed below them)."""
    base = toy_examples(CFG, n=64, n_items=N_ITEMS)
    rng = np.random.default_rng(0)
    hist = np.stack([rng.permutation(5)[:CFG.history] for _ in range(len(base))]).astype(np.int32)
    base = replace(base, hist_item=hist)
    return {"repeat": replace(base, target=base.hist_item[:, -1].copy()),
            "new": replace(base, target=(5 + base.target % 5).astype(np.int32))}


def params(copy: float):
    """Items 0-9 counted once each (equally popular, so the priors rank none above another), 5-9 biased."""
    p = init_params(CFG)
    return p._replace(item_emb=p.item_emb * 0, copy=jnp.float32(copy),
                      item_bias=jnp.zeros_like(p.item_bias).at[5:N_ITEMS].set(1.0),
                      pop=jnp.zeros_like(p.pop).at[:N_ITEMS].set(1.0))


def test_gains_rank_the_target_under_each_offset():
    examples = streams()["repeat"]
    gains, _, _ = offset_gains(params(0.0), to_batch(examples, 64), jnp.int32(N_ITEMS),
                               jnp.asarray([-1.0, 0.0, 4.0]), jnp.zeros((1, POPULARITY_PRIORS)),
                               jnp.asarray([0.0]), k=CFG.k)
    gains = np.asarray(gains)
    # offset 4: the newest item (repeat weight 4 > bias 1) is first for every example: DCG 1 each
    assert gains[2] == pytest.approx(len(examples))
    assert gains[0] == gains[1] == 0.0  # below the five biased items: outside the top 2


@pytest.mark.parametrize("stream, copy, sign", [("repeat", 0.0, 1), ("new", 2.0, -1)])
def test_trainer_serves_the_offset_that_ranks_the_next_item_higher(stream, copy, sign):
    trainer = Trainer(CFG, TrainConfig(batch_size=8, replay_steps=0, learning_rate=1e-2, weight_decay=0.1),
                      params=params(copy))
    for _ in range(3):
        trainer.learn(streams()[stream], n_items=N_ITEMS)
    offset = float(trainer.params.copy_offset)
    assert np.sign(offset) == sign
    # chosen from the grid, and not moved (nor decayed) by the optimiser steps that ran after it
    assert offset in OFFSETS and trainer.steps > 0


def test_no_grid_serves_what_the_loss_learned():
    off = TrainConfig(batch_size=8, replay_steps=0, repeat_offsets=(), pop_boosts=(), nbr_offsets=())
    trainer = Trainer(CFG, off, params=params(0.0))
    trainer.learn(streams()["repeat"], n_items=N_ITEMS)
    assert float(trainer.params.copy_offset) == 0.0
    assert float(trainer.params.pop_offset.max()) == float(trainer.params.pop_offset.min()) == 0.0


def test_trainer_serves_a_popularity_offset_where_the_popular_item_comes_next():
    """Every next item is item 12: never in a history, unbiased, so with the learned popularity gains
    (and the transition gain) at 0 it ranks below the five biased items until a served popularity offset
    lifts its growing count."""
    base = streams()["repeat"]
    examples = replace(base, target=np.full(len(base), 12, np.int32))
    p = params(0.0)._replace(pop_gain=jnp.zeros_like(init_params(CFG).pop_gain), nbr_scale=jnp.float32(0.0))
    frozen = TrainConfig(batch_size=8, replay_steps=0, learning_rate=0.0, repeat_offsets=(), nbr_offsets=())
    trainer = Trainer(CFG, frozen, params=p)
    for _ in range(3):
        trainer.learn(examples, n_items=13)
    assert float(trainer.params.pop_offset.max()) > 0
    # chosen, not learned: the loss's gains stay where they were
    assert float(jnp.abs(trainer.params.pop_gain).max()) == 0.0 and float(trainer.params.copy_offset) == 0.0


def test_trainer_serves_a_transition_offset_where_counted_successors_come_next():
    """The next item is the counted successor of the newest history item (``10 + newest``), never in the
    history; with the learned transition gain at 0 it ranks below the five biased items until the
    served transition offset lifts it."""
    base = streams()["repeat"]
    examples = replace(base, target=(10 + base.hist_item[:, -1]).astype(np.int32))
    p = params(0.0)._replace(nbr_scale=jnp.float32(0.0))
    frozen = TrainConfig(batch_size=8, replay_steps=0, learning_rate=0.0, repeat_offsets=(), pop_boosts=())
    trainer = Trainer(CFG, frozen, params=p)
    for _ in range(3):
        trainer.learn(examples, n_items=15)
    assert float(trainer.params.nbr_offset) > 0
    assert float(trainer.params.nbr_scale) == 0.0 and float(trainer.params.copy_offset) == 0.0
