"""models/store/: fenced writes and the shared catalogue, on memory and on the real Redis."""
import threading

import pytest

from models.config import EngineConfig
from models.state import StateCodec

CODEC = StateCodec(EngineConfig(dim=2, history=2, scenes=("default",), k=1))


def value(partition, offset, n_events=0, index=0):
    state = CODEC.decode([None])
    for name, field in (("partition", partition), ("offset", offset), ("n_events", n_events),
                        ("fence_index", index)):
        state[name] = field
    return CODEC.encode(state)[0]


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        from models.store import MemoryStore
        return MemoryStore()
    return request.getfixturevalue("redis_store")


def test_fence_refuses_replays_and_zombies(store):
    assert store.write_states(["a", "b"], [value(0, 5), value(1, 7)]) == [True, True]
    # same offset (replay) and older offset (zombie) are refused; newer is taken
    assert store.write_states(["a", "b"], [value(0, 5, 99), value(1, 6, 99)]) == [False, False]
    assert store.write_states(["a"], [value(0, 6, 1)]) == [True]
    read = store.read_batch(["a", "b", "nobody"], [])
    assert [CODEC.decode([v])[0]["n_events"] for v in read.states[:2]] == [1, 0]
    assert read.states[2] is None
    # a user whose events moved to another partition (repartitioning) is not fenced off
    assert store.write_states(["a"], [value(3, 0, 2)]) == [True]


def test_fence_orders_events_within_a_batched_message_by_index(store):
    assert store.write_states(["a"], [value(0, 5, 1, index=3)]) == [True]
    # the same message: an earlier or the same index is a replay, a later one is new
    replays = [value(0, 5, 9, index=2), value(0, 5, 9, index=3)]
    assert store.write_states(["a", "a"], replays) == [False, False]
    assert store.write_states(["a"], [value(0, 5, 2, index=300)]) == [True]
    # a later message wins whatever its index; an earlier one loses whatever its index
    assert store.write_states(["a"], [value(0, 4, 9, index=65535)]) == [False]
    assert store.write_states(["a"], [value(0, 6, 3, index=0)]) == [True]
    assert CODEC.decode(store.read_batch(["a"], []).states)[0]["n_events"] == 3


def test_catalogue_is_dense_shared_and_stable(store):
    assert store.item_index(["x", "y"]) == [0, 1]
    results = []

    def assign(names):
        results.append(dict(zip(names, store.item_index(names))))

    threads = [threading.Thread(target=assign, args=([f"i{j}" for j in range(k, k + 50)],)) for k in (0, 25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = {}
    for r in results:
        for name, idx in r.items():
            assert merged.setdefault(name, idx) == idx
    assert sorted(merged.values()) == list(range(2, 77))
    assert store.item_ids(0)[:2] == ["x", "y"]
    assert store.item_ids(0)[merged["i60"]] == "i60"
    assert store.read_batch([], ["y", "new"]).item_index == [1, 77]
    assert store.n_items() == 78


def test_parameter_snapshots_are_versioned(store):
    assert store.params_version() == 0
    v1 = store.publish_params(b"one")
    v2 = store.publish_params(b"two")
    assert (v1, v2) == (1, 2) and store.load_params(2) == b"two"
    assert store.read_batch(["u"], []).params_version == 2


def test_scene_popularity_sums_the_newest_windows_counted_with_the_write(store):
    """Counts added with a batch's fenced write (one round trip) or on their own, summed over the newest
    windows; a window's least counted items past ``keep`` are dropped, windows too old are not read."""
    from models.store import PopularityWindows

    store.popularity = PopularityWindows(window_s=100.0, windows=2, keep=3)
    store.count_scene_items([("home", 1, 3), ("home", 2, 1), ("search", 1, 1)], now=50.0)
    store.count_scene_items([("home", 2, 5), ("home", 7, 1), ("home", 8, 2), ("home", 9, 4)], now=150.0)
    assert store.scene_popularity(["home", "search", "default"], 10, now=160.0) == {
        "home": [(2, 6.0), (9, 4.0), (1, 3.0), (8, 2.0)], "search": [(1, 1.0)], "default": []}
    # first window gone
    assert store.scene_popularity(["home"], 2, now=260.0) == {"home": [(2, 5.0), (9, 4.0)]}
    assert store.write_states(["a"], [value(0, 1)], scene_counts=[("default", 4, 2)]) == [True]
    assert store.write_states(["a"], [value(0, 1)], scene_counts=[("default", 4, 1)]) == [False]
    assert store.scene_popularity(["default"], 5)["default"] == [(4, 3.0)]
