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
    return SimpleNamespace(value=value,
                           message=SimpleNamespace(topic="campaigns", partition=0, offset=offset))


def campaign(cid, **extra):
    return orjson.dumps({"campaign_id": cid, "advertiser": "acme", "items": ["i1"], "bid": 0.2,
                         "daily_budget": 5, **extra})


def test_campaign_messages_apply_in_order_and_bad_ones_are_dead_lettered_with_a_reason():
    store, dead = MemoryStore(), []

    async def send(value):
        dead.append(orjson.loads(value))

    worker = CampaignWorker(SETTINGS, send, store)
    messages = [campaign("c1"), campaign("c2", scenes=["search"]),
                b'{"campaign_id": "c1", "action": "pause"}', b"{not json", campaign("c3", bid=0),
                campaign("c2", bid=0.3, scenes=["search"])]
    asyncio.run(worker.handle([event(m, i) for i, m in enumerate(messages)]))
    version, docs = store.campaigns()
    book = {cid: campaign_from_doc(orjson.loads(doc), SETTINGS.scenes)[1] for cid, doc in docs.items()}
    assert sorted(book) == ["c1", "c2"] and version == worker.version == 1
    assert book["c1"].status == "paused" and book["c2"].bid == 300_000 and book["c2"].scene_mask == 0b10
    reasons = [(d["offset"], d["reason"].split(":")[0]) for d in dead]
    assert reasons == [(3, "not valid JSON"), (4, "bid 0 must be above 0 and at most 1e+06")]
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


def exposition(text: str) -> dict[str, dict[str, float]]:
    """Samples of a Prometheus text exposition ``{name: {labels: value}}``, checking its shape on the way:
    every sample belongs to a family declared with one HELP and one TYPE before it, and names are unique."""
    import re

    sample = re.compile(r'^([a-z_][a-z0-9_]*)(\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN)$')
    declared, typed, out = set(), {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in declared, f"{name} declared twice"
            declared.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert name in declared and kind in ("counter", "gauge")
            typed[name] = kind
        elif line:
            match = sample.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert name in typed, f"{name} has no TYPE before it"
            out.setdefault(name, {})[labels or ""] = float(value)
    return out


def traded_market():
    """A market that showed ads, charged one click and throttled a campaign: ``(store, market, ad)``."""
    from models.engine import Engine, SourcedEvent
    from models.events import Event
    from models.market.book import Market, MarketConfig
    from tests.models.test_market_book import CFG, campaign as ad_campaign, put

    store = MemoryStore()
    market = Market(MarketConfig(ranks=(1, 3), window_s=600.0, pacing=True), CFG.scenes)
    engine = Engine(CFG, store, market=market)
    put(store, ad_campaign("c1", ["i2", "i3", "i4", "i5"], 0.5), ad_campaign('c"2', ["i6"], 0.2))

    def batch(events, start):
        result = engine.process([SourcedEvent(Event(u, i, "click", ts), 0, start + j)
                                 for j, (u, i, ts) in enumerate(events)])
        engine.commit(result)
        return result

    first = batch([(u, f"i{j}", 100.0 + j) for u in ("u1", "u2") for j in range(10)], 0)
    ad = next(s for rec in first.recommendations for s in rec.sponsored or [] if s["campaign_id"] == "c1")
    user = next(rec.user_id for rec in first.recommendations if ad in (rec.sponsored or []))
    batch([(user, ad["item_id"], 120.0)], 20)
    # another worker's charge puts c1 ahead of an even plan for 130 s into the day: pacing throttles it
    store.write_market([], [], [("c1", 0, "elsewhere", 600_000, 10_000_000, b"{}")])
    batch([("u1", "i0", 130.0), ("u2", "i1", 131.0)], 21)
    return store, market, ad


def test_the_market_is_exported_as_prometheus_text_with_spend_fill_calibration_and_pacing():
    from streams.metrics import market_lines

    store, market, ad = traded_market()
    samples = exposition("\n".join(market_lines(market.report())) + "\n")
    report = market.report()
    ledger = sum(int(e.split(b":", 1)[0]) for e in store.ledger_entries(0, 100))
    assert ledger == ad["price_micros"] + 600_000
    assert samples["attnflow_market_revenue_total"][""] == ad["price_micros"] / 1e6   # this worker's charges
    assert samples["attnflow_market_charges_total"][""] == samples["attnflow_market_clicks_total"][""] == 1
    assert samples["attnflow_market_lists_total"][""] == 2 + 1 + 2
    filled = samples["attnflow_market_impressions_total"][""]
    offered = samples["attnflow_market_slots_offered_total"][""]
    assert samples["attnflow_market_fill_rate"][""] == filled / offered and 0 < filled <= offered
    c1, c2 = '{campaign_id="c1"}', '{campaign_id="c\\"2"}'          # label values are escaped
    assert samples["attnflow_market_campaign_charged_total"] == {c1: ad["price_micros"] / 1e6, c2: 0.0}
    # spend today is the store's: every worker's charges
    assert samples["attnflow_market_campaign_spend_today"][c1] == store.spend("c1", 0) / 1e6 == ledger / 1e6
    assert samples["attnflow_market_campaign_daily_budget"][c1] == 10.0
    assert 0 < samples["attnflow_market_campaign_pacing_pass_rate"][c1] < 1     # spent ahead of an even day
    assert samples["attnflow_market_campaign_throttled_total"][c1] == report["by_campaign"]["c1"]["throttled"]
    calibration = report["calibration"]
    assert samples["attnflow_market_calibration_impressions_total"][""] == calibration["impressions"] > 0
    assert samples["attnflow_market_calibration_ece"][""] == calibration["ece"]
    per_bin = samples["attnflow_market_calibration_bin_impressions_total"]
    assert sum(per_bin.values()) == calibration["impressions"]


def test_every_market_metric_the_dashboard_and_alerts_query_is_exported():
    """A panel or an alert rule naming an ``attnflow_market_*`` series that ``market_lines`` does not write
    fails here (tests/streams/test_dashboard.py checks every other name)."""
    from streams.metrics import market_lines
    from tests.streams.test_dashboard import METRIC, alert_exprs, exported_names, queried_metrics

    _, market, _ = traded_market()
    queried = queried_metrics(market=True)
    missing = sorted(queried - exported_names("\n".join(market_lines(market.report()))))
    assert missing == [], f"the dashboard or alerts query market metrics no worker exports: {missing}"
    watched = {"revenue_total", "charges_total", "clicks_total", "orphan_clicks_total", "impressions_total",
               "slots_offered_total", "fill_rate", "campaign_spend_today", "campaign_daily_budget",
               "campaign_pacing_pass_rate", "calibration_ece"}
    assert {f"attnflow_market_{name}" for name in watched} <= queried
    alerted = {m for expr in alert_exprs() for m in METRIC.findall(expr)}
    assert {"attnflow_market_campaign_spend_today", "attnflow_market_campaign_daily_budget",
            "attnflow_market_calibration_ece", "attnflow_market_orphan_clicks_total"} <= alerted
