"""The attention recommender under per-scene catalogues: lists stay in the scene and skip seen items."""
from __future__ import annotations

import numpy as np

from models import evaluate
from models.attention import AttentionRecommender, for_log
from models.config import EngineConfig
from models.training import TrainConfig
from tests.models.test_evaluate import two_scene_log

CFG = EngineConfig(dim=8, history=4, scenes=("default", "book"), k=4, initial_capacity=64,
                   buckets=(8, 32), max_batch=32)
TRAIN = TrainConfig(batch_size=8, replay_steps=0)


def test_recommend_stays_in_the_scene_and_skips_excluded_and_unseen_items():
    log = two_scene_log()
    model = AttentionRecommender(CFG, TRAIN)
    model.learn(log.user[:30], log.item[:30], log.type[:30], log.scene[:30], log.ts[:30])
    catalogues = evaluate.scene_catalogues(log)
    learned = np.unique(log.item[:30])
    users, scenes = np.arange(6), np.array([0, 1, 0, 1, 0, 1])
    exclude = [learned[:2]] + [np.zeros(0, np.int64)] * 5
    recs = model.recommend(users, scenes, np.full(6, 40.0), 8, exclude, item_scenes=catalogues)
    scene_of = log.extra["item_scene"]
    for row, scene in enumerate(scenes):
        shown = recs[row][recs[row] >= 0]
        assert shown.size and (scene_of[shown] == scene).all() and np.isin(shown, learned).all()
    assert not np.isin(recs[0], learned[:2]).any()


def test_fused_prequential_run_never_leaves_the_scene():
    log = two_scene_log(n_events=80)
    for transfer in (True, False):
        model = for_log(log, dim=8, history=4, batch_size=8, replay_steps=0, transfer=transfer)
        original = model.recommend_then_learn
        lists = []

        def recording(users, items, types, scenes, ts, k, exclude=None, **restrict):
            recs = original(users, items, types, scenes, ts, k, exclude, **restrict)
            lists.append((np.asarray(scenes), recs, exclude))
            return recs

        model.recommend_then_learn = recording
        result = evaluate.prequential(log, model, k=3, batch=16)  # users repeat inside these batches
        assert result["batching"].startswith("fused") and result["metrics"]["scene_switch"]["n"] > 0
        scene_of = log.extra["item_scene"]
        for scenes, recs, exclude in lists:
            for row, scene in enumerate(scenes):
                shown = recs[row][recs[row] >= 0]
                assert (scene_of[shown] == scene).all() and not np.isin(shown, exclude[row]).any()
