"""models/requests.py: request-time lists from stored states, cold starts, scene catalogues, bad requests."""
from dataclasses import replace

import numpy as np
import pytest

from models.catalogue import scene_mask
from models.config import EngineConfig
from models.engine import Engine, SourcedEvent
from models.events import Event
from models.params import init_params, to_bytes
from models.requests import Request, RequestError, RequestLimits, RequestRanker, parse_request
from models.store import MemoryStore

SCENES = ("default", "home", "search")
CFG = EngineConfig(dim=8, history=6, scenes=SCENES, k=4, initial_capacity=64, buckets=(4, 8, 16, 32),
                   max_batch=32)
LIMITS = RequestLimits(max_k=10, max_exclude=5, max_batch=8)
ITEMS = [f"i{n}" for n in range(40)]


def events(rows, partition=0, start=0):
    return [SourcedEvent(Event(u, i, t, ts, s), partition, start + n)
            for n, (u, i, t, ts, s) in enumerate(rows)]


def run(engine, rows, start=0):
    result = engine.process(events(rows, start=start))
    engine.commit(result)
    return result


@pytest.fixture
def store():
    store = MemoryStore()
    store.item_index(ITEMS)  # the whole catalogue is known before anyone acts on it
    return store


def ranker(cfg, store, **kwargs):
    return RequestRanker(cfg, store, LIMITS, **kwargs)


def test_a_known_user_is_ranked_from_the_stored_state_as_the_pipeline_ranks_it(store):
    engine = Engine(CFG, store)
    result = run(engine, [("u", "i1", "view", 10.0, "home"), ("u", "i2", "click", 20.0, "home"),
                          ("u", "i3", "view", 30.0, "home")])
    shown = result.recommendations[0]
    answer = ranker(CFG, store).answer([Request("u", "home", CFG.k)], now=30.0)[0]
    assert not answer.cold_start
    assert answer.items == shown.items and answer.scene == "home"
    np.testing.assert_allclose(answer.scores, shown.scores, atol=1e-2)  # the state keeps interests as float16
    assert (answer.model_version, answer.catalogue_version) == (0, 0)
    longer = ranker(CFG, store).answer([Request("u", "home", 10)], now=30.0)[0]
    assert longer.items[:CFG.k] == shown.items and len(longer.items) == 10


def test_a_scene_the_user_never_visited_is_ranked_from_the_other_scenes(store):
    params = init_params(CFG, 64)
    queries = np.random.default_rng(0).normal(size=params.scene_query.shape).astype(np.float32)
    store.publish_params(to_bytes(params._replace(scene_query=queries), {}))  # scenes that differ, as trained
    run(Engine(CFG, store), [("u", f"i{n}", "view", float(n), "home") for n in range(1, 5)])
    serving = ranker(CFG, store)
    search, home = serving.answer([Request("u", "search", 6), Request("u", "home", 6)], now=5.0)
    assert not search.cold_start and len(search.items) == 6 and search.scene == "search"
    assert search.items != home.items or search.scores != home.scores  # the scene's query changes the list


def test_unknown_users_get_the_scenes_popular_items_then_the_models_prior(store):
    engine = Engine(CFG, store)
    rows, offset = [], 0
    for n, (item, times) in enumerate([("i7", 5), ("i8", 3), ("i9", 1)]):
        rows += [(f"fan{n}-{t}", item, "view", 100.0 + t, "search") for t in range(times)]
    rows += [("homer", "i20", "view", 1.0, "home")] * 1
    run(engine, rows)
    serving = ranker(CFG, store)
    search, home, default = serving.answer([Request("stranger", "search", 5), Request("stranger", "home", 3),
                                            Request("stranger", "default", 3)])
    assert search.cold_start
    assert search.items[:3] == ["i7", "i8", "i9"] and search.scores[:3] == [5.0, 3.0, 1.0]
    assert len(search.items) == 5 and len(set(search.items)) == 5 and search.scores[3:] == [0.0, 0.0]
    assert home.items[0] == "i20" and len(home.items) == 3
    assert default.cold_start and len(default.items) == 3 and default.scores == [0.0, 0.0, 0.0]
    excluded = serving.answer([Request("stranger", "search", 2, exclude=("i7", "no-such-item"))])[0]
    assert excluded.items == ["i8", "i9"]


def test_lists_hold_only_the_scenes_catalogue_and_never_hidden_items(store):
    engine = Engine(CFG, store)
    only_home = [f"i{n}" for n in range(10, 20)]
    store.set_item_scenes(only_home, [scene_mask(["home"], SCENES)] * len(only_home))
    store.set_item_scenes(["i5", "i6"], [0, 0])  # hidden everywhere
    run(engine, [("u", item, "click", float(n), "home") for n, item in enumerate(["i10", "i11", "i5", "i12"])]
        + [(f"fan{n}", "i5", "view", 50.0 + n, "search") for n in range(4)]
        + [(f"fan{n}", "i10", "view", 60.0 + n, "search") for n in range(4)])
    serving = ranker(CFG, store)
    asked = serving.answer([Request(user, scene, 10) for user in ("u", "stranger") for scene in SCENES])
    for answer in asked:
        assert len(answer.items) == 10 and not {"i5", "i6"} & set(answer.items), answer
        if answer.scene != "home":
            assert not set(only_home) & set(answer.items), answer
    assert asked[1].scene == "home" and set(asked[1].items) & set(only_home)
    assert asked[0].catalogue_version == 12
    # hidden after the ranker has answered: applied from its next batch on
    first = serving.answer([Request("u", "home", 3)])[0].items
    store.set_item_scenes(first[:1], [0])
    again = serving.answer([Request("u", "home", 10)])[0]
    assert first[0] not in again.items and again.catalogue_version == 13


