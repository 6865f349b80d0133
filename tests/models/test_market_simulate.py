"""models/market/simulate.py on a small synthetic log: every design reported, no budget overspent, and
the organic-only lists the same whatever the designs do (what was shown never changes what is learned)."""
import numpy as np

from models.attention import for_log
from models.events import EventLog
from models.market.simulate import DESIGNS, synthetic_campaigns, simulate


def toy_log(n=600, users=30, items=40, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    i = (u * 3 + rng.integers(0, 6, n)) % items   # each user keeps to a few items: something to learn
    return EventLog.from_columns("toy", [f"u{x}" for x in u], [f"i{x}" for x in i], [0] * n,
                                 np.arange(n, dtype=float))


def run(designs):
    log = toy_log()
    model = for_log(log, dim=8, history=8, initial_capacity=64, batch_size=32)
    campaigns = synthetic_campaigns(np.bincount(log.item, minlength=log.n_items), n_campaigns=4, seed=3,
                                    items_per_campaign=(3, 8), clicks_per_period=(1.0, 3.0))
    return simulate(log, model, campaigns, designs=designs, k=10, ranks=(1, 6), periods=3, batch=64,
                    eval_k=5), campaigns


def test_every_design_is_reported_and_none_overspends():
    designs = {**{name: spec for name, spec in DESIGNS.items() if "ranks" not in spec},
               "low": {"mechanism": "gsp", "pacing": True, "ranks": (5, 10)},
               "below": {"mechanism": "gsp", "pacing": True, "ranks": (6, 10)}}
    report, campaigns = run(designs)
    assert set(report["designs"]) == set(designs) and report["designs"]["low"]["sponsored_ranks"] == [5, 10]
    budget = campaigns.budget.sum() * report["periods"] / 1e6
    for d in report["designs"].values():
        assert d["overspent_campaign_periods"] == 0
        assert 0 <= d["revenue"] <= budget + 1e-9 and 0 <= d["fill_rate"] <= 1
        assert d["clicks"] == 0 or d["mean_price"] >= report["reserve_price"]
        assert d["calibration"]["impressions"] > 0
        assert abs(sum(d["spend_by_period"]) - d["revenue"]) < 1e-3
        assert d["clicks_top5"] <= d["clicks"] and d["revenue_top5"] <= d["revenue"] + 1e-9
    assert 0 <= report["organic_only"]["HR@5"] <= 1
    organic = report["organic_only"]
    assert sum(organic["hits_by_rank"]) == round(organic["HR@5"] * report["n_events"])
    examined = report["designs"]["gsp_attention_paced_examined"]   # an assumed position effect on clicks only
    assert examined["examined"] and not report["designs"]["gsp_attention_paced"]["examined"]
    below = report["designs"]["below"]   # slots past the first eval_k positions leave them organic
    assert below["organic_HR@5_loss"] == 0 and below["clicks_top5"] == 0 and below["revenue_top5"] == 0


def test_the_organic_baseline_does_not_depend_on_the_designs_run_beside_it():
    one, _ = run({"gsp_attention": DESIGNS["gsp_attention"]})
    two, _ = run({"bid_only": DESIGNS["bid_only"]})
    assert one["organic_only"] == two["organic_only"]


def test_two_runs_with_the_same_seed_give_the_same_numbers():
    """Every number of every design, not only the organic baseline (the only field allowed to differ is the
    run's duration). docs/market.md: two full ml-100k runs of one tree agree too."""
    designs = {name: DESIGNS[name] for name in ("gsp_attention_paced", "bid_only")}
    (one, _), (two, _) = run(designs), run(designs)
    assert one.pop("seconds") >= 0 and two.pop("seconds") >= 0
    assert one == two
    assert one["designs"]["gsp_attention_paced"]["clicks"] > 0   # something was sold and clicked to compare
