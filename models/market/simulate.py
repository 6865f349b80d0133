"""``attnflow market-sim DATASET``: the attention market replayed offline on a real log, several market
designs side by side in one run, against the same organic lists.

The attention model (``models.attention``, the evaluator's ``recommend`` / ``learn`` interface) replays
the log in time order in user-unique micro-batches: before each event it ranks the user's top-K organic
list from the pre-event state; every market design then fills its sponsored slots
(``models.market.auction``) over synthetic campaigns (:func:`synthetic_campaigns`), and the event itself is
the user's response to that list: an event on a sponsored item is a click, charged at its price (capped at
what is left of the budget).
Then the model learns from the event; what was shown never changes what it learns, so the designs differ
only in their slots. Budgets are per period: an equal share of the replayed events (``--periods``), the
market's clock being the event count, so that an even plan is even over traffic.

A design may assume a position effect (``examined``): an event on an ad is then a click only if a draw
(the same for every design) falls below :func:`examination` of its rank; lists and pCTR labels are as in
the others.

Reports per design: revenue (and the part from the first eval_k positions), clicks, fill rate, mean
price, overspend, spend vs budget over each period (pacing smoothness), HR@10 / NDCG@10 of the organic
entries and of the shown list vs the organic lists alone (S=0, with its hits per position), and the
calibration's reliability; writes ``docs/results/market.json`` and a spend plot
(:mod:`models.market.plot`).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import batching
from models.market.auction import place, run_auction
from models.market.calibration import ScoreCalibrator
from models.market.campaigns import MICROS
from models.market.pacing import DAY_S, can_pay, draws, pass_rate, throttle
from models.market.plot import plot
from models.market.scoring import score_items
from models.market.synthetic import Campaigns, synthetic_campaigns

DEFAULT_OUT = "docs/results/market.json"
# name -> the design: mechanism, pacing, and optionally 1-based slot ranks other than the run's, a quality
# floor (an ad needs a pCTR of at least floor x that of the organic item it pushes off the first eval_k
# positions), a pacing gain other than the run's, and ``examined``: an event on an ad at rank r is a click
# only with probability examination(r) (a position effect the log cannot show; see :func:`examination`)
DESIGNS = {
    "gsp_attention_paced": {"mechanism": "gsp", "pacing": True},
    "gsp_attention": {"mechanism": "gsp", "pacing": False},
    "first_price_paced": {"mechanism": "first_price", "pacing": True},
    "first_price": {"mechanism": "first_price", "pacing": False},
    "bid_only_paced": {"mechanism": "bid_only", "pacing": True},
    "bid_only": {"mechanism": "bid_only", "pacing": False},
    "gsp_attention_paced_ranks_10_20": {"mechanism": "gsp", "pacing": True, "ranks": (10, 20)},
    "gsp_attention_paced_ranks_15_20": {"mechanism": "gsp", "pacing": True, "ranks": (15, 20)},
    "gsp_attention_paced_gain_16": {"mechanism": "gsp", "pacing": True, "gain": 16.0},
    "gsp_attention_paced_floor_0.8": {"mechanism": "gsp", "pacing": True, "floor": 0.8},
    "gsp_attention_paced_floor_0.9": {"mechanism": "gsp", "pacing": True, "floor": 0.9},
    "gsp_attention_paced_examined": {"mechanism": "gsp", "pacing": True, "examined": True},
    "gsp_attention_paced_ranks_15_20_examined": {"mechanism": "gsp", "pacing": True, "ranks": (15, 20),
                                                 "examined": True},
    "bid_only_paced_examined": {"mechanism": "bid_only", "pacing": True, "examined": True},
}


def examination(rank: np.ndarray) -> np.ndarray:
    """Chance that a user looks at 1-based ``rank``: DCG's discount ``1 / log2(rank + 1)``, an assumed
    position effect (the log was not produced by these lists, so it cannot measure one).

    >>> examination(np.array([1, 3, 15])).round(3).tolist()
    [1.0, 0.5, 0.25]
    """
    return 1.0 / np.log2(np.asarray(rank, np.float64) + 1.0)


@dataclass
class Design:
    """One market design's running state and counters."""

    name: str
    mechanism: str
    pacing: bool
    ranks: tuple[int, ...]                              # 0-based slot positions
    floor: float
    gain: float
    examined: bool
    calibrator: ScoreCalibrator
    spent: np.ndarray                                   # [P, C] micros
    revenue: int = 0
    clicks: int = 0
    revenue_top: int = 0                                # from ad clicks within the first eval_k positions
    clicks_top: int = 0
    offered: int = 0
    filled: int = 0
    hits: dict = field(default_factory=lambda: {"shown_hr": 0.0, "shown_ndcg": 0.0, "organic_hr": 0.0,
                                                "organic_ndcg": 0.0, "sponsored_hr": 0.0})
    charges: list = field(default_factory=list)        # (period, fraction of period, campaign, micros)


