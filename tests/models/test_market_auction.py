"""models/market/auction.py, calibration.py, pacing.py against slow plain-Python references."""
import math

import numpy as np
import pytest

from models.market.auction import MECHANISMS, place, run_auction
from models.market.calibration import ScoreCalibrator, pav
from models.market.pacing import can_pay, day_of, pass_rate, throttle


def reference_auction(bid, campaign, item, pctr, eligible, slots, reserve, mechanism):
    """One row at a time: sort, keep each campaign's best ad, then each item's best campaign, take the
    slots."""
    ads, prices = [], []
    for b in range(pctr.shape[0]):
        cands = []
        for m in range(len(bid)):
            if eligible[b, m] and bid[m] >= reserve and pctr[b, m] > 0:
                value = float(bid[m]) if mechanism == "bid_only" else float(bid[m]) * pctr[b, m]
                cands.append((-value, int(campaign[m]), int(item[m]), m))
        cands.sort()
        seen_campaigns, best = set(), []
        for cand in cands:
            if cand[1] not in seen_campaigns:
                seen_campaigns.add(cand[1])
                best.append(cand)
        seen_items, kept = set(), []
        for cand in best:
            if cand[2] not in seen_items:
                seen_items.add(cand[2])
                kept.append(cand)
        row_ads, row_prices = [], []
        for j in range(slots):
            if j >= len(kept):
                row_ads.append(-1); row_prices.append(0)
                continue
            m = kept[j][3]
            nxt = kept[j + 1] if j + 1 < len(kept) else None
            if mechanism == "first_price":
                raw = bid[m]
            elif mechanism == "bid_only":
                raw = bid[nxt[3]] if nxt else 0
            else:
                raw = math.ceil(-nxt[0] / pctr[b, m] - 1e-9) if nxt else 0
            row_ads.append(m); row_prices.append(int(min(max(raw, reserve), bid[m])))
        ads.append(row_ads); prices.append(row_prices)
    return np.array(ads), np.array(prices)


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("seed", range(4))
def test_the_vectorised_auction_matches_the_reference(mechanism, seed):
    rng = np.random.default_rng(seed)
    M, B, C = 40, 16, 9
    campaign = np.sort(rng.integers(0, C, M))
    item = rng.integers(0, 15, M)                       # items shared by campaigns: dedup matters
    bid = rng.choice([50, 100, 150, 200, 400], M)       # repeated bids: ties matter
    pctr = rng.choice([0.0, 0.01, 0.02, 0.05], (B, M))
    eligible = rng.random((B, M)) < 0.7
    got = run_auction(bid, campaign, item, pctr, eligible, 3, 100, mechanism)
    ads, prices = reference_auction(bid, campaign, item, pctr, eligible, 3, 100, mechanism)
    assert got.ad.tolist() == ads.tolist()
    assert got.price.tolist() == prices.tolist()
    assert (got.price[got.filled] >= 100).all() and (got.price <= np.where(got.filled, bid[got.ad], 0)).all()


def test_gsp_prices_are_the_next_value_over_the_own_pctr_floored_by_the_reserve():
    bid, campaign, item = np.array([400, 300, 100]), np.array([0, 1, 2]), np.array([5, 6, 7])
    pctr = np.array([[0.01, 0.02, 0.05]])                 # values 4, 6, 5
    a = run_auction(bid, campaign, item, pctr, np.ones((1, 3), bool), 3, 20)
    assert a.ad.tolist() == [[1, 2, 0]]
    assert a.price.tolist() == [[250, 80, 20]]             # 5/0.02, 4/0.05, nothing below: the reserve
    # a campaign's second item never takes a second slot, an item never shows twice
    a = run_auction(np.array([400, 400, 300]), np.array([0, 0, 1]), np.array([5, 6, 5]),
                    np.array([[0.05, 0.04, 0.05]]), np.ones((1, 3), bool), 2, 1)
    assert a.ad.tolist() == [[0, -1]]


def test_sponsored_items_take_their_ranks_and_organic_items_fill_the_rest_in_order():
    organic = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    items, slot = place(organic, np.array([[9, 8], [-1, -1]]), (0, 2))
    assert items.tolist() == [[9, 1, 8, 2, 3], [1, 2, 3, 4, 5]]
    assert slot.tolist() == [[0, -1, 1, -1, -1], [-1] * 5]


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_learns_click_rates_by_score_and_reports_its_reliability(method):
    rng = np.random.default_rng(1)
    true = lambda s: 1 / (1 + np.exp(-(0.8 * s - 4)))  # noqa: E731
    cal = ScoreCalibrator(prior_ctr=0.02, method=method)
    assert np.allclose(cal.predict([-5, 0, 5]), 0.02)   # before any feedback: the prior, flat in the score
    for _ in range(40):
        s = rng.normal(1, 2, 5000)
        cal.update(s, rng.random(5000) < true(s))
    grid = np.array([-2.0, 1.0, 4.0])
    assert np.allclose(cal.predict(grid), true(grid), atol=0.01)
    report = cal.reliability()
    assert report["impressions"] == 200_000 and report["ece"] < 0.01
    assert sum(row["impressions"] for row in report["bins"]) == 200_000


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_the_calibrators_memory_is_fixed_by_its_bins_whatever_it_learns(method):
    rng = np.random.default_rng(3)
    cal = ScoreCalibrator(method=method, bins=128)
    cal.update(np.zeros(1), np.zeros(1))
    size = cal.nbytes
    for _ in range(20):   # 200,000 distinct scores over any range: no per-score or per-key state
        s = rng.standard_cauchy(10_000) * 50
        cal.update(s, rng.random(10_000) < 0.01)
    assert cal.nbytes == size == cal.reliability()["memory_bytes"]
    assert size <= (3 * 128 + 128 + 30) * 8


def test_isotonic_pooling_is_monotone():
    rng = np.random.default_rng(2)
    fitted = pav(rng.random(50), rng.random(50) + 0.1)
    assert (np.diff(fitted) >= -1e-12).all()


def test_pacing_throttles_campaigns_ahead_of_plan_and_stops_those_that_cannot_pay():
    budget = np.array([1000, 1000])
    noon = 43200.0
    rate = pass_rate(np.array([400, 800]), budget, noon, gain=4.0)
    assert rate[0] == 1.0 and 0 < rate[1] < 0.5
    keys = np.arange(20_000, dtype=np.uint64)
    passed = throttle(rate, keys).mean(axis=0)
    assert passed[0] == 1.0 and abs(passed[1] - rate[1]) < 0.01
    assert (throttle(rate, keys) == throttle(rate, keys)).all()     # a replay draws the same
    assert can_pay(np.array([990, 980]), budget, np.array([20, 20])).tolist() == [False, True]
    assert day_of([86_400 * 3 + 5]).tolist() == [3]
