"""streams/market.py: the campaigns agent's work on a memory store, campaign files, the ledger publisher."""
import asyncio
from types import SimpleNamespace

import orjson

from models.market.campaigns import campaign_from_doc
from models.store import MemoryStore
from streams.market import CampaignWorker, LedgerPublisher, read_campaigns_file
from streams.settings import Settings

SETTINGS = Settings(scenes=("default", "search"))


def event(value: bytes, offset: int):
    return SimpleNamespace(value=value, message=SimpleNamespace(topic="campaigns", partition=0, offset=offset))


def campaign(cid, **extra):
    return orjson.dumps({"campaign_id": cid, "advertiser": "acme", "items": ["i1"], "bid": 0.2, "daily_budget": 5,
                         **extra})


def test_campaign_messages_apply_in_order_and_bad_ones_are_dead_lettered_with_a_reason():
    store, dead = MemoryStore(), []

    async def send(value):
        dead.append(orjson.loads(value))

    worker = CampaignWorker(SETTINGS, send, store)
    messages = [campaign("c1"), campaign("c2", scenes=["search"]), b'{"campaign_id": "c1", "action": "pause"}',
                b"{not json", campaign("c3", bid=0), campaign("c2", bid=0.3, scenes=["search"])]
    asyncio.run(worker.handle([event(m, i) for i, m in enumerate(messages)]))
    version, docs = store.campaigns()
    book = {cid: campaign_from_doc(orjson.loads(doc), SETTINGS.scenes)[1] for cid, doc in docs.items()}
    assert sorted(book) == ["c1", "c2"] and version == worker.version == 1
    assert book["c1"].status == "paused" and book["c2"].bid == 300_000 and book["c2"].scene_mask == 0b10
    assert [(d["offset"], d["reason"].split(":")[0]) for d in dead] == [(3, "not valid JSON"),
                                                                       (4, "bid 0 must be above 0 and at most 1e+06")]
    asyncio.run(worker.handle([event(b'{"campaign_id": "c1", "action": "resume"}', 6)]))
    assert campaign_from_doc(orjson.loads(store.campaigns()[1]["c1"]), SETTINGS.scenes)[1].status == "active"


def test_a_campaign_file_names_each_bad_line(tmp_path):
    path = tmp_path / "campaigns.jsonl"
    path.write_text(campaign("c1").decode() + "\n\n" + '{"campaign_id": "c2"}\n' + '{"campaign_id": "c1", '
                    '"action": "pause"}\n')
    messages, errors = read_campaigns_file(path, SETTINGS.scenes)
    assert [key for key, _ in messages] == [b"c1", b"c1"]
    assert errors == [f"{path}:3: missing required field 'advertiser'"]
    csv = tmp_path / "campaigns.csv"
    csv.write_text("campaign_id,advertiser,items,bid,daily_budget,scenes\nc1,acme,i1;i2,0.5,10,search\n"
                   "c2,acme,i1,cheap,10,\n")
    messages, errors = read_campaigns_file(csv, SETTINGS.scenes)
    assert orjson.loads(messages[0][1])["items"] == ["i1", "i2"]
    assert errors == [f"{csv}:3: field 'bid' must be a finite number, got 'cheap'"]


def test_the_ledger_publisher_sends_from_its_cursor_and_moves_it_after_delivery():
    store = MemoryStore()
    record = lambda cid, price: ("c1", 0, cid, price, 10**9, orjson.dumps(  # noqa: E731
        {"charge_id": cid, "campaign_id": "c1", "price_micros": price}))
    store.write_market([], [], [record("a", 5), record("b", 7)])
    publisher = LedgerPublisher(store, batch=1)
    start, records = publisher.pending()
    assert start == 0 and [(k, orjson.loads(v)["amount_micros"]) for k, v in records] == [(b"a", 5)]
    assert publisher.pending()[0] == 0  # not delivered yet: the same entries again
    publisher.done(start, len(records))
    start, records = publisher.pending()
    assert start == 1 and records[0][0] == b"b"
