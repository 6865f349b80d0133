"""Seeded synthetic campaigns for the offline market simulation (``attnflow market-sim``): the documented
generator, as the auction's arrays. Pure computation over the log's item counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.market.campaigns import MICROS


@dataclass
class Campaigns:
    """Synthetic campaigns as the auction's arrays (one row per (campaign, item))."""

    advertiser: list[str]
    bid: np.ndarray          # [C] micros
    budget: np.ndarray       # [C] micros per period
    campaign: np.ndarray     # [M] campaign row of each ad row
    item: np.ndarray         # [M] dense item index of the log

    def doc(self, log) -> list[dict]:
        return [{"campaign_id": f"sim-{c}", "advertiser": self.advertiser[c],
                 "bid": self.bid[c] / MICROS, "daily_budget": self.budget[c] / MICROS,
                 "items": int((self.campaign == c).sum())}
                for c in range(len(self.bid))]


def synthetic_campaigns(item_counts: np.ndarray, n_campaigns: int = 12, seed: int = 0,
                        items_per_campaign=(10, 60), clicks_per_period=(5.0, 20.0)) -> Campaigns:
    """Seeded campaigns over a catalogue with ``item_counts`` events per item (in the replayed part).

    Each campaign (advertiser ``adv-{c % 6}``) promotes ``U(items_per_campaign)`` distinct items drawn with
    probability proportional to sqrt(count + 1) (advertisers promote items people see, not only hits); its
    bid per click is log-normal around 0.30 (sigma 0.6, clipped to 0.02..5.00); its budget per period is
    its bid times ``U(clicks_per_period)`` clicks, so that budgets bind and pacing has work to do.

    >>> c = synthetic_campaigns(np.arange(100), n_campaigns=3, seed=1)
    >>> len(c.bid), bool((c.budget >= c.bid).all()), bool(c.item.max() < 100)
    (3, True, True)
    """
    rng = np.random.default_rng(seed)
    weight = np.sqrt(np.asarray(item_counts, np.float64) + 1)
    weight /= weight.sum()
    rows, items = [], []
    bids = np.clip(np.exp(rng.normal(np.log(0.30), 0.6, n_campaigns)), 0.02, 5.0)
    for c in range(n_campaigns):
        n = min(int(rng.integers(*items_per_campaign, endpoint=True)), len(weight))
        chosen = np.sort(rng.choice(len(weight), n, replace=False, p=weight))
        rows += [c] * n
        items += chosen.tolist()
    budget = bids * rng.uniform(*clicks_per_period, n_campaigns)
    return Campaigns([f"adv-{c % 6}" for c in range(n_campaigns)], np.round(bids * MICROS).astype(np.int64),
                     np.round(budget * MICROS).astype(np.int64), np.asarray(rows, np.int32),
                     np.asarray(items, np.int32))
