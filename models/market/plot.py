"""The spend plot of ``attnflow market-sim`` (``docs/results/market_spend.png``), drawn from its report
alone, so ``python -m models.market.plot docs/results/market.json`` redraws it without rerunning the replay.

One colour per design and one line style per pacing (solid: paced, dashed: not), so a paced design and its
unpaced twin share a colour; one legend for both panels, below them, with the labels of docs/market.md.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

MECHANISMS = {"gsp": "GSP on attention", "first_price": "first price", "bid_only": "bid only"}
# distinct hues first (matplotlib's tab10, then black), then the light tab20 ones if a report has more
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#000000", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"]


def design_label(design: dict, ranks: list[int], gain: float | None) -> tuple[str, str]:
    """``(label, colour key)`` of a design from its report entry: what sets it apart from the run's
    ``ranks`` and usual pacing ``gain``; the colour key is the label without the pacing.

    >>> d = {"mechanism": "gsp", "pacing": True, "sponsored_ranks": [15, 20], "pacing_gain": 4.0,
    ...      "quality_floor": 0.0, "examined": True}
    >>> for text in design_label(d, [5, 15], 4.0):
    ...     print(text)
    GSP on attention, paced, ranks 15 and 20, position effect
    GSP on attention, ranks 15 and 20, position effect
    """
    variant = []
    if design["sponsored_ranks"] != ranks:
        variant.append("ranks " + " and ".join(str(r) for r in design["sponsored_ranks"]))
    if design["pacing"] and design.get("pacing_gain") not in (None, gain):
        variant.append(f"pacing gain {design['pacing_gain']:g}")
    if design.get("quality_floor"):
        variant.append(f"quality floor {design['quality_floor']:g}")
    if design.get("examined"):
        variant.append("position effect")
    mechanism = MECHANISMS.get(design["mechanism"], design["mechanism"])
    paced = [mechanism + ", paced"] if design["pacing"] else [mechanism]
    return ", ".join(paced + variant), ", ".join([mechanism] + variant)


def plot(report: dict, path: Path) -> Path:
    """Revenue over the replay and spend within a budget period, one line per design; writes ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    designs = report["designs"]
    gains = Counter(d.get("pacing_gain") for d in designs.values() if d["pacing"])
    gain = gains.most_common(1)[0][0] if gains else None
    colours: dict[str, str] = {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.8))
    for d in designs.values():
        label, key = design_label(d, report["sponsored_ranks"], gain)
        colour = colours.setdefault(key, PALETTE[len(colours) % len(PALETTE)])
        style = {"color": colour, "linestyle": "-" if d["pacing"] else "--", "linewidth": 1.6}
        curve = np.asarray(d["revenue_curve"])
        axes[0].plot(curve[:, 0], curve[:, 1], label=label, **style)
        axes[1].plot(np.arange(1, 11) / 10, d["spend_within_period"], marker=".", **style)
    axes[0].set(xlabel="events replayed", ylabel="revenue (currency units)", title="spend over the replay")
    axes[1].plot([0, 1], [0, 1], ":", color="grey", label="even plan x budget used")
    axes[1].set(xlabel="fraction of the budget period", ylabel="share of the budget spent",
                title="spend within a budget period (mean over campaigns)")
    axes[1].legend(fontsize=8, loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8,
               title="design (solid: paced, dashed: not paced)", title_fontsize=8, frameon=False)
    fig.suptitle(f"{report['dataset']}: attention market ({report['n_events']} events, "
                 f"S={len(report['sponsored_ranks'])} of K={report['k']})")
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    import orjson

    parser = argparse.ArgumentParser(prog="python -m models.market.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="a report of attnflow market-sim (docs/results/market.json)")
    parser.add_argument("--out", default=None, help="PNG to write (default: REPORT's name + _spend.png, "
                                                    "where market-sim writes it)")
    args = parser.parse_args(argv)
    source = Path(args.report)
    report = orjson.loads(source.read_bytes())
    out = Path(args.out) if args.out else source.with_name(source.stem + "_spend.png")
    print(f"wrote {plot(report, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