def test_excluded_ids_and_masked_event_types_are_never_returned(store):
    cfg = replace(CFG, mask_types=("purchase",))
    run(Engine(cfg, store), [("u", "i1", "purchase", 1.0, "default"), ("u", "i2", "view", 2.0, "default"),
                             ("u", "i3", "view", 3.0, "default")])
    serving = ranker(cfg, store)
    plain = serving.answer([Request("u", "default", 10)], now=3.0)[0]
    assert "i1" not in plain.items and "i3" in plain.items  # the repeat pointer puts recent views first
    excluded = serving.answer([Request("u", "default", 10, exclude=tuple(plain.items[:5]) + ("unknown",))],
                              now=3.0)[0]
    assert not set(plain.items[:5]) & set(excluded.items) and excluded.items[:5] == plain.items[5:10]


def test_a_newer_snapshot_is_used_from_the_next_batch(store):
    run(Engine(CFG, store), [("u", "i1", "view", 1.0, "default")])
    serving = ranker(CFG, store)
    before = serving.answer([Request("u", "default", 5)], now=1.0)[0]
    params = init_params(CFG, 64)
    store.publish_params(to_bytes(params._replace(item_bias=params.item_bias.at[33].set(50.0)), {}))
    after = serving.answer([Request("u", "default", 5)], now=1.0)[0]
    assert (before.model_version, after.model_version) == (0, 1) and after.items[0] == "i33"


def test_shared_parameters_are_used_while_they_are_the_newest():
    store = MemoryStore()
    store.item_index(ITEMS)
    params = init_params(CFG, 64)
    boosted = params._replace(item_bias=params.item_bias.at[12].set(50.0))
    serving = ranker(CFG, store, shared_params=lambda: (0, boosted))
    assert serving.answer([Request("x", "default", 1)])[0].items == ["i12"]
    store.publish_params(to_bytes(params, {}))  # the worker's engine has not loaded it yet: the ranker does
    assert serving.answer([Request("x", "default", 1)])[0].model_version == 1


def test_many_requests_answer_in_order_as_one_by_one(store):
    run(Engine(CFG, store), [(f"u{n % 5}", f"i{n}", "view", float(n), SCENES[n % 3]) for n in range(30)])
    serving = ranker(CFG, store)
    requests = [Request(f"u{n % 7}", SCENES[n % 3], 1 + n % 10, exclude=(f"i{n}",)) for n in range(20)]
    together = serving.answer(requests, now=100.0)
    alone = [serving.answer([r], now=100.0)[0] for r in requests]
    assert [a.items for a in together] == [a.items for a in alone]
    assert [a.user_id for a in together] == [r.user_id for r in requests]
    assert [len(a.items) for a in together] == [r.k for r in requests]


def test_warmup_compiles_every_bucket_and_an_unreadable_state_is_a_cold_start(store):
    serving = ranker(CFG, store)
    assert serving.warmup() > 0 and serving.buckets == [4, 8]
    store.states["broken"] = b"not a state"
    answer = serving.answer([Request("broken", "default", 3)])[0]
    assert answer.cold_start and len(answer.items) == 3 and serving.unreadable_states == 1


@pytest.mark.parametrize("query, error, detail", [
    ({}, "missing_user_id", None),
    ({"user_id": "  "}, "missing_user_id", None),
    ({"user_id": "u", "scene": "moon"}, "unknown_scene", ("scenes", list(SCENES))),
    ({"user_id": "u", "k": "0"}, "bad_k", ("max_k", 10)),
    ({"user_id": "u", "k": "11"}, "bad_k", ("max_k", 10)),
    ({"user_id": "u", "k": "ten"}, "bad_k", ("max_k", 10)),
    ({"user_id": "u", "exclude": ",".join(ITEMS[:6])}, "too_many_excludes", ("max_exclude", 5)),
    ({"user_id": "u" * 300}, "bad_user_id", None),
])
def test_bad_requests_are_refused_with_what_is_wrong(query, error, detail):
    with pytest.raises(RequestError) as raised:
        parse_request(query, SCENES, CFG.k, LIMITS)
    body = raised.value.body()
    assert raised.value.status == 400 and body["error"] == error and body["message"]
    if detail:
        assert body[detail[0]] == detail[1]


def test_good_requests_take_defaults_and_drop_repeated_excludes():
    assert parse_request({"user_id": "u"}, SCENES, 4, LIMITS) == Request("u", "default", 4, ())
    request = parse_request({"user_id": "u", "k": "10", "exclude": "a,,b,a"}, SCENES, 4, LIMITS)
    assert request.exclude == ("a", "b")
