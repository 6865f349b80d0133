"""Metric functions against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import MetricAccumulator, hr_at_k, mrr, ndcg_at_k, rank_of, summarize


def test_rank_of_rows_and_padding():
    ranked = np.array([[4, 2, 9], [1, -1, -1], [7, 8, 9]])
    assert rank_of(np.array([9, -1, 3]), ranked).tolist() == [2, -1, -1]  # padding never matches
    assert rank_of(2, [4, 2, 9]) == 1


def test_hr_ndcg_mrr_hand_computed():
    ranks = np.array([0, 2, 9, 10, -1])
    assert hr_at_k(ranks, 10).tolist() == [1, 1, 1, 0, 0]
    assert ndcg_at_k(ranks, 10) == pytest.approx([1.0, 0.5, 1 / math.log2(11), 0.0, 0.0])
    assert mrr(ranks) == pytest.approx([1.0, 1 / 3, 0.1, 1 / 11, 0.0])


def test_summarize_truncates_mrr_at_list_length():
    stats = summarize(np.array([1, 25, -1, 3]), ks=(5, 20))
    assert stats["HR@5"] == 0.5 and stats["HR@20"] == 0.5
    assert stats["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 4, abs=1e-6)
    assert stats["MRR@20"] == pytest.approx((1 / 2 + 1 / 4) / 4, abs=1e-6)  # rank 25 is outside the top 20


def test_accumulator_by_type_and_windows():
    acc = MetricAccumulator(ks=(1,), n_windows=2)
    acc.add(np.array([0, 0, -1]), np.array([0, 3, 3]), np.array([1.0, 2.0, 3.0]), cold=np.array([0, 0, 1]))
    acc.add(np.array([-1]), np.array([0]), np.array([4.0]))
    out = acc.result()
    assert out["overall"]["HR@1"] == 0.5 and out["overall"]["cold_share"] == 0.25
    assert out["by_type"]["purchase"] == {"n": 2, "HR@1": 0.5, "NDCG@1": 0.5, "MRR@1": 0.5, "cold_share": 0.5}
    assert set(out["by_type"]) == {"view", "purchase"}
    assert [w["n"] for w in out["windows"]] == [2, 2] and [w["HR@1"] for w in out["windows"]] == [1.0, 0.0]


def test_scene_switches_and_stays_follow_each_user():
    # stream: u0 movie, u1 book, u0 book (switch), u0 book (stay), u1 movie (switch), u2 book (first)
    users = np.array([0, 1, 0, 0, 1, 2])
    scenes = np.array([0, 1, 1, 1, 0, 1])
    from models.metrics import scene_stays, scene_switches

    assert scene_switches(users, scenes).tolist() == [False, False, True, False, True, False]
    assert scene_stays(users, scenes).tolist() == [False, False, False, True, False, False]


def test_accumulator_scene_groups():
    acc = MetricAccumulator(ks=(1,), n_windows=1, scene_names=("movie", "book"))
    acc.add(np.array([0, -1, 0, -1]), np.zeros(4), np.arange(4.0), scenes=np.array([0, 1, 1, 0]),
            switch=np.array([0, 1, 0, 1]), stay=np.array([0, 0, 1, 0]))
    out = acc.result()
    assert out["by_scene"]["movie"]["HR@1"] == 0.5 and out["by_scene"]["book"]["n"] == 2
    assert out["scene_switch"]["n"] == 2 and out["scene_switch"]["HR@1"] == 0.0
    assert set(out["scene_switch_by_scene"]) == {"movie", "book"}
    assert out["scene_stay"] == {"n": 1, "HR@1": 1.0, "NDCG@1": 1.0, "MRR@1": 1.0, "cold_share": 0.0}
    assert "by_scene" not in MetricAccumulator(ks=(1,)).result()
