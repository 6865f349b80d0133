"""The market's glue in the engine: per batch, read spend and the users' last shown sponsored lists, turn
events on shown sponsored items into charges, learn pCTR from what users did with their lists, sell the
sponsored slots of the new lists, and keep what was shown for the next batch.

Calls the store only through ``read_market`` / ``campaigns`` (in ``trade``) and ``write_market`` (in
``commit``, which the engine runs before its state write, so a replay of a committed batch is skipped
with its charges already in). A charge's id is a hash of the list's id (user and the fence of the event
that produced it), the item, the campaign and the price: a replay or a zombie computes the same id, and
the store applies each id once.
"""
from __future__ import annotations

import hashlib
import logging
import struct
import threading
from dataclasses import dataclass, field

import numpy as np
import orjson

from models.market.auction import place, run_auction
from models.market.calibration import ScoreCalibrator
from models.market.campaigns import MICROS, AdTable, campaign_from_doc
from models.market.pacing import can_pay, day_of, pass_rate, throttle
from models.market.scoring import bucket, score_items
from models.state import NO_ITEM
from models.store import TRANSIENT_ERRORS

SHOWN_MAGIC = b"AFSH"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarketConfig:
    """``ranks``: 0-based positions of the sponsored slots; money in micros."""

    ranks: tuple[int, ...]
    reserve: int = 10_000
    window_s: float = 1800.0
    pacing: bool = True
    gain: float = 4.0
    prior_ctr: float = 0.01
    mechanism: str = "gsp"
    # an ad needs a pCTR of at least quality_floor x that of the organic item it pushes off the first
    # quality_rank positions (0: no floor); see docs/results/market.json for the trade-off
    quality_floor: float = 0.0
    quality_rank: int = 10

    @property
    def slots(self) -> int:
        return len(self.ranks)


def charge_id(rec_id: str, item_id: str, campaign_id: str, price: int) -> str:
    """Deterministic id of the charge for a click on ``item_id`` shown in list ``rec_id``.

    >>> charge_id("u1@0:17:0", "i9", "c1", 120000)
    'f3c90348c35727e56caf9b1a'
    """
    return hashlib.sha256(f"{rec_id}|{item_id}|{campaign_id}|{price}".encode()).hexdigest()[:24]


def shown_value(partition: int, offset: int, index: int, doc: dict) -> bytes:
    """A user's shown list as the store keeps it: fence header (``models.store._WRITE_SHOWN``), then JSON."""
    return SHOWN_MAGIC + struct.pack("<iqH", partition, offset, index) + orjson.dumps(doc)


def shown_fence(value: bytes) -> tuple[int, int, int]:
    return struct.unpack("<iqH", value[4:18])


def _newer(pending: bytes | None, stored: bytes | None) -> bytes | None:
    if pending is None or stored is None:
        return pending or stored
    (pp, po, pi), (sp, so, si) = shown_fence(pending), shown_fence(stored)
    return stored if pp == sp and (so, si) >= (po, pi) else pending


@dataclass
class MarketBatch:
    """What one batch decided: shown lists and charges to write, the sponsored entries of each row."""

    users: list[str] = field(default_factory=list)
    shown: list[bytes] = field(default_factory=list)
    charges: list[tuple] = field(default_factory=list)   # store.write_market's charges
    sponsored: list[list[dict] | None] = field(default_factory=list)
    impressions: int = 0
    clicks: int = 0
    orphans: int = 0                                       # clicks on ads of campaigns no longer in the book
    charged: list[int] = field(default_factory=list)       # micros charged per charge, once committed


