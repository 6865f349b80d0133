"""Explanations (models.explain): the most-attended history events agree with the NumPy reference, and the
engine and the request ranker attach them only when asked."""
from __future__ import annotations

import numpy as np
import orjson

from models import batching, reference
from models.config import EngineConfig
from models.engine import Engine, SourcedEvent
from models.events import Event
from models.explain import explanations
from models.params import init_params
from models.requests import Request, RequestRanker
from models.store import MemoryStore
from streams.codec import encode_recommendation
from streams.settings import Settings

CFG = EngineConfig(dim=8, history=6, scenes=("default", "home", "search"), k=3, initial_capacity=16,
                   buckets=(8, 16, 32), max_batch=16)


def random_state(rng, B, cfg, n_items):
    hist_item = np.full((B, cfg.history), -1, np.int32)
    for b in range(B):
        n = rng.integers(1, cfg.history + 1)
        hist_item[b, -n:] = rng.integers(0, n_items, n)
    hist_type = rng.integers(0, 4, hist_item.shape).astype(np.int32)
    ages = rng.uniform(0, 7200, hist_item.shape).astype(np.float32)
    present = (rng.uniform(size=(B, cfg.n_scenes)) > 0.4).astype(np.float32)
    weight = present * rng.uniform(0.5, 2, (B, cfg.n_scenes))
    interest = rng.normal(size=(B, cfg.n_scenes, cfg.dim)).astype(np.float32)
    scene = rng.integers(0, cfg.n_scenes, B).astype(np.int32)
    from models.kernels import RankInputs
    ranks = RankInputs(hist_item=hist_item, hist_type=hist_type, hist_age=ages, scene=scene,
                       exclude=np.full((B, 1), -1, np.int32))
    return interest, weight.astype(np.float32), ranks


def test_most_attended_events_and_scene_weights_match_the_reference():
    rng = np.random.default_rng(0)
    n_items = 12
    params = init_params(CFG, capacity=16)
    noise = rng.normal(size=params.item_emb.shape).astype(np.float32)
    params = params._replace(item_emb=params.item_emb + noise)
    names = np.array([f"i{n}" for n in range(16)], object)
    interest, weight, ranks = random_state(rng, 5, CFG, n_items)
    docs = explanations(params, interest, weight, ranks, names, CFG.scenes, events=3, bucket=8)
    gate = 1 / (1 + np.exp(-float(params.transfer)))
    for b, doc in enumerate(docs):
        _, attn = reference.user_vector(params, interest[b], weight[b], ranks.hist_item[b],
                                        ranks.hist_type[b], ranks.hist_age[b], int(ranks.scene[b]))
        order = np.argsort(-attn, kind="stable")[:3]
        expected = [(names[ranks.hist_item[b, j]], attn[j]) for j in order if attn[j] > 0]
        got = [(e["item_id"], e["attention"]) for e in doc["history"]]
        assert [g[0] for g in got] == [e[0] for e in expected], (b, got, expected)
        np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], atol=2e-4)
        assert all(e["age_s"] >= 0 and e["type"] in ("view", "click", "cart", "purchase")
                   for e in doc["history"])
        visited = [s for s in range(CFG.n_scenes) if weight[b, s] > 0]
        assert list(doc["scene_interest"]) == [CFG.scenes[s] for s in visited]
        if visited:
            q_scores = reference_scene_logits(params, interest[b], ranks, b, visited)
            beta = np.exp(q_scores - q_scores.max())
            np.testing.assert_allclose(list(doc["scene_interest"].values()), beta / beta.sum(), atol=2e-4)
        assert abs(doc["transfer"] - gate) < 1e-4


def reference_scene_logits(params, interest, ranks, b, visited):
    p = {k: np.asarray(v, np.float64) for k, v in params._asdict().items()}
    newest = p["item_emb"][ranks.hist_item[b, -1]] + p["type_emb"][ranks.hist_type[b, -1]]
    q = (newest + p["scene_query"][ranks.scene[b]]) @ p["w_query"]
    return np.array([q @ interest[s] / np.sqrt(interest.shape[-1]) for s in visited])


def run_engine(cfg):
    engine = Engine(cfg, MemoryStore())
    batch = [SourcedEvent(Event("u1", item, etype, ts, scene=scene), 0, off) for off, (item, etype, ts, scene)
             in enumerate([("a", "view", 1.0, "home"), ("b", "purchase", 2.0, "home"),
                           ("c", "click", 3.0, "search"), ("d", "view", 4.0, "search")])]
    result = engine.process(batch)
    engine.commit(result)
    return engine, result.recommendations[0]


def test_engine_lists_carry_explanations_only_when_asked():
    _, plain = run_engine(CFG)
    assert plain.explanation is None
    assert "explanation" not in orjson.loads(encode_recommendation(plain, emitted_ts=5.0))

    engine, rec = run_engine(EngineConfig(**{**CFG.__dict__, "explain_events": 2}))
    doc = orjson.loads(encode_recommendation(rec, emitted_ts=5.0))["explanation"]
    assert len(doc["history"]) == 2 and {e["item_id"] for e in doc["history"]} <= {"a", "b", "c", "d"}
    weights = [e["attention"] for e in doc["history"]]
    assert weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1.0001
    assert set(doc["scene_interest"]) == {"home", "search"}
    assert abs(sum(doc["scene_interest"].values()) - 1) < 1e-3
    ages = {e["item_id"]: e["age_s"] for e in doc["history"]}
    assert all(ages[item] == 4.0 - ts for item, ts in (("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0))
               if item in ages)

    # The request path explains a known user from the stored state, and not a cold start.
    ranker = RequestRanker(EngineConfig(**{**CFG.__dict__, "explain_events": 2}), engine.store,
                           clock=lambda: 10.0)
    known, cold = ranker.answer([Request("u1", "default", 2, ()), Request("nobody", "default", 2, ())])
    assert known.explanation is not None and set(known.explanation["scene_interest"]) == {"home", "search"}
    assert {e["item_id"] for e in known.explanation["history"]} <= {"a", "b", "c", "d"}
    assert "explanation" in known.as_json()
    assert cold.explanation is None and "explanation" not in cold.as_json()


def test_explain_settings():
    assert Settings.from_env({}).engine_config().explain_events == 0
    assert Settings.from_env({"ATTNFLOW_EXPLAIN": "true"}).engine_config().explain_events == 3
    five = Settings.from_env({"ATTNFLOW_EXPLAIN": "1", "ATTNFLOW_EXPLAIN_EVENTS": "5"})
    assert five.engine_config().explain_events == 5
    try:
        Settings.from_env({"ATTNFLOW_EXPLAIN_EVENTS": "0"})
    except ValueError as exc:
        assert "EXPLAIN_EVENTS" in str(exc)
    else:
        raise AssertionError("EXPLAIN_EVENTS=0 must be refused")
