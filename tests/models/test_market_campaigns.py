"""models/market/campaigns.py: campaign validation (each refusal has a reason) and the auction's ad table."""
import math

import pytest

from models.market.campaigns import AdTable, Campaign, CampaignError, apply_message, campaign_from_doc

SCENES = ("default", "home", "search")
GOOD = {"campaign_id": "c1", "advertiser": "acme", "items": ["i1", "i2"], "bid": 0.5, "daily_budget": 10.0}


def test_a_full_campaign_round_trips_through_its_message():
    doc = {**GOOD, "start_ts": 100.0, "end_ts": 200.0, "scenes": ["home", "search"], "status": "paused"}
    action, campaign = campaign_from_doc(doc, SCENES)
    assert action == "upsert" and campaign.scene_mask == 0b110 and campaign.status == "paused"
    assert campaign_from_doc(campaign.to_doc(SCENES), SCENES) == ("upsert", campaign)
    assert not campaign.live(150.0)
    live = apply_message({"c1": campaign}, "resume", "c1")["c1"]
    assert live.live(150.0) and not live.live(99.0) and not live.live(200.0)
    assert campaign_from_doc(GOOD, SCENES)[1].end_ts == math.inf


@pytest.mark.parametrize("change, reason", [
    ({"campaign_id": None}, "missing required field 'campaign_id'"),
    ({"advertiser": 3}, "field 'advertiser' must be a string"),
    ({"items": "i1"}, "field 'items' must be a list of item ids"),
    ({"items": []}, "field 'items' is empty"),
    ({"bid": -1}, "bid -1 must be above 0"),
    ({"bid": "1"}, "field 'bid' must be a finite number"),
    ({"bid": float("nan")}, "field 'bid' must be a finite number"),
    ({"bid": True}, "field 'bid' must be a finite number"),
    ({"daily_budget": 0.1}, "daily_budget 0.1 is below the bid 0.5"),
    ({"end_ts": 0}, "end_ts 0 is not after start_ts 0"),
    ({"start_ts": -5}, "start_ts -5 is before 1970"),
    ({"scenes": ["moon"]}, "unknown scene 'moon'"),
    ({"scenes": []}, "field 'scenes' must be a non-empty list"),
    ({"status": "gone"}, "unknown status 'gone'"),
    ({"action": "delete"}, "unknown campaign action 'delete'"),
])
def test_each_bad_campaign_is_refused_with_its_reason(change, reason):
    doc = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(CampaignError, match=reason.replace("(", r"\(")):
        campaign_from_doc(doc, SCENES)


def test_pause_and_resume_need_only_the_id_and_leave_unknown_campaigns_alone():
    assert campaign_from_doc({"campaign_id": "c9", "action": "resume"}, SCENES) == ("resume", "c9")
    assert apply_message({}, "pause", "c9") == {}


def test_the_ad_table_lists_known_items_per_campaign_in_id_order():
    index = {"a": 0, "b": 1}
    table = AdTable.build([Campaign("z", "x", ("a", "unknown"), 7, 70),
                           Campaign("m", "y", ("b", "a"), 2, 20)], index.get)
    assert table.ids == ["m", "z"]
    rows = list(zip(table.campaign.tolist(), table.item.tolist(), table.bid.tolist()))
    assert rows == [(0, 1, 2), (0, 0, 2), (1, 0, 7)]
    assert table.campaign_arrays()["budget"].tolist() == [20, 70]
