"""Budget pacing: each campaign takes part in a share of its auctions so that its daily budget lasts the
day (smooth throttle), and none once what is left cannot pay a click at its bid (hard stop).

The plan is even spend over the UTC day of the event time. A campaign that has spent ``ratio`` times
its plan (``budget * (elapsed day + lookahead)``) passes with probability ``exp(-gain * (ratio - 1))``
when ahead, 1 otherwise. The draw is a hash of (row key, campaign), so a replay decides the same and
every worker throttles alike; no state besides spend, which the store holds.
"""
from __future__ import annotations

import numpy as np

DAY_S = 86_400.0


def day_of(ts, period_s: float = DAY_S) -> np.ndarray:
    """The UTC day (days since 1970) of event times ``ts``: the period a daily budget is for (``period_s``:
    another period length, as the offline simulation uses).

    >>> day_of(np.array([0.0, 86_399.9, 86_400.0])).tolist()
    [0, 0, 1]
    """
    return np.floor(np.asarray(ts, np.float64) / period_s).astype(np.int64)


def pass_rate(spent: np.ndarray, budget: np.ndarray, ts: float | np.ndarray, gain: float = 4.0,
              lookahead: float = 1 / 24, period_s: float = DAY_S) -> np.ndarray:
    """Share of auctions a campaign takes part in, from what it spent today and when ``ts`` falls in the
    day.

    >>> budget = np.array([1000, 1000, 1000])
    >>> pass_rate(np.array([0, 500, 1000]), budget, 0.5 * DAY_S - 3600).round(3).tolist()
    [1.0, 1.0, 0.018]
    """
    elapsed = (np.asarray(ts, np.float64) % period_s) / period_s
    plan = budget * np.minimum(elapsed + lookahead, 1.0)
    ahead = spent / np.maximum(plan, 1.0) - 1.0
    return np.where(ahead > 0, np.exp(-gain * ahead), 1.0)


def can_pay(spent: np.ndarray, budget: np.ndarray, bid: np.ndarray) -> np.ndarray:
    """Hard stop: a campaign bids only while what is left of its budget pays a click at its own bid.

    >>> can_pay(np.array([0, 90, 95]), np.array([100, 100, 100]), np.array([10, 10, 10])).tolist()
    [True, True, False]
    """
    return budget - spent >= bid


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each value."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def draws(row_key: np.ndarray, n_campaigns: int) -> np.ndarray:
    """``[B, C]`` uniform numbers in [0, 1), a fixed function of (row key, campaign row).

    >>> d = draws(np.array([1, 2], np.uint64), 3); d.shape, bool(((d >= 0) & (d < 1)).all())
    ((2, 3), True)
    >>> bool((draws(np.array([1], np.uint64), 3) == d[:1]).all())
    True
    """
    with np.errstate(over="ignore"):
        campaign_keys = _mix(np.arange(n_campaigns, dtype=np.uint64) + np.uint64(1))
        keys = _mix(row_key.astype(np.uint64))[:, None] ^ campaign_keys[None, :]
        return (_mix(keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def throttle(rate: np.ndarray, row_key: np.ndarray) -> np.ndarray:
    """``[B, C]`` bool: row b's auction includes campaign c (``rate`` [C] or [B, C]: ``pass_rate``)."""
    return draws(row_key, rate.shape[-1]) < rate
