"""The attention market's Prometheus lines (``/metrics`` of a worker with ``ATTNFLOW_SPONSORED_SLOTS``):
what ``models.market.book.Market.report`` holds, as counter and gauge families.
"""
from __future__ import annotations


def _label(value: str) -> str:
    """A Prometheus label value, escaped (backslash, double quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def market_lines(report: dict) -> list[str]:
    """Prometheus lines of the attention market (``models.market.book.Market.report``): slots, fill, clicks
    and charges (money in currency units), per campaign its spend today as the store holds it, what this
    worker charged it and how pacing throttled it, and the pCTR calibration's reliability.

    >>> from models.market.book import Market, MarketConfig
    >>> lines = market_lines(Market(MarketConfig(ranks=(4, 14)), ("default",)).report())
    >>> [line for line in lines if not line.startswith("#")][:2]
    ['attnflow_market_lists_total 0', 'attnflow_market_slots_offered_total 0']
    """
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, samples) -> None:
        samples = [(labels, value) for labels, value in samples if value is not None]
        lines.extend([f"# HELP attnflow_market_{name} {help_}", f"# TYPE attnflow_market_{name} {kind}"])
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"attnflow_market_{name}{{{text}}} {value}" if text
                         else f"attnflow_market_{name} {value}")

    def total(name, kind, help_, value):
        family(name, kind, help_, [({}, value)])

    total("lists_total", "counter", "lists this worker emitted with the market on", report["lists"])
    total("slots_offered_total", "counter", "sponsored slots offered (lists x slots)",
          report["offered_slots"])
    total("impressions_total", "counter", "sponsored slots filled (ads shown)", report["filled_slots"])
    total("fill_rate", "gauge", "share of offered sponsored slots filled since start", report["fill_rate"])
    total("clicks_total", "counter", "events on a sponsored item of the user's last list, within the "
          "attribution window", report["clicks"])
    total("charges_total", "counter", "charges this worker applied (each charge id once, amount above 0)",
          report["charges"])
    total("revenue_total", "counter", "currency units this worker charged", report["charged_micros"] / 1e6)
    total("orphan_clicks_total", "counter", "clicks on ads of a campaign no longer in the book: not charged",
          report["orphan_clicks"])
    total("campaigns", "gauge", "campaigns in the book", report["campaigns"])
    campaigns = sorted(report["by_campaign"].items())

    def each(key, scale=1.0):
        return [({"campaign_id": cid}, None if c[key] is None else c[key] * scale) for cid, c in campaigns]

    family("campaign_spend_today", "gauge", "the campaign's spend on the latest day of this worker's last "
           "batch, as the store held it (all workers' charges)", each("spend_today_micros", 1e-6))
    family("campaign_daily_budget", "gauge", "the campaign's daily budget", each("daily_budget_micros", 1e-6))
    family("campaign_charged_total", "counter", "currency units this worker charged the campaign",
           each("charged_micros", 1e-6))
    family("campaign_charges_total", "counter", "charges this worker applied to the campaign",
           each("charges"))
    family("campaign_pacing_pass_rate", "gauge", "mean pacing pass rate of the campaign over the rows of the "
           "last batch it could enter (1: not throttled)", each("pacing_pass_rate"))
    family("campaign_throttled_total", "counter", "auctions pacing kept the campaign out of",
           each("throttled"))
    calibration = report["calibration"]
    total("calibration_impressions_total", "counter", "impressions the pCTR calibrator learned from",
          calibration["impressions"])
    total("calibration_clicks_total", "counter", "of those, the ones acted on", calibration["clicks"])
    total("calibration_ece", "gauge", "expected calibration error of pCTR, measured before learning",
          calibration["ece"])
    total("calibration_memory_bytes", "gauge", "bytes the calibrator keeps (fixed by its bins)",
          calibration.get("memory_bytes"))
    bins = [({"bin": f'{row["bin"][0]:g}-{row["bin"][1]:g}'}, row) for row in calibration["bins"]]
    family("calibration_predicted", "gauge", "mean predicted pCTR per pCTR bin",
           [(labels, row["predicted"]) for labels, row in bins])
    family("calibration_observed", "gauge", "observed click rate per pCTR bin",
           [(labels, row["observed"]) for labels, row in bins])
    family("calibration_bin_impressions_total", "counter", "impressions per pCTR bin",
           [(labels, row["impressions"]) for labels, row in bins])
    return lines