def _at_k(rank: np.ndarray, k: int) -> tuple[float, float]:
    """Sums of HR@k and NDCG@k over events with 1-based ``rank`` (0: not in the list)."""
    hit = (rank > 0) & (rank <= k)
    return float(hit.sum()), float((hit / np.log2(np.maximum(rank, 1) + 1.0)).sum())


def simulate(log, model, campaigns: Campaigns, designs=DESIGNS, k: int = 20, ranks=(4, 14),
             reserve: int = 10_000, periods: int = 5, batch: int = 256, prior_ctr: float = 0.01,
             gain: float = 4.0, eval_k: int = 10, progress: bool = False) -> dict:
    """Replay ``log`` through ``model`` once and every design in ``designs`` beside it (see the module)."""
    from tqdm import tqdm

    model.trainer.ensure_capacity(log.n_items)  # every campaign item has a row to score
    # the market's clock is the event count: a budget period is an equal share of the replayed events, and
    # the even plan is even over traffic (a perfect traffic forecast; the log's own time is bursty)
    period_events = len(log) / periods
    C = len(campaigns.bid)
    state = {name: Design(name, spec["mechanism"], spec["pacing"],
                          tuple(r - 1 for r in spec.get("ranks") or [r + 1 for r in ranks]),
                          spec.get("floor", 0.0), spec.get("gain", gain), bool(spec.get("examined")),
                          ScoreCalibrator(prior_ctr=prior_ctr), np.zeros((periods, C), np.int64))
             for name, spec in designs.items()}
    for design in state.values():
        if not all(0 <= r < k for r in design.ranks):
            raise ValueError(f"design {design.name}: sponsored ranks {[r + 1 for r in design.ranks]} "
                             f"must be in 1..{k}")
    organic = {"hr": 0.0, "ndcg": 0.0}
    organic_hits_by_rank = np.zeros(eval_k, np.int64)   # S=0 hits per position 1..eval_k
    seen_by_user: dict[int, set] = {}
    exclude_seen = bool(log.extra.get("exclude_seen", False))
    known = np.zeros(log.n_items, bool)
    spend_curve = {name: [] for name in designs}                      # (event index, cumulative revenue)
    bounds = np.unique(np.r_[np.arange(0, len(log), batch), len(log)])
    started = time.perf_counter()
    n_events = 0
    for start, stop in tqdm(list(zip(bounds[:-1], bounds[1:])), disable=not progress, desc="market-sim",
                            mininterval=5.0):
        users, items, types = log.user[start:stop], log.item[start:stop], log.type[start:stop]
        scenes, ts = log.scene[start:stop], log.ts[start:stop]
        B = len(users)
        # each event's pre-event history (users may repeat: the model's own fused path), scored first,
        # then ranked and learned by the model (recommend_then_learn ranks before it learns)
        scoring = _pre_event_inputs(model, users, items, types, scenes, ts)
        # attention scores of the whole (small) catalogue for each event, before the model learns from it
        everything = np.arange(log.n_items, dtype=np.int32)
        scores = score_items(model.params, *scoring, everything, model.cfg.bucket(B))           # [B, N]
        ad_scores = scores[:, campaigns.item]                                                    # [B, M]
        lists = np.asarray(model.recommend_then_learn(users, items, types, scenes, ts, k))  # [B, K]
        rank0 = 1 + np.argmax(lists == items[:, None], axis=1)
        rank0 = np.where((lists == items[:, None]).any(axis=1), rank0, 0)
        hr, ndcg = _at_k(rank0, eval_k)
        organic["hr"] += hr; organic["ndcg"] += ndcg
        organic_hits_by_rank += np.bincount(rank0[(rank0 > 0) & (rank0 <= eval_k)] - 1, minlength=eval_k)
        list_scores = np.where(lists >= 0, np.take_along_axis(scores, np.maximum(lists, 0), axis=1), 0.0)
        base = (~(campaigns.item[None, :, None] == lists[:, None, :]).any(axis=2)
                & known[campaigns.item][None, :])
        if exclude_seen:
            for b, u in enumerate(users.tolist()):
                seen = seen_by_user.get(u)
                if seen:
                    base[b] &= ~np.isin(campaigns.item, list(seen))
        when = np.arange(start, stop) / period_events
        period = np.minimum(when.astype(np.int64), periods - 1)
        frac = when - period
        keys = (np.arange(start, stop, dtype=np.uint64) * np.uint64(2654435761)) ^ np.uint64(12345)
        looks = draws(keys ^ np.uint64(0x5EED), 1)[:, 0]   # one draw per event, the same in every design
        for design in state.values():
            spent = design.spent[period]                                                     # [B, C]
            live = can_pay(spent, campaigns.budget[None, :], campaigns.bid[None, :])
            if design.pacing:
                rate = pass_rate(spent, campaigns.budget[None, :], frac[:, None] * DAY_S, design.gain)
                live &= throttle(rate, keys)
            pctr = design.calibrator.predict(ad_scores)
            if design.floor:  # the organic item an ad would push off the first eval_k positions sets a floor
                pushed_off = design.calibrator.predict(list_scores[:, min(eval_k, k) - 1])
                live_ads = pctr >= design.floor * pushed_off[:, None]
            else:
                live_ads = True
            sold = run_auction(campaigns.bid[campaigns.campaign], campaigns.campaign, campaigns.item, pctr,
                               base & live[:, campaigns.campaign] & live_ads, len(design.ranks), reserve,
                               design.mechanism)
            ad_item = np.where(sold.filled, campaigns.item[np.maximum(sold.ad, 0)], -1)
            shown, slot = place(lists, ad_item, design.ranks)
            design.offered += B * len(design.ranks)
            design.filled += int(sold.filled.sum())
            at = shown == items[:, None]
            rank = np.where(at.any(axis=1), 1 + np.argmax(at, axis=1), 0)
            on_ad = np.take_along_axis(slot, np.maximum(rank - 1, 0)[:, None], axis=1)[:, 0] >= 0
            for name, r in (("shown", rank), ("organic", np.where(on_ad, 0, rank))):
                hr, ndcg = _at_k(r, eval_k)
                design.hits[f"{name}_hr"] += hr; design.hits[f"{name}_ndcg"] += ndcg
            clicked = (rank > 0) & on_ad
            design.hits["sponsored_hr"] += float(clicked.sum())
            if design.examined:
                clicked &= looks < examination(np.maximum(rank, 1))
            # the clicks (a few per batch): charged in event order
            for b in np.flatnonzero(clicked).tolist():
                s = int(slot[b, rank[b] - 1])
                c = int(campaigns.campaign[sold.ad[b, s]])
                p = int(period[b])
                amount = int(max(min(sold.price[b, s], campaigns.budget[c] - design.spent[p, c]), 0))
                design.spent[p, c] += amount
                design.revenue += amount
                design.clicks += 1
                if rank[b] <= eval_k:
                    design.revenue_top += amount
                    design.clicks_top += 1
                design.charges.append((p, float(frac[b]), c, amount))
            # calibration from every shown position: was it the item the user acted on
            shown_scores = np.where(slot >= 0, np.take_along_axis(np.pad(ad_scores[np.arange(B)[:, None],
                                                                                     np.maximum(sold.ad, 0)],
                                                                         ((0, 0), (0, k))),
                                                                  np.maximum(slot, 0), axis=1),
                                    place(list_scores, np.full((B, len(design.ranks)), -1), design.ranks)[0])
            valid = shown >= 0
            design.calibrator.update(shown_scores[valid], (shown == items[:, None])[valid])
            spend_curve[design.name].append((stop, design.revenue))
        known[items] = True
        if exclude_seen:
            for u, i in zip(users.tolist(), items.tolist()):
                seen_by_user.setdefault(u, set()).add(i)
        n_events += B
    seconds = time.perf_counter() - started
    base_hr, base_ndcg = organic["hr"] / n_events, organic["ndcg"] / n_events
    results = {}
    for design in state.values():
        h = {key: v / n_events for key, v in design.hits.items()}
        budget_total = int(campaigns.budget.sum()) * periods
        results[design.name] = {
            "mechanism": design.mechanism, "pacing": design.pacing,
            "sponsored_ranks": [r + 1 for r in design.ranks],
            "quality_floor": design.floor, "pacing_gain": design.gain if design.pacing else None,
            "examined": design.examined,
            "revenue": design.revenue / MICROS, "clicks": design.clicks,
            f"revenue_top{eval_k}": design.revenue_top / MICROS, f"clicks_top{eval_k}": design.clicks_top,
            "mean_price": design.revenue / MICROS / design.clicks if design.clicks else None,
            "fill_rate": design.filled / design.offered if design.offered else 0.0,
            "budget_used": design.revenue / budget_total,
            "overspent_campaign_periods": int((design.spent > campaigns.budget[None, :]).sum()),
            f"organic_HR@{eval_k}": h["organic_hr"], f"organic_NDCG@{eval_k}": h["organic_ndcg"],
            f"shown_HR@{eval_k}": h["shown_hr"], f"shown_NDCG@{eval_k}": h["shown_ndcg"],
            f"organic_HR@{eval_k}_loss": 1 - h["organic_hr"] / base_hr if base_hr else None,
            f"shown_HR@{eval_k}_loss": 1 - h["shown_hr"] / base_hr if base_hr else None,
            f"organic_NDCG@{eval_k}_loss": 1 - h["organic_ndcg"] / base_ndcg if base_ndcg else None,
            f"shown_NDCG@{eval_k}_loss": 1 - h["shown_ndcg"] / base_ndcg if base_ndcg else None,
            "sponsored_click_rate": design.clicks / design.filled if design.filled else None,
            "pacing_error": pacing_error(design.charges, campaigns.budget, periods),
            "spend_by_period": (design.spent.sum(axis=1) / MICROS).round(4).tolist(),
            "spend_within_period": spend_within_period(design.charges, campaigns.budget, periods),
            "calibration": design.calibrator.reliability(),
            "revenue_curve": [[i, r / MICROS]
                              for i, r in spend_curve[design.name][:: max(1, len(bounds) // 50)]],
        }
    return {"n_events": n_events, "seconds": round(seconds, 1), "k": k, "eval_k": eval_k,
            "sponsored_ranks": [r + 1 for r in ranks], "reserve_price": reserve / MICROS, "periods": periods,
            "period_events": period_events,
            "organic_only": {f"HR@{eval_k}": base_hr, f"NDCG@{eval_k}": base_ndcg,
                             "hits_by_rank": organic_hits_by_rank.tolist(),
                             f"share_of_hits_at_rank_{eval_k}": float(organic_hits_by_rank[-1]
                                                                      / max(organic_hits_by_rank.sum(), 1))},
            "designs": results}


def _pre_event_inputs(model, users, items, types, scenes, ts):
    """``(interest, weight, ranks)`` of each event's user just before it, as ``recommend_then_learn``
    ranks."""
    from models import kernels

    model._ensure_users(users)
    active, dense = np.unique(users, return_inverse=True)
    prepared = batching.prepare(model.states[active], dense, np.asarray(items, np.int32),
                                np.asarray(types, np.int8), np.asarray(scenes, np.int8),
                                np.asarray(ts, np.float64), model.cfg.n_scenes, with_examples=True)
    ex = prepared.examples
    ranks = kernels.RankInputs(hist_item=ex.hist_item, hist_type=ex.hist_type.astype(np.int32),
                               hist_age=ex.hist_age, scene=ex.scene.astype(np.int32),
                               exclude=np.full((len(users), 1), -1, np.int32))
    model.trainer.ensure_capacity(max(model.n_items, int(np.max(items)) + 1))
    return ex.interest.astype(np.float32), ex.weight, ranks


def spend_within_period(charges, budget: np.ndarray, periods: int, points: int = 10) -> list[float]:
    """Mean over (campaign, period) of the share of the budget spent by each tenth of the period."""
    curve = np.zeros((periods, len(budget), points))
    for p, frac, c, amount in charges:
        curve[p, c, min(int(frac * points), points - 1):] += amount
    return (curve / budget[None, :, None]).mean(axis=(0, 1)).round(4).tolist()


def pacing_error(charges, budget: np.ndarray, periods: int, points: int = 10) -> float | None:
    """How far spend strays from an even plan: mean over (campaign, period) with spend of the largest gap
    between the share of the period's spend made by each tenth and that tenth's share of the period."""
    curve = np.zeros((periods, len(budget), points))
    for p, frac, c, amount in charges:
        curve[p, c, min(int(frac * points), points - 1):] += amount
    total = curve[:, :, -1:]
    used = total[:, :, 0] > 0
    if not used.any():
        return None
    share = curve / np.where(total > 0, total, 1)
    plan = (np.arange(points) + 1) / points
    return float(np.abs(share - plan).max(axis=2)[used].mean())


def main(argv: list[str] | None = None) -> int:
    import orjson

    from models import loaders
    from models.attention import for_log
    from models.eval_results import git_commit, machine

    parser = argparse.ArgumentParser(prog="attnflow market-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="dataset folder name or alias under ../shared/data (ml-100k, ...)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    parser.add_argument("--k", type=int, default=20, help="list length K")
    parser.add_argument("--ranks", default="5,15", help="1-based ranks of the sponsored slots (S = how many)")
    parser.add_argument("--campaigns", type=int, default=12)
    parser.add_argument("--reserve", type=float, default=0.01, help="reserve price per click")
    parser.add_argument("--periods", type=int, default=5, help="budget periods in the replayed span")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=DEFAULT_OUT)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    log = loaders.load(args.dataset, data_dir=args.data_dir)
    if args.limit:
        log = loaders.head(log, args.limit)
    ranks = tuple(sorted(int(r) - 1 for r in args.ranks.split(",") if r.strip()))
    counts = np.bincount(log.item, minlength=log.n_items)
    campaigns = synthetic_campaigns(counts, args.campaigns, args.seed)
    model = for_log(log)
    report = simulate(log, model, campaigns, k=args.k, ranks=ranks, reserve=round(args.reserve * MICROS),
                      periods=args.periods, batch=args.batch, progress=True)
    report = {"dataset": log.name, "command": "attnflow market-sim " + " ".join(argv),
              "machine": machine(), "git": git_commit(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "generator": {"campaigns": args.campaigns, "seed": args.seed,
                            "doc": synthetic_campaigns.__doc__.split("\n\n")[1].strip()},
              "campaigns": campaigns.doc(log), **report}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure = plot(report, out.with_name(out.stem + "_spend.png"))
    report["plot"] = str(figure)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    base = report["organic_only"]
    print(f"{log.name}: {report['n_events']} events in {report['seconds']}s; organic only HR@10 "
          f"{base['HR@10']:.4f} NDCG@10 {base['NDCG@10']:.4f}")
    for name, d in report["designs"].items():
        pacing = d["pacing_error"] if d["pacing_error"] is None else round(d["pacing_error"], 3)
        print(f"  {name:22s} revenue {d['revenue']:9.2f} (top 10 {d['revenue_top10']:7.2f})  clicks "
              f"{d['clicks']:5d}  fill {d['fill_rate']:.3f}  "
              f"organic HR@10 loss {d['organic_HR@10_loss']:+.3%}  "
              f"shown HR@10 loss {d['shown_HR@10_loss']:+.3%}  "
              f"pacing error {pacing}  overspent {d['overspent_campaign_periods']}")
    print(f"wrote {out} and {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
