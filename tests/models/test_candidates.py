"""models/candidates.py: the candidate stage against the exact scan (kernels.rank), masks included."""
import jax.numpy as jnp
import numpy as np

from models import kernels
from models.candidates import CandidateConfig, CandidateRanker, rerank
from models.config import EngineConfig
from models.params import init_params

CFG = EngineConfig(dim=16, history=6, scenes=("default", "search"), k=10, initial_capacity=4096)


def synthetic(n_items=3000, users=24, seed=5, clusters=40):
    """Parameters with every score term in play (clustered item vectors, biases, popularity, counted
    neighbours) and users with random histories: ``(params, interest, weight, ranks)``."""
    rng = np.random.default_rng(seed)
    params = init_params(CFG)
    C, d = params.item_emb.shape
    centres = rng.normal(size=(clusters, d))
    emb = centres[rng.integers(clusters, size=C)] + 0.6 * rng.normal(size=(C, d))
    nbr_item = np.where(rng.random(params.nbr_item.shape) < 0.3,
                        rng.integers(n_items, size=params.nbr_item.shape), -1)
    params = params._replace(
        item_emb=jnp.asarray(0.3 * emb, jnp.float32),
        item_bias=jnp.asarray(0.2 * rng.normal(size=C), jnp.float32),
        pop=jnp.asarray(rng.exponential(3.0, size=params.pop.shape), jnp.float32),
        nbr_item=jnp.asarray(nbr_item, jnp.int32),
        nbr_weight=jnp.asarray(rng.random(params.nbr_weight.shape) * (nbr_item >= 0), jnp.float32))
    L = CFG.history
    hist = rng.integers(n_items, size=(users, L)).astype(np.int32)
    hist[: users // 4, : L // 2] = -1  # some short histories
    ranks = kernels.RankInputs(hist, rng.integers(4, size=(users, L)).astype(np.int32),
                               rng.exponential(3600.0, size=(users, L)).astype(np.float32),
                               rng.integers(2, size=users).astype(np.int32),
                               np.where(rng.random((users, 3)) < 0.5, hist[:, -3:], -1).astype(np.int32))
    interest = (0.3 * rng.normal(size=(users, CFG.n_scenes, d))).astype(np.float32)
    weight = rng.random((users, CFG.n_scenes)).astype(np.float32)
    return params, interest, weight, ranks


def exact(params, interest, weight, ranks, n_items, item_scenes):
    items, scores = kernels.rank(params, interest, weight, ranks, jnp.int32(n_items), item_scenes, k=CFG.k,
                                 chunk=0)
    return np.asarray(items), np.asarray(scores)


def scene_masks(n_rows, seed=1):
    """Items in scene 0 only, 1 only, both, or hidden (no bit)."""
    return np.random.default_rng(seed).choice(np.array([1, 2, 3, 3, 3, 0], np.uint32), size=n_rows)


def test_with_every_item_a_candidate_the_lists_are_the_exact_ones():
    params, interest, weight, ranks = synthetic()
    n = 3000
    masks = scene_masks(params.item_emb.shape[0])
    ranker = CandidateRanker(CandidateConfig(candidates=n, lists=16, nprobe=16))
    user, _ = kernels.user_vectors(params, interest, weight, ranks)
    items, scores = ranker.rank_users(params, user, ranks, n, masks, k=CFG.k)
    want_items, want_scores = exact(params, interest, weight, ranks, n, masks)
    np.testing.assert_allclose(np.asarray(scores), want_scores, rtol=1e-5, atol=1e-4)
    assert (np.asarray(items) == want_items).mean() > 0.99  # ties may order differently


def test_recall_of_the_candidate_stage_against_the_exact_ranking():
    """A property with a fixed seed and a loose bound (not tuned): most of the exact top-k are found."""
    params, interest, weight, ranks = synthetic(n_items=4000, users=64, seed=11)
    masks = np.full(params.item_emb.shape[0], 3, np.uint32)
    ranker = CandidateRanker(CandidateConfig(candidates=100))
    user, _ = kernels.user_vectors(params, interest, weight, ranks)
    items, _ = ranker.rank_users(params, user, ranks, 4000, masks, k=CFG.k)
    want, _ = exact(params, interest, weight, ranks, 4000, masks)
    recall = np.mean([len(set(a) & set(b)) / CFG.k for a, b in zip(np.asarray(items), want)])
    assert recall >= 0.8, recall
    assert ranker.builds == 1


def test_masks_and_exclusions_hold_exactly_also_for_changes_after_the_build():
    params, interest, weight, ranks = synthetic(seed=2)
    n = 3000
    masks = scene_masks(params.item_emb.shape[0], seed=3)
    ranker = CandidateRanker(CandidateConfig(candidates=200))
    user, _ = kernels.user_vectors(params, interest, weight, ranks)
    first, _ = ranker.rank_users(params, user, ranks, n, masks, k=CFG.k)
    # hide every item the first lists showed: a catalogue change, the index is not rebuilt
    hidden = masks.copy()
    hidden[np.asarray(first)[np.asarray(first) >= 0]] = 0
    second, _ = ranker.rank_users(params, user, ranks, n, hidden, k=CFG.k)
    second = np.asarray(second)
    assert ranker.builds == 1 and (second >= 0).all()
    for row, scene in zip(second, np.asarray(ranks.scene)):
        assert ((hidden[row] >> scene) & 1 == 1).all()
    excluded = np.asarray(ranks.exclude)
    assert not any(set(r) & set(x[x >= 0]) for r, x in zip(second, excluded))
    assert (second < n).all()


def test_items_added_after_the_build_are_candidates_and_a_new_snapshot_rebuilds():
    params, interest, weight, ranks = synthetic(seed=4)
    masks = np.full(params.item_emb.shape[0], 3, np.uint32)
    user, _ = kernels.user_vectors(params, interest, weight, ranks)
    # row 3000 (growth padding until an item is assigned to it) scores far above every other for user 0
    params = params._replace(item_emb=params.item_emb.at[3000].set(50.0 * user[0] / jnp.linalg.norm(user[0])))
    ranker = CandidateRanker(CandidateConfig(candidates=50))
    first, _ = ranker.rank_users(params, user, ranks, 3000, masks, k=CFG.k)
    assert 3000 not in np.asarray(first)
    items, _ = ranker.rank_users(params, user, ranks, 3001, masks, k=CFG.k)  # item 3000 assigned since
    assert int(np.asarray(items)[0, 0]) == 3000 and ranker.builds == 1 and ranker.index.n_indexed == 3001
    ranker.rank_users(params._replace(item_emb=params.item_emb * 1.0), user, ranks, 3001, masks, k=CFG.k)
    assert ranker.builds == 2


def test_rerank_dedupes_history_and_neighbour_items_it_is_also_given():
    params, interest, weight, ranks = synthetic(seed=6)
    user, _ = kernels.user_vectors(params, interest, weight, ranks)
    proposed = np.concatenate([ranks.hist_item, ranks.hist_item], axis=1)  # every history item, twice
    items, _ = rerank(params, user, ranks, proposed, 3000, np.full(params.item_emb.shape[0], 3, np.uint32),
                      k=CFG.k)
    for row in np.asarray(items):
        shown = row[row >= 0]
        assert len(set(shown.tolist())) == len(shown)
