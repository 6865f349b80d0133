"""Campaigns: what an advertiser buys (items, a bid per click, a daily budget, a flight, scenes) and its
validation, plus the flat arrays the auction works on (``AdTable``). Money is integer micro-units inside.

A campaign message replaces the whole campaign of its id (the last one on the topic wins); ``pause`` and
``resume`` change only its status.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MICROS = 1_000_000  # money units per currency unit: spend and prices are kept as integers of these
MAX_ID_CHARS = 512
MAX_ITEMS = 10_000
MAX_BID = 1_000_000.0
ACTIONS = ("upsert", "pause", "resume")
STATUSES = ("active", "paused")


class CampaignError(ValueError):
    """A campaign message that cannot be applied; ``str(exc)`` is the dead-letter reason."""


def to_micros(amount: float) -> int:
    """``amount`` currency units as integer micro-units (rounded half away from zero).

    >>> to_micros(0.35), to_micros(12), to_micros(1e-7)
    (350000, 12000000, 0)
    """
    return int(math.floor(abs(amount) * MICROS + 0.5)) * (1 if amount >= 0 else -1)


@dataclass(frozen=True)
class Campaign:
    """One campaign. ``bid`` and ``daily_budget`` in micro-units; ``scene_mask`` bit s: may show in
    scene s."""

    campaign_id: str
    advertiser: str
    items: tuple[str, ...]
    bid: int
    daily_budget: int
    start_ts: float = 0.0
    end_ts: float = math.inf
    scene_mask: int = 0xFFFFFFFF
    status: str = "active"

    def live(self, ts: float) -> bool:
        """Active and within its flight at event time ``ts``."""
        return self.status == "active" and self.start_ts <= ts < self.end_ts

    def to_doc(self, scenes: tuple[str, ...]) -> dict:
        """The message that recreates this campaign (``campaign_from_doc``)."""
        doc = {"campaign_id": self.campaign_id, "advertiser": self.advertiser, "items": list(self.items),
               "bid": self.bid / MICROS, "daily_budget": self.daily_budget / MICROS,
               "start_ts": self.start_ts, "status": self.status}
        if self.end_ts != math.inf:
            doc["end_ts"] = self.end_ts
        if self.scene_mask != 0xFFFFFFFF:
            doc["scenes"] = [s for i, s in enumerate(scenes) if self.scene_mask >> i & 1]
        return doc


def _text(doc: dict, name: str, required: bool = True) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise CampaignError(f"missing required field {name!r}")
        return None
    if not isinstance(value, str):
        raise CampaignError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value:
        raise CampaignError(f"field {name!r} is empty")
    if len(value) > MAX_ID_CHARS:
        raise CampaignError(f"field {name!r} is longer than {MAX_ID_CHARS} characters")
    return value


def _number(doc: dict, name: str, default: float | None = None) -> float:
    value = doc.get(name)
    if value is None:
        if default is None:
            raise CampaignError(f"missing required field {name!r}")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CampaignError(f"field {name!r} must be a finite number, got {value!r:.40}")
    return float(value)


def campaign_from_doc(doc, scenes: tuple[str, ...]) -> tuple[str, Campaign | str]:
    """``(action, campaign)`` for an upsert, ``(action, campaign_id)`` for pause / resume; else
    ``CampaignError``.

    >>> action, c = campaign_from_doc({"campaign_id": "c1", "advertiser": "acme",
    ...                                "items": ["i1", "i2", "i1"], "bid": 0.4, "daily_budget": 20,
    ...                                "scenes": ["home"]}, ("default", "home"))
    >>> action, c.items, c.bid, c.daily_budget, c.scene_mask
    ('upsert', ('i1', 'i2'), 400000, 20000000, 2)
    >>> campaign_from_doc({"campaign_id": "c1", "action": "pause"}, ("default",))
    ('pause', 'c1')
    >>> try:
    ...     campaign_from_doc({"campaign_id": "c1", "advertiser": "a", "items": ["i"], "bid": 2,
    ...                        "daily_budget": 1}, ("default",))
    ... except CampaignError as exc:
    ...     print(exc)
    daily_budget 1 is below the bid 2: the campaign could never pay a click
    """
    if not isinstance(doc, dict):
        raise CampaignError(f"campaign message must be a JSON object, got {type(doc).__name__}")
    campaign_id = _text(doc, "campaign_id")
    action = _text(doc, "action", required=False) or "upsert"
    if action not in ACTIONS:
        raise CampaignError(f"unknown campaign action {action!r}; expected one of {', '.join(ACTIONS)}")
    if action != "upsert":
        return action, campaign_id
    advertiser = _text(doc, "advertiser")
    items = doc.get("items")
    if items is None:
        raise CampaignError("missing required field 'items'")
    if not isinstance(items, list) or not all(isinstance(i, str) and 0 < len(i) <= MAX_ID_CHARS
                                              for i in items):
        raise CampaignError("field 'items' must be a list of item ids (non-empty strings)")
    if not items:
        raise CampaignError("field 'items' is empty: a campaign promotes at least one item")
    if len(items) > MAX_ITEMS:
        raise CampaignError(f"field 'items' lists {len(items)} items; at most {MAX_ITEMS}")
    bid, budget = _number(doc, "bid"), _number(doc, "daily_budget")
    if not 0 < bid <= MAX_BID:
        raise CampaignError(f"bid {bid:g} must be above 0 and at most {MAX_BID:g}")
    if to_micros(bid) == 0:
        raise CampaignError(f"bid {bid:g} is below one micro-unit")
    if budget < bid:
        raise CampaignError(f"daily_budget {budget:g} is below the bid {bid:g}: "
                            "the campaign could never pay a click")
    start = _number(doc, "start_ts", 0.0)
    end = _number(doc, "end_ts", math.inf) if doc.get("end_ts") is not None else math.inf
    if start < 0:
        raise CampaignError(f"start_ts {start:g} is before 1970 (Unix seconds expected)")
    if not end > start:
        raise CampaignError(f"end_ts {end:g} is not after start_ts {start:g}")
    status = _text(doc, "status", required=False) or "active"
    if status not in STATUSES:
        raise CampaignError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
    listed = doc.get("scenes")
    mask = 0xFFFFFFFF
    if listed is not None:
        if not isinstance(listed, list) or not listed or not all(isinstance(s, str) for s in listed):
            raise CampaignError("field 'scenes' must be a non-empty list of scene names")
        mask = 0
        for scene in listed:
            if scene not in scenes:
                raise CampaignError(f"unknown scene {scene!r}; configured scenes: {', '.join(scenes)} "
                                    "(ATTNFLOW_SCENES)")
            mask |= 1 << scenes.index(scene)
    return action, Campaign(campaign_id, advertiser, tuple(dict.fromkeys(items)), to_micros(bid),
                            to_micros(budget), start, end, mask, status)


def apply_message(book: dict[str, Campaign], action: str, value) -> dict[str, Campaign]:
    """The campaigns after one message (a new dict; pause / resume of an unknown id changes nothing).

    >>> c = Campaign("c1", "a", ("i",), 1, 1)
    >>> apply_message(apply_message({}, "upsert", c), "pause", "c1")["c1"].status
    'paused'
    """
    out = dict(book)
    if action == "upsert":
        out[value.campaign_id] = value
    elif value in out:
        old = out[value]
        out[value] = Campaign(old.campaign_id, old.advertiser, old.items, old.bid, old.daily_budget,
                              old.start_ts, old.end_ts, old.scene_mask,
                              "paused" if action == "pause" else "active")
    return out


@dataclass
class AdTable:
    """Every (campaign, item) pair as flat arrays, the auction's candidates; rows grouped by campaign.

    ``item`` holds the engine's dense item indices (-1: an item the catalogue does not know yet).

    >>> table = AdTable.build([Campaign("b", "x", ("i2",), 5, 50), Campaign("a", "y", ("i1", "i2"), 3, 30)],
    ...                       {"i1": 0, "i2": 1}.get)
    >>> table.ids, table.campaign.tolist(), table.item.tolist(), table.bid.tolist()
    (['a', 'b'], [0, 0, 1], [0, 1, 1], [3, 3, 5])
    """

    campaigns: list[Campaign] = field(default_factory=list)   # sorted by id: row c is campaign c
    campaign: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))   # [M] its campaign's row
    item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))       # [M]
    bid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))        # [M] micros

    @property
    def ids(self) -> list[str]:
        return [c.campaign_id for c in self.campaigns]

    def __len__(self) -> int:
        return len(self.item)

    @classmethod
    def build(cls, campaigns, item_index) -> "AdTable":
        """``item_index(item_id)`` gives a dense index or None (unknown items are left out)."""
        ordered = sorted(campaigns, key=lambda c: c.campaign_id)
        rows, items = [], []
        for row, c in enumerate(ordered):
            for item in c.items:
                index = item_index(item)
                if index is not None:
                    rows.append(row)
                    items.append(index)
        campaign = np.asarray(rows, np.int32)
        bids = np.asarray([c.bid for c in ordered], np.int64)
        return cls(ordered, campaign, np.asarray(items, np.int32), bids[campaign] if len(campaign) else
                   np.zeros(0, np.int64))

    def campaign_arrays(self) -> dict[str, np.ndarray]:
        """Per-campaign budget (micros), flight and scene mask, for pacing and eligibility."""
        cs = self.campaigns
        return {"budget": np.asarray([c.daily_budget for c in cs], np.int64),
                "start": np.asarray([c.start_ts for c in cs], np.float64),
                "end": np.asarray([c.end_ts for c in cs], np.float64),
                "scene_mask": np.asarray([c.scene_mask for c in cs], np.uint32),
                "active": np.asarray([c.status == "active" for c in cs], bool)}
