"""models/kernels.py against the slow NumPy reference in models/reference.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import kernels, reference
from models.config import EngineConfig
from models.params import init_params

CFG = EngineConfig(dim=8, history=6, scenes=("default", "search", "product"), k=5, initial_capacity=64)


def random_params(cfg, capacity, seed=1):
    """Untrained parameters perturbed everywhere, so every term of the kernel matters."""
    params = init_params(cfg, capacity)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 20))
    return params._replace(**{
        name: value + 0.3 * jax.random.normal(next(keys), value.shape)
        for name, value in params._asdict().items() if name != "item_emb"
    })


def make_batch(rng, B, L, n_items, S):
    hist_item = rng.integers(0, n_items, (B, L)).astype(np.int32)
    empty = rng.integers(0, L + 1, B)              # a prefix of each history is empty
    for b in range(B):
        hist_item[b, : empty[b]] = -1
    hist_type = rng.integers(0, 4, (B, L)).astype(np.int32)
    hist_age = rng.uniform(0, 5 * 86400, (B, L)).astype(np.float32)
    scene = rng.integers(0, S, B).astype(np.int32)
    exclude = np.where(rng.random((B, 3)) < 0.5, rng.integers(0, n_items, (B, 3)), -1).astype(np.int32)
    return kernels.RankInputs(hist_item, hist_type, hist_age, scene, exclude)


@pytest.mark.parametrize("capacity, n_items, chunk", [
    (64, 50, 64), (64, 50, 16),        # one matmul with plain top-k, and the chunked running top-k
    (1024, 900, 1024), (1024, 900, 256),  # the same with the two-stage block top-k (>= k blocks)
])
def test_rank_matches_reference(capacity, n_items, chunk):
    rng = np.random.default_rng(0)
    params = random_params(CFG, capacity)
    B, S = 7, CFG.n_scenes
    ranks = make_batch(rng, B, CFG.history, n_items, S)
    interest = rng.normal(size=(B, S, CFG.dim)).astype(np.float32)
    weight = np.where(rng.random((B, S)) < 0.6, rng.uniform(0.5, 3, (B, S)), 0).astype(np.float32)

    items, scores = kernels.rank(params, interest, weight, ranks, jnp.int32(n_items), k=CFG.k, chunk=chunk)
    for b in range(B):
        user, attn = reference.user_vector(params, interest[b], weight[b], ranks.hist_item[b], ranks.hist_type[b],
                                           ranks.hist_age[b], ranks.scene[b])
        want_items, want_scores = reference.top_k(params, user, n_items, ranks.exclude[b], CFG.k,
                                                  ranks.hist_item[b])
        np.testing.assert_allclose(np.asarray(scores[b]), want_scores, rtol=1e-4, atol=1e-4)
        assert np.asarray(items[b]).tolist() == want_items.tolist()
        assert not set(ranks.exclude[b][ranks.exclude[b] >= 0]) & set(np.asarray(items[b]).tolist())


@pytest.mark.parametrize("shape, block", [((9, 4096), 32), ((5, 640), 16), ((3, 96), 32)])
def test_block_top_k_is_exact(shape, block):
    rng = np.random.default_rng(2)
    scores = rng.normal(size=shape).astype(np.float32)
    scores[0, :] = kernels.NEG_INF                      # nothing rankable
    scores[1, 5:] = kernels.NEG_INF                     # fewer live items than k
    scores[2] = np.sort(scores[2])                      # the best items all in the last block
    top, items = kernels.block_top_k(jnp.asarray(scores), 20, block)
    want_top, want_items = jax.lax.top_k(jnp.asarray(scores), 20)
    np.testing.assert_array_equal(np.asarray(top), np.asarray(want_top))
    live = np.asarray(want_top) > kernels.NEG_INF / 2
    np.testing.assert_array_equal(np.asarray(items)[live], np.asarray(want_items)[live])


def test_fold_matches_sequential_reference():
    rng = np.random.default_rng(1)
    params = random_params(CFG, 64)
    B, S = 4, CFG.n_scenes
    interest = rng.normal(size=(B, S, CFG.dim)).astype(np.float32)
    weight = np.where(rng.random((B, S)) < 0.5, 1.0, 0.0).astype(np.float32)
    interest *= (weight > 0)[..., None]  # a scene without weight has no interest vector
    events = [(int(rng.integers(B)), int(rng.integers(S)), int(rng.integers(50)), int(rng.integers(4)))
              for _ in range(15)]
    slot = np.array([b * S + s for b, s, _, _ in events])
    later = np.array([int((slot[j + 1:] == slot[j]).sum()) for j in range(len(slot))])
    count = np.bincount(slot, minlength=B * S).reshape(B, S)
    pad = 32 - len(events)
    fold = kernels.FoldInputs(
        item=np.array([e[2] for e in events] + [0] * pad, np.int32),
        type=np.array([e[3] for e in events] + [0] * pad, np.int32),
        slot=np.concatenate([slot, np.full(pad, B * S)]).astype(np.int32),
        later=np.concatenate([later, np.zeros(pad)]).astype(np.int32),
        slot_count=count.astype(np.int32))
    got_i, got_w = kernels.fold_interests(params, interest, weight, fold, CFG.interest_decay)
    want_i, want_w = reference.fold_interests(params, interest, weight, events, CFG.interest_decay)
    np.testing.assert_allclose(np.asarray(got_w), want_w, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got_i), want_i, rtol=1e-4, atol=1e-5)


def test_catalogue_padding_and_empty_users_never_leak():
    params = init_params(CFG, 64)
    B = 2
    ranks = kernels.RankInputs(
        hist_item=np.full((B, CFG.history), -1, np.int32), hist_type=np.zeros((B, CFG.history), np.int32),
        hist_age=np.zeros((B, CFG.history), np.float32), scene=np.zeros(B, np.int32),
        exclude=np.array([[0, -1], [-1, -1]], np.int32))
    items, scores = kernels.rank(params, np.zeros((B, CFG.n_scenes, CFG.dim), np.float32),
                                 np.zeros((B, CFG.n_scenes), np.float32), ranks, jnp.int32(3), k=CFG.k, chunk=64)
    items = np.asarray(items)
    assert sorted(items[0][items[0] >= 0].tolist()) == [1, 2]    # 3 items, item 0 excluded
    assert sorted(items[1][items[1] >= 0].tolist()) == [0, 1, 2]
    assert (items[:, 3:] == -1).all() and np.isfinite(np.asarray(scores)).all()
