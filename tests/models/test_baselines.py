"""Baselines on toy streams: the interface contract (exclude, padding, catalogue
growth) and basic behaviour."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from models.baselines import DecayedPopularity, Recommender, RiverMF, TransitionKNN, top_k


def feed(model, users, items, ts=None, types=None):
    n = len(users)
    ts = np.arange(n, dtype=float) if ts is None else np.asarray(ts, float)
    types = np.zeros(n, int) if types is None else np.asarray(types)
    model.learn(np.asarray(users), np.asarray(items), types, np.zeros(n, int), ts)


def ask(model, users, k, exclude=None):
    users = np.asarray(users)
    return model.recommend(users, np.zeros(len(users), int), np.full(len(users), 1e6), k, exclude)


MODELS = [lambda: DecayedPopularity(half_life_s=100.0), lambda: TransitionKNN(window=3),
          lambda: RiverMF(n_factors=4, n_negatives=1)]


def test_top_k_exclude_pad_and_ties():
    scores = np.array([[1.0, 3.0, 3.0, -np.inf, 2.0]])
    assert top_k(scores, 3).tolist() == [[1, 2, 4]]
    assert top_k(scores, 3, exclude=[np.array([2, 1])]).tolist() == [[4, 0, -1]]
    assert top_k(np.ones(6), 2).tolist() == [[0, 1]]  # ties go to the lower index


@pytest.mark.parametrize("make", MODELS)
def test_interface_exclude_growth_and_padding(make):
    model = make()
    assert isinstance(model, Recommender)
    assert ask(model, [0], 3).tolist() == [[-1, -1, -1]]  # nothing learned yet
    feed(model, [0, 1, 2], [0, 1, 1])
    feed(model, [3], [40])  # a far larger index than seen so far: the catalogue grows
    recs = ask(model, [0, 5], 5, exclude=[np.array([1]), np.array([], int)])
    assert recs.dtype == np.int32 and recs.shape == (2, 5)
    assert sorted(recs[0][recs[0] >= 0].tolist()) == [0, 40] and recs[0, 2:].tolist() == [-1, -1, -1]
    assert sorted(recs[1][recs[1] >= 0].tolist()) == [0, 1, 40]  # only seen items, never 2..39


def test_popularity_decays_old_counts_and_weights_types():
    model = DecayedPopularity(half_life_s=1.0)
    feed(model, [0, 1, 2], [7, 7, 7], ts=[0, 0, 0])
    feed(model, [3], [8], ts=[5])  # 3 * 2**-5 < 1
    assert ask(model, [0], 2).tolist() == [[8, 7]]
    weighted = DecayedPopularity(half_life_s=1e9, type_weights=[1, 1, 1, 10])
    feed(weighted, [0, 1, 2], [7, 7, 8], types=[0, 0, 3])
    assert ask(weighted, [0], 1).tolist() == [[8]]


def test_popularity_survives_long_streams_without_overflow():
    model = DecayedPopularity(half_life_s=1.0)
    for t in range(0, 5000, 100):
        feed(model, [0], [t % 3], ts=[t])
    assert np.all(np.isfinite(model.scores)) and ask(model, [0], 1).tolist() == [[4900 % 3]]


def test_transition_knn_follows_repeated_transition():
    model = TransitionKNN(window=2)
    # Popular item 9 everywhere, but a -> b (1 -> 2) is what users do after 1.
    feed(model, list(range(10)), [9] * 10)
    for user in range(10, 15):
        feed(model, [user, user], [1, 2])
    feed(model, [99], [1])
    assert ask(model, [99], 1).tolist() == [[2]]
    assert ask(model, [99], 2, exclude=[np.array([2])]).tolist() == [[9, 1]]  # popularity fills
    assert ask(model, [12345], 1).tolist() == [[9]]  # unknown user: popularity


def test_river_mf_learns_user_preference():
    model = RiverMF(n_factors=8, n_negatives=3, lr=0.1, seed=1)
    rng = np.random.default_rng(0)
    # Users 0-9 like items 0-4, users 10-19 like items 5-9.
    for _ in range(40):
        users = rng.permutation(20)
        items = np.where(users < 10, rng.integers(0, 5, 20), rng.integers(5, 10, 20))
        feed(model, users, items)
    recs = ask(model, [3, 13], 5)
    assert set(recs[0].tolist()) == set(range(5)) and set(recs[1].tolist()) == set(range(5, 10))
    # The numpy mirror is what river learned.
    assert np.allclose(model.item_factors[7], model.mf.i_latents[7])


def test_scene_popularity_counts_per_scene_and_fills_from_overall():
    from models.baselines import ScenePopularity

    model = ScenePopularity(half_life_s=1e9)
    model.learn(np.arange(5), np.array([1, 1, 1, 2, 3]), np.zeros(5, int), np.array([0, 0, 0, 1, 1]),
                np.zeros(5))
    recs = model.recommend(np.array([7, 7, 7]), np.array([0, 1, 2]), np.zeros(3), 3,
                           [np.zeros(0, int), np.array([2]), np.zeros(0, int)])
    # scene 0: its item, then the overall order; scene 1: 2 excluded; scene 2 never seen: overall only
    assert recs.tolist() == [[1, 2, 3], [3, 1, -1], [1, 2, 3]]


def test_scene_history_knn_looks_only_at_the_requests_scene():
    def train(model):
        z = np.zeros(1, int)
        for user in range(5):   # in scene 0 users go 1 -> 2 -> 3, and from book 11 they come back to 3
            for item, scene in ((1, 0), (2, 0), (11, 1), (3, 0)):
                model.learn(np.array([user]), np.array([item]), z, np.array([scene]), np.array([float(user)]))
        model.learn(np.array([9, 9]), np.array([1, 11]), np.zeros(2, int), np.array([0, 1]),
                    np.array([9.0, 9.0]))

    plain, scened = TransitionKNN(window=1), TransitionKNN(window=1, scene_history=True)
    train(plain)
    train(scened)
    item_scenes = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 2], np.uint32)
    ask_scene0 = dict(scenes=np.array([0]), ts=np.array([10.0]), k=1, item_scenes=item_scenes)
    # user 9's last item is 11 (scene 1): plain kNN follows 11 -> 3; the scene-history kNN follows the
    # user's last scene-0 item, 1 -> 2
    assert plain.recommend(np.array([9]), **ask_scene0).tolist() == [[3]]
    assert scened.recommend(np.array([9]), **ask_scene0).tolist() == [[2]]
    assert scened.recent[(9, 0)] == deque([1]) and scened.recent[(9, 1)] == deque([11])
    assert 11 not in scened.transitions and scened.transitions[2] == {3: 5.0}  # transitions within a scene


@pytest.mark.parametrize("make", MODELS + [lambda: TransitionKNN(window=2, scene_history=True)])
def test_scene_restriction_returns_only_the_rows_scene(make):
    model = make()
    rng = np.random.default_rng(0)
    item_scenes = np.where(np.arange(30) % 3 == 0, 2, 1).astype(np.uint32)  # scene 1: items 3j, else scene 0
    item_scenes[7] = 3  # item 7 is in both scenes
    for _ in range(5):
        items = rng.integers(0, 30, 20)
        model.learn(rng.integers(0, 6, 20), items, np.zeros(20, int), (item_scenes[items] >> 1) & 1,
                    np.arange(20.0))
    scenes = np.array([0, 1, 1, 0])
    recs = model.recommend(np.arange(4), scenes, np.full(4, 30.0), 12,
                           [np.zeros(0, int), np.array([3, 6]), np.zeros(0, int), np.array([7])],
                           item_scenes=item_scenes)
    for row, scene in enumerate(scenes):
        shown = recs[row][recs[row] >= 0]
        assert shown.size and ((item_scenes[shown] >> scene) & 1 == 1).all()
    assert not np.isin(recs[1], [3, 6]).any() and 7 not in recs[3]
