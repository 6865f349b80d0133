"""models/kernels.py against the slow NumPy reference in models/reference.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import kernels, reference
from models.config import EngineConfig
from models.params import COUNTED, init_params

CFG = EngineConfig(dim=8, history=6, scenes=("default", "search", "product"), k=5, initial_capacity=64)


def random_params(cfg, capacity, seed=1):
    """Untrained parameters perturbed everywhere, and random counts (popularity, scenes of items,
    transition neighbours), so every term of the kernel matters."""
    params = init_params(cfg, capacity)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 20))
    params = params._replace(**{
        name: value + 0.3 * jax.random.normal(next(keys), value.shape)
        for name, value in params._asdict().items() if name != "item_emb" and name not in COUNTED
    })
    rng = np.random.default_rng(seed)
    C, tables, M = params.nbr_item.shape
    successors = rng.integers(0, capacity, (C, tables, M)).astype(np.int32)
    successors[rng.random((C, tables, M)) < 0.3] = -1                 # rows that are not full
    return params._replace(
        pop=jnp.asarray(rng.exponential(3.0, params.pop.shape), jnp.float32),
        nbr_item=jnp.asarray(successors),
        nbr_weight=jnp.asarray(rng.random((C, tables, M)) * 0.3, jnp.float32),
        item_scene_bits=jnp.asarray(rng.integers(0, 1 << cfg.n_scenes, C), jnp.uint32))


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
    (64, 50, 64), (64, 50, 16),        # a table smaller than k blocks: one matmul with plain top-k
    (1024, 900, 1024), (1024, 900, 256),  # the same with the running block top-k (>= k blocks)
    (1000, 990, 256),                     # chunks that do not divide the table: the last one overlaps
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
        user, attn = reference.user_vector(params, interest[b], weight[b], ranks.hist_item[b],
                                           ranks.hist_type[b], ranks.hist_age[b], ranks.scene[b])
        want_items, want_scores = reference.top_k(params, user, n_items, ranks.exclude[b], CFG.k,
                                                  ranks.hist_item[b], ranks.scene[b])
        np.testing.assert_allclose(np.asarray(scores[b]), want_scores, rtol=1e-4, atol=1e-4)
        assert np.asarray(items[b]).tolist() == want_items.tolist()
        assert not set(ranks.exclude[b][ranks.exclude[b] >= 0]) & set(np.asarray(items[b]).tolist())


@pytest.mark.parametrize("capacity, chunk, tail, catalogue", [
    (1024, 256, None, 1024), (1000, 256, None, 1000), (1024, 64, None, 1024), (640, 640, None, 640),
    (96, 4096, None, 96),
    # the last partial chunk in finer steps: within the table, past a table that is not a whole number
    # of chunks, and a tail step that overlaps its predecessor at the table's end
    (1024, 256, 64, 800), (1000, 256, 64, 780), (800, 256, 64, 800),
    (1024, 256, 64, 1000),  # the rest past the whole chunks is too long for tail steps: one more chunk
])
def test_running_block_top_k_is_exact(capacity, chunk, tail, catalogue):
    """Against one ``lax.top_k`` over the full score matrix: chunks that do or do not divide the
    table, a chunk smaller than k blocks (rounded up), a single chunk, a table too small for
    blocks, the catalogue's last partial chunk scored in tail steps; per-user catalogue sizes."""
    rng = np.random.default_rng(2)
    k, B = CFG.k, 6  # 5: a 256-item chunk holds 8 blocks, enough for the running block top-k
    params = random_params(CFG, capacity)
    # the best items come last
    params = params._replace(item_bias=params.item_bias.at[catalogue - 40:catalogue].add(50.0))
    user = jnp.asarray(rng.normal(size=(B, CFG.dim)).astype(np.float32))
    # per user: most of the catalogue, nothing rankable, fewer live items than k, all of it, all but
    # the last 37 (3 boosted items left), half of it
    n_items = jnp.asarray([catalogue - 3, 0, 3, catalogue, catalogue - 37, catalogue // 2], jnp.int32)
    hist = jnp.asarray(rng.integers(-1, catalogue, (B, CFG.history)).astype(np.int32))
    exclude = jnp.asarray(rng.integers(-1, catalogue, (B, 4)).astype(np.int32))
    top_k = jax.jit(kernels.top_k_items, static_argnames=("k", "chunk", "tail"))
    items, top = top_k(user, None, hist, params, n_items, exclude, k=k, chunk=chunk, tail=tail)
    full = kernels._chunk_scores(user, params, hist, n_items, exclude, 0, 0, capacity)
    want_top, want_items = jax.lax.top_k(full, k)
    live = np.asarray(want_top) > kernels.NEG_INF / 2
    # matmul shapes differ
    np.testing.assert_allclose(np.asarray(top)[live], np.asarray(want_top)[live], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(items)[live], np.asarray(want_items)[live])
    assert (np.asarray(items)[~live] == -1).all()
    assert live[1].sum() == 0 and live[2].sum() == 3


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
                                 np.zeros((B, CFG.n_scenes), np.float32), ranks, jnp.int32(3), k=CFG.k,
                                 chunk=64)
    items = np.asarray(items)
    assert sorted(items[0][items[0] >= 0].tolist()) == [1, 2]    # 3 items, item 0 excluded
    assert sorted(items[1][items[1] >= 0].tolist()) == [0, 1, 2]
    assert (items[:, 3:] == -1).all() and np.isfinite(np.asarray(scores)).all()


@pytest.mark.parametrize("capacity, n_items, chunk", [(64, 50, 64), (1024, 900, 256)])
def test_scene_catalogues_rank_only_their_items(capacity, n_items, chunk):
    """With an item scene bitmask, each row's list equals the unmasked ranking with every item outside
    its scene's catalogue excluded: hidden items (no bit) never come back, nor do other scenes' items."""
    rng = np.random.default_rng(3)
    params = random_params(CFG, capacity)
    B, S = 9, CFG.n_scenes
    ranks = make_batch(rng, B, CFG.history, n_items, S)._replace(exclude=np.full((B, 1), -1, np.int32))
    interest = rng.normal(size=(B, S, CFG.dim)).astype(np.float32)
    weight = np.ones((B, S), np.float32)
    item_scenes = rng.integers(0, 1 << S, capacity).astype(np.uint32)   # 0: hidden everywhere
    items, scores = kernels.rank(params, interest, weight, ranks, jnp.int32(n_items), item_scenes, k=CFG.k,
                                 chunk=chunk)
    items = np.asarray(items)
    for b in range(B):
        outside = np.flatnonzero((item_scenes[:n_items] >> ranks.scene[b]) & 1 == 0).astype(np.int32)
        row = ranks._replace(**{f: getattr(ranks, f)[b:b + 1] for f in ("hist_item", "hist_type", "hist_age",
                                                                        "scene")}, exclude=outside[None])
        want, _ = kernels.rank(params, interest[b:b + 1], weight[b:b + 1], row, jnp.int32(n_items), k=CFG.k,
                               chunk=chunk)
        assert items[b].tolist() == np.asarray(want)[0].tolist()
        shown = items[b][items[b] >= 0]
        assert ((item_scenes[shown] >> ranks.scene[b]) & 1 == 1).all()
