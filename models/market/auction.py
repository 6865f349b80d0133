"""The sponsored-slot auction: for every row (a user's list) of a batch at once, rank the eligible ads by
bid x pCTR, give each campaign and each item at most one slot, fill ``slots`` slots and price each click.

Vectorised NumPy over ``[B, M]`` (rows x ad rows of ``models.market.campaigns.AdTable``); no per-row loop.
Mechanisms: ``gsp`` (rank by bid x pCTR, pay the least that keeps the slot: next bid x next pCTR / own
pCTR), ``first_price`` (the same ranking, pay the own bid), ``bid_only`` (rank by bid, pay the next bid).
Every price is at least the reserve and at most the own bid; ties go to the lower campaign row, then item.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MECHANISMS = ("gsp", "first_price", "bid_only")


@dataclass
class Auction:
    """Per row and slot: the winning ad row (-1: unfilled), its click price (micros), pCTR and rank value."""

    ad: np.ndarray      # [B, S] int64
    price: np.ndarray   # [B, S] int64
    pctr: np.ndarray    # [B, S] float64
    value: np.ndarray   # [B, S] float64

    @property
    def filled(self) -> np.ndarray:
        return self.ad >= 0


def first_of(keys: np.ndarray) -> np.ndarray:
    """``[B, M]`` bool: position j holds the first occurrence of its key in its row (left to right).

    >>> first_of(np.array([[3, 1, 3, 2], [5, 5, 0, 0]])).astype(int).tolist()
    [[1, 1, 0, 1], [1, 0, 1, 0]]
    """
    B, M = keys.shape
    flat = (np.arange(B, dtype=np.int64)[:, None] * (int(keys.max(initial=0)) + 1) + keys).ravel()
    out = np.zeros(B * M, bool)
    out[np.unique(flat, return_index=True)[1]] = True
    return out.reshape(B, M)


def run_auction(bid: np.ndarray, campaign: np.ndarray, item: np.ndarray, pctr: np.ndarray,
                eligible: np.ndarray, slots: int, reserve: int, mechanism: str = "gsp") -> Auction:
    """Fill ``slots`` slots per row from the ads ``eligible`` for it ([B, M]); prices in micros.

    ``bid`` [M] (micros), ``campaign`` [M], ``item`` [M]: the ad table; ``pctr`` [B, M] calibrated click
    probabilities. An ad takes part only with a bid of at least ``reserve`` and a pCTR above 0.

    >>> bid, campaign, item = np.array([100, 300, 200]), np.array([0, 1, 2]), np.array([7, 8, 9])
    >>> a = run_auction(bid, campaign, item, np.array([[0.1, 0.02, 0.05]]), np.ones((1, 3), bool), 2, 10)
    >>> a.ad.tolist(), a.price.tolist()     # values 10, 6, 10: campaign 0 wins the tie; 2 pays 6/0.05
    ([[0, 2]], [[100, 120]])
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown auction mechanism {mechanism!r}; "
                         f"expected one of {', '.join(MECHANISMS)}")
    B, M = pctr.shape
    if M == 0 or slots == 0:
        empty = np.full((B, slots), -1, np.int64)
        return Auction(empty, np.zeros((B, slots), np.int64), np.zeros((B, slots)), np.zeros((B, slots)))
    bid_f = bid.astype(np.float64)
    ok = eligible & (bid >= reserve)[None, :] & (pctr > 0)
    value = np.broadcast_to(bid_f, (B, M)).copy() if mechanism == "bid_only" else bid_f[None, :] * pctr
    value = np.where(ok, value, -np.inf)
    # rows sorted by value (descending), ties by campaign row then item: one deterministic order
    order = np.lexsort((np.broadcast_to(item, (B, M)), np.broadcast_to(campaign, (B, M)), -value), axis=-1)
    s_value = np.take_along_axis(value, order, axis=1)
    s_campaign, s_item = campaign[order], item[order]
    keep = np.isfinite(s_value) & first_of(s_campaign.astype(np.int64))        # a campaign's best ad only
    # among those, an item goes to its best campaign; the others get keys of their own, never first
    spare = int(item.max()) + 1 + np.arange(M)[None, :]
    keep &= first_of(np.where(keep, s_item.astype(np.int64), spare))
    # compact the kept ads to the front of each row (stable: their order stays), then the slots and one more
    front = np.argsort(~keep, axis=1, kind="stable")[:, :slots + 1]
    ranked = np.take_along_axis(order, front, axis=1)
    kept = np.take_along_axis(keep, front, axis=1)
    if kept.shape[1] < slots + 1:  # fewer ads than slots + 1: pad with nothing
        pad = slots + 1 - kept.shape[1]
        ranked = np.pad(ranked, ((0, 0), (0, pad)))
        kept = np.pad(kept, ((0, 0), (0, pad)))
    ad = np.where(kept, ranked, -1)
    rows = np.arange(B)[:, None]
    own_pctr = np.where(kept, pctr[rows, ranked], 0.0)
    own_value = np.where(kept, value[rows, ranked], 0.0)
    own_bid = np.where(kept, bid[ranked], 0)
    nxt_value, nxt_bid = own_value[:, 1:], own_bid[:, 1:]
    if mechanism == "gsp":
        raw = np.ceil(np.divide(nxt_value, own_pctr[:, :-1], out=np.zeros_like(nxt_value),
                                where=own_pctr[:, :-1] > 0) - 1e-9)
    elif mechanism == "first_price":
        raw = own_bid[:, :-1].astype(np.float64)
    else:
        raw = nxt_bid.astype(np.float64)
    price = np.minimum(np.maximum(raw, reserve), own_bid[:, :-1]).astype(np.int64)
    filled = kept[:, :-1]
    return Auction(ad[:, :-1], np.where(filled, price, 0), np.where(filled, own_pctr[:, :-1], 0.0),
                   np.where(filled, own_value[:, :-1], 0.0))


def place(organic: np.ndarray, sponsored: np.ndarray,
          ranks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Merge each row's sponsored items (``[B, S]``, -1: unfilled) into its organic list (``[B, K]``) at
    ``ranks`` (0-based, sorted); organic items fill what is left in their order, so an unfilled slot
    shows the next organic item. Returns the ``[B, K]`` list and ``[B, K]`` slot index (-1: organic).

    >>> items, slot = place(np.array([[10, 11, 12, 13]]), np.array([[90, -1]]), (1, 3))
    >>> items.tolist(), slot.tolist()
    ([[10, 90, 11, 12]], [[-1, 0, -1, -1]])
    """
    B, K = organic.shape
    S = sponsored.shape[1]
    at = np.asarray(ranks, np.int64)
    filled = sponsored >= 0                                           # [B, S]
    is_ad = np.zeros((B, K), bool)
    is_ad[:, at] = filled
    # organic item j goes to the j-th position that is not a filled sponsored slot
    free_rank = np.cumsum(~is_ad, axis=1) - 1                          # [B, K]: organic index shown there
    items = np.take_along_axis(organic, np.clip(free_rank, 0, K - 1), axis=1)
    slot = np.full((B, K), -1, np.int64)
    slot_of = np.broadcast_to(np.arange(S), (B, S))
    np.put_along_axis(slot, np.broadcast_to(at, (B, S)), np.where(filled, slot_of, -1), axis=1)
    items = np.where(is_ad, np.take_along_axis(np.pad(sponsored, ((0, 0), (0, K))),
                                               np.clip(slot, 0, None), axis=1), items)
    return items, slot
