"""models/store.py, the market's methods: campaigns with a version, fenced shown lists, charges applied once
per charge id and capped at the budget, and the ledger list that always sums to spend; memory and real
Redis."""
import struct

import orjson
import pytest


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        from models.store import MemoryStore
        return MemoryStore()
    return request.getfixturevalue("redis_store")


def shown(partition, offset, index=0, body=b"{}"):
    return b"AFSH" + struct.pack("<iqH", partition, offset, index) + body


def charge(cid, price, budget=100, campaign="c1", day=3):
    return (campaign, day, cid, price, budget, orjson.dumps({"charge_id": cid, "price_micros": price}))


def test_campaigns_are_stored_with_a_version(store):
    assert store.campaigns() == (0, {})
    assert store.put_campaigns({"c1": b"one", "c2": b"two"}) == 1
    assert store.put_campaigns({"c1": b"uno"}) == 2
    assert store.campaigns() == (2, {"c1": b"uno", "c2": b"two"})
    assert store.read_market([], []).campaigns_version == 2


def test_shown_lists_are_fenced_like_states(store):
    assert store.write_market(["a", "b"], [shown(0, 5), shown(1, 7, 2)], [])[0] == [True, True]
    written, _ = store.write_market(["a", "b", "b"], [shown(0, 5, body=b"x"), shown(1, 7, 1), shown(1, 7, 3)],
                                    [])
    assert written == [False, False, True]  # a replay, an earlier event of the same message, a later one
    read = store.read_market(["a", "b", "nobody"], [])
    assert read.shown == [shown(0, 5), shown(1, 7, 3), None]


def test_a_charge_applies_once_is_capped_at_the_budget_and_lands_in_the_ledger(store):
    _, charged = store.write_market([], [], [charge("x", 60), charge("y", 60), charge("x", 60)])
    assert charged == [60, 40, 0]  # y is capped at what is left of the budget; x again charges nothing
    _, charged = store.write_market([], [], [charge("z", 5), charge("x", 60), charge("w", 5, day=4)])
    assert charged == [0, 0, 5]
    assert store.read_market([], [("c1", 3), ("c1", 4), ("c2", 3)]).spend == [100, 5, 0]
    entries = store.ledger_entries(0, 100)
    assert [int(e.split(b":", 1)[0]) for e in entries] == [60, 40, 0, 5]
    assert sum(int(e.split(b":", 1)[0]) for e in entries) == store.spend("c1", 3) + store.spend("c1", 4)
    assert store.ledger_entries(1, 2) == entries[1:3]


def test_the_ledger_cursor_only_moves_forward(store):
    assert store.ledger_published() == 0
    assert store.advance_ledger(3) == 3
    assert store.advance_ledger(2) == 3
    assert store.ledger_published() == 3