class Market:
    """Campaigns, calibration and the pending shown lists of one engine."""

    def __init__(self, cfg: MarketConfig, scenes: tuple[str, ...], calibrator: ScoreCalibrator | None = None):
        self.cfg = cfg
        self.scenes = scenes
        self.calibrator = calibrator or ScoreCalibrator(prior_ctr=cfg.prior_ctr)
        self.version = -1
        self.campaigns: list = []
        self.table = AdTable()
        self._table_items = -1
        self._pending: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.stats = {"lists": 0, "offered_slots": 0, "filled_slots": 0, "clicks": 0, "charges": 0,
                      "charged_micros": 0, "orphan_clicks": 0}
        # per campaign of the current book only (pruned when the campaigns change): memory bounded by the book
        self.by_campaign: dict[str, dict] = {}
        self.warmed: list[tuple[int, int]] = []   # (rows bucket, items bucket) compiled by warmup

    # ---- campaigns -------------------------------------------------------------------------------

    def _refresh(self, engine, version: int) -> None:
        if version != self.version:
            version, docs = engine.store.campaigns()
            self.campaigns = [campaign_from_doc(orjson.loads(doc), self.scenes)[1] for doc in docs.values()]
            self.version, self._table_items = version, -1
            self.by_campaign = {c.campaign_id: self.by_campaign.get(c.campaign_id) or _campaign_counters(c)
                                for c in self.campaigns}
            for c in self.campaigns:
                self.by_campaign[c.campaign_id].update(daily_budget_micros=c.daily_budget, status=c.status)
        if self._table_items != engine.n_items:  # items the catalogue learned since join the table
            self.table = AdTable.build(self.campaigns, engine._index.get)
            self._table_items = engine.n_items

    def warmup(self, engine, interest, weight, ranks, rows_bucket: int) -> None:
        """Compile the scoring kernel for a rows bucket and the campaigns' item bucket as the book stands
        (the smallest when there is none), as ``Engine.warmup`` does the ranking kernel's: the first
        sponsored batch then waits on no compile. ``interest`` / ``weight`` / ``ranks``: the warm-up's."""
        try:
            self._refresh(engine, engine.store.campaigns()[0])
        except TRANSIENT_ERRORS as exc:  # the store may not be reachable yet: the first batch reads it
            log.warning("campaigns not readable during warm-up (%s): warming the smallest item bucket", exc)
        n_items = len(np.unique(self.table.item)) if len(self.table) else 1
        rows = np.arange(n_items, dtype=np.int32) % engine.params.item_emb.shape[0]
        score_items(engine.params, interest, weight, ranks, rows, rows_bucket)
        self.warmed.append((rows_bucket, bucket(n_items)))

    # ---- one batch -------------------------------------------------------------------------------

    def trade(self, engine, applied, dense, last_source, now, scene, ranks, interest, weight, bucket: int,
              top_items: np.ndarray, top_scores: np.ndarray):
        """The lists with their sponsored slots filled ``([B, K] items, [B, K] scores, MarketBatch)``."""
        cfg = self.cfg
        users = [s.event.user_id for s in last_source]
        B, K = top_items.shape
        days = np.unique(day_of(now))
        with self._lock:
            pending = [self._pending.get(u) for u in users]
        ids = [c.campaign_id for c in self.campaigns]
        read = engine.store.read_market(users, [(cid, int(d)) for cid in ids for d in days])
        self._refresh(engine, read.campaigns_version)
        batch = MarketBatch(users=users)
        shown = [_newer(p, s) for p, s in zip(pending, read.shown)]
        spend_of = dict(zip([(cid, int(d)) for cid in ids for d in days], read.spend))
        self._clicks_and_labels(engine, applied, dense, users, shown, spend_of, batch)

        table, C = self.table, len(self.table.campaigns)
        items, scores = top_items, top_scores
        sold = None
        if len(table) and C:
            unique, inverse = np.unique(table.item, return_inverse=True)
            ad_scores = score_items(engine.params, interest, weight, ranks, unique,
                                    bucket)[:, inverse]                                    # [B, M]
            pctr = self.calibrator.predict(ad_scores)
            arrays = table.campaign_arrays()
            campaign_ids = [c.campaign_id for c in table.campaigns]
            by_day = np.array([[spend_of.get((cid, int(d)), 0) for d in days] for cid in campaign_ids],
                              np.int64)
            spent = by_day[:, np.searchsorted(days, day_of(now))].T                          # [B, C]
            live = (arrays["active"][None, :] & (arrays["start"][None, :] <= now[:, None])
                    & (now[:, None] < arrays["end"][None, :])
                    & ((arrays["scene_mask"][None, :] >> scene.astype(np.uint32)[:, None]) & 1).astype(bool))
            bids = np.array([c.bid for c in table.campaigns], np.int64)
            live &= can_pay(spent, arrays["budget"][None, :], bids[None, :])
            rate, throttled = np.ones((B, C)), np.zeros_like(live)
            if cfg.pacing:
                keys = np.array([(s.partition << 48) ^ (s.offset << 8) ^ (getattr(s, "index", 0) or 0)
                                 for s in last_source], np.int64).astype(np.uint64)
                rate = pass_rate(spent, arrays["budget"][None, :], now[:, None], cfg.gain)
                throttled = live & ~throttle(rate, keys)
            self._note_pacing(campaign_ids, by_day[:, -1], rate, live, throttled)
            live &= ~throttled
            item_scene = engine.item_scenes()[table.item]                                    # [M]
            in_scene = ((item_scene[None, :] >> scene.astype(np.uint32)[:, None]) & 1).astype(bool)
            eligible = live[:, table.campaign] & in_scene
            # not shown organically, not excluded for the user
            eligible &= ~(table.item[None, :, None] == top_items[:, None, :]).any(axis=2)
            eligible &= ~(table.item[None, :, None] == ranks.exclude[:, None, :]).any(axis=2)
            if cfg.quality_floor:
                displaced = top_scores[:, min(cfg.quality_rank, K) - 1]
                eligible &= pctr >= cfg.quality_floor * self.calibrator.predict(displaced)[:, None]
            sold = run_auction(table.bid, table.campaign, table.item, pctr, eligible, cfg.slots, cfg.reserve,
                               cfg.mechanism)
            ad_item = np.where(sold.filled, table.item[np.maximum(sold.ad, 0)], -1)
            items, slot = place(top_items, ad_item, cfg.ranks)
            ad_score = np.take_along_axis(ad_scores, np.maximum(sold.ad, 0), axis=1)
            organic_scores, _ = place(top_scores, np.full_like(ad_score, -1), cfg.ranks)
            scores = np.where(slot >= 0, np.take_along_axis(np.pad(ad_score, ((0, 0), (0, K))),
                                                            np.maximum(slot, 0), axis=1), organic_scores)
            if not sold.filled.any():
                items, scores = top_items, top_scores  # nothing sold: the organic lists exactly
        self._keep_shown(engine, users, last_source, now, scene, items, scores, sold, batch)
        return items, scores, batch

    def _note_pacing(self, campaign_ids, spent_today, rate, live, throttled) -> None:
        """Per campaign: the store's spend on the batch's latest day (as read), the mean pacing pass rate
        over the rows it could have entered, and how many auctions pacing kept it out of."""
        entered = live.sum(axis=0)
        mean_rate = np.where(entered > 0, (rate * live).sum(axis=0) / np.maximum(entered, 1), np.nan)
        for c, cid in enumerate(campaign_ids):
            counters = self.by_campaign.get(cid)
            if counters is None:
                continue
            counters["spend_today_micros"] = int(spent_today[c])
            counters["throttled"] += int(throttled[:, c].sum())
            if entered[c]:
                counters["pacing_pass_rate"] = float(mean_rate[c])

    def _clicks_and_labels(self, engine, applied, dense, users, shown, spend_of, batch: MarketBatch) -> None:
        """Charges for events on sponsored items of the list each user was last shown (within the window, and
        after it), and calibration from the first event after each list: which of its items it was on."""
        docs = [orjson.loads(v[18:]) if v is not None else None for v in shown]
        fences = [shown_fence(v) if v is not None else None for v in shown]
        label_scores, label_clicks, first_seen = [], [], set()
        by_id = {c.campaign_id: c for c in self.campaigns}
        for (row, sourced), b in zip(applied, dense.tolist()):
            doc, fence = docs[b], fences[b]
            if doc is None:
                continue
            event = sourced.event
            position = (sourced.partition, sourced.offset, getattr(sourced, "index", 0) or 0)
            if fence[0] == position[0] and fence[1:] >= position[1:]:
                continue  # a list from after this event (its batch was committed before a crash)
            age = event.ts - doc["ts"]
            if not 0 <= age <= self.cfg.window_s:
                continue
            index = engine._index.get(event.item_id, NO_ITEM)
            if b not in first_seen:
                first_seen.add(b)
                listed = np.asarray(doc["items"])
                label_scores.append(np.asarray(doc["scores"])[listed >= 0])
                label_clicks.append(listed[listed >= 0] == index)
            for rank, item, campaign_id, price, pctr in doc["ads"]:
                if item != index:
                    continue
                campaign = by_id.get(campaign_id)
                if campaign is None:  # no advertiser to bill, no budget to cap at: not charged
                    batch.orphans += 1
                    continue
                day = int(day_of(event.ts))
                cid = charge_id(doc["rec"], event.item_id, campaign_id, price)
                record = {"charge_id": cid, "campaign_id": campaign_id,
                          "advertiser": campaign.advertiser, "user_id": event.user_id,
                          "item_id": event.item_id, "rec_id": doc["rec"], "rank": rank + 1,
                          "price_micros": price, "price": price / MICROS, "pctr": pctr, "shown_ts": doc["ts"],
                          "click_ts": event.ts,
                          "click_type": event.type, "event_id": event.event_id, "day": day,
                          "source": {"partition": position[0], "offset": position[1], "index": position[2]}}
                batch.charges.append((campaign_id, day, cid, price, campaign.daily_budget,
                                      orjson.dumps(record)))
                batch.clicks += 1
        if label_scores:
            self.calibrator.update(np.concatenate(label_scores), np.concatenate(label_clicks))

    def _keep_shown(self, engine, users, last_source, now, scene, items, scores, sold,
                    batch: MarketBatch) -> None:
        ads_by_row = [[] for _ in users]
        if sold is not None:
            b_idx, s_idx = np.nonzero(sold.filled)
            table = self.table
            for b, s in zip(b_idx.tolist(), s_idx.tolist()):
                ad = int(sold.ad[b, s])
                campaign_id = table.campaigns[table.campaign[ad]].campaign_id
                ads_by_row[b].append((self.cfg.ranks[s], int(table.item[ad]), campaign_id,
                                      int(sold.price[b, s]), round(float(sold.pctr[b, s]), 6)))
        ids = engine._item_ids()
        for b, (user, source) in enumerate(zip(users, last_source)):
            index = getattr(source, "index", 0) or 0
            rec = f"{user}@{source.partition}:{source.offset}:{index}"
            ads = ads_by_row[b]
            doc = {"rec": rec, "ts": float(now[b]), "items": items[b].tolist(),
                   "scores": np.round(scores[b].astype(np.float64), 5).tolist(), "ads": ads}
            batch.shown.append(shown_value(source.partition, source.offset, index, doc))
            batch.sponsored.append([{"rank": r + 1, "item_id": ids[i], "campaign_id": c, "price": p / MICROS,
                                     "price_micros": p, "pctr": q, "rec_id": rec}
                                    for r, i, c, p, q in ads] or None)
            batch.impressions += len(ads)
        with self._lock:
            self._pending.update(zip(batch.users, batch.shown))
        self.stats["lists"] += len(users)
        self.stats["offered_slots"] += len(users) * self.cfg.slots
        self.stats["filled_slots"] += batch.impressions

    def annotate(self, recommendations, batch: MarketBatch) -> None:
        """Mark the sponsored entries of the batch's recommendations (campaign id and price)."""
        for rec, sponsored in zip(recommendations, batch.sponsored):
            rec.sponsored = sponsored

    def commit(self, store, batch: MarketBatch) -> None:
        """Fenced write of the shown lists and the charges (each charge id once), before the states."""
        _, batch.charged = store.write_market(batch.users, batch.shown, batch.charges)
        self.stats["clicks"] += batch.clicks
        self.stats["orphan_clicks"] += batch.orphans
        self.stats["charges"] += sum(1 for c in batch.charged if c)
        self.stats["charged_micros"] += sum(batch.charged)
        for (campaign_id, *_), amount in zip(batch.charges, batch.charged):
            counters = self.by_campaign.get(campaign_id)
            if counters is not None and amount:
                counters["charges"] += 1
                counters["charged_micros"] += amount
        with self._lock:
            for user, value in zip(batch.users, batch.shown):
                if self._pending.get(user) is value:
                    del self._pending[user]

    def discard(self) -> None:
        with self._lock:
            self._pending.clear()

    def report(self) -> dict:
        """Counters, per-campaign spend and pacing, and the calibration's reliability (the worker's /stats
        and, through ``streams.metrics.market_lines``, /metrics)."""
        offered = self.stats["offered_slots"]
        return {**self.stats, "fill_rate": self.stats["filled_slots"] / offered if offered else None,
                "campaigns": len(self.campaigns),
                "by_campaign": {cid: dict(c) for cid, c in self.by_campaign.items()},
                "calibration": self.calibrator.reliability()}


def _campaign_counters(campaign) -> dict:
    return {"daily_budget_micros": campaign.daily_budget, "status": campaign.status, "spend_today_micros": 0,
            "charges": 0, "charged_micros": 0, "throttled": 0, "pacing_pass_rate": None}
