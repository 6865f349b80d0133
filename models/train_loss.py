"""The next-item loss the trainer minimises: a cross-entropy over the full item table, or a sampled one.

Scores are the served ones (``kernels.user_vectors``, the popularity prior, repeat and transition
scores), so what is learned is exactly what is served. The softmax is *sampled* once the item table is
large enough (``sampled``): its normaliser is the target, the user's own history items (exact) and
uniform negatives weighted to stand for the rest of the catalogue. Pure JAX on a padded ``TrainBatch``
(``to_batch``); the optimiser steps that take its gradient are ``models.train_step``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models import kernels
from models.batching import Examples
from models.params import NEIGHBOUR_WINDOW, POPULARITY_PRIORS, Params, unoffset


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


def to_batch(examples: Examples, size: int, own_pop: np.ndarray | None = None,
             own_nbr: np.ndarray | None = None) -> TrainBatch:
    """Pad examples to exactly ``size`` rows (mask 0 for padding) so the step compiles once. ``own_*``:
    what each example added to the counts (``TransitionCounts.own``); None: not counted (zeros)."""
    from models.batching import pad

    n = len(examples)
    if own_pop is None:
        own_pop = np.zeros((n, POPULARITY_PRIORS), np.float32)
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


SAMPLED_FROM_ROWS_PER_NEGATIVE = 8


def sampled(negatives: int, rows: int) -> bool:
    """Whether a table of ``rows`` items trains on the sampled softmax: only from 8 rows per negative.
    Below that the full softmax is about as cheap, and it is exact (measured while choosing this:
    with 1024 negatives, 3.9 ms sampled against 2.3 ms full at 2048 rows; the train-step rows of
    ``python -m tests.benchmarks.bench_kernel`` give both steps at 10k and 100k items).

    >>> sampled(1024, 4096), sampled(1024, 8192), sampled(0, 10**6)
    (False, True, False)
    """
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
    taught the gains that unpopular, unconnected items come next. The embeddings learn from all.
    The served offsets (``copy_offset``, ``pop_offset``, ``nbr_offset``) are left out: the loss learns
    ``copy``, ``pop_gain`` and ``nbr_scale`` as if unoffset."""
    params = unoffset(params)
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
