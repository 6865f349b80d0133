"""The Grafana dashboard and the Prometheus alerts query only metrics the workers export.

Here the exporters are fed by hand; tests/integration/test_metrics_exported.py scrapes a real worker.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

from streams.metrics import PipelineMetrics, TrainerMetrics, lag_lines
from streams.serving import ServingMetrics
from tests.conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "attnflow.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\battnflow_[a-z0-9_]+")
SAMPLE = re.compile(r"^(attnflow_[a-z0-9_]+)(?:\{[^}]*\})? \S+$")
# exported only by a worker with ATTNFLOW_SPONSORED_SLOTS: tests/streams/test_market.py checks these
MARKET = "attnflow_market_"


def _panels(panels):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in _panels(doc["panels"]) for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    """The ``expr:`` of every rule (a plain scan: the file is ours and keeps each expr on its own lines)."""
    exprs, current = [], None
    for line in ALERTS.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("expr:"):
            current = [stripped[5:].strip()]
            exprs.append(current)
        elif (
            current is not None
            and stripped
            and not re.match(r"^[a-z_]+:", stripped)
            and not stripped.startswith("-")
        ):
            current.append(stripped)
        else:
            current = None
    return [" ".join(parts) for parts in exprs]


def queried_metrics(market: bool = False) -> set[str]:
    """Every metric name the dashboard and the alerts query, histogram series mapped to their base name:
    the attention market's (``MARKET``) with ``market``, every other one without."""
    names = {m for expr in dashboard_exprs() + alert_exprs() for m in METRIC.findall(expr)
             if m.startswith(MARKET) == market}
    return {
        re.sub(r"_(bucket|sum|count)$", "", n)
        if n.endswith(("_bucket", "_sum", "_count")) and n.startswith("attnflow_produce_to_emit")
        else n
        for n in names
    }


def exported_names(text: str) -> set[str]:
    """Metric names with at least one sample in a Prometheus text exposition (histograms by base name too)."""
    names = set()
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            name = match.group(1)
            names.add(name)
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def test_the_dashboard_parses_and_every_panel_has_a_query():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "attnflow"
    graphs = [p for p in _panels(doc["panels"]) if p["type"] != "row"]
    assert len(graphs) >= 10 and all(p.get("targets") for p in graphs)
    ids = [p["id"] for p in _panels(doc["panels"])]
    assert len(ids) == len(set(ids))


def test_the_alerts_parse_into_one_expression_each():
    exprs = alert_exprs()
    assert len(exprs) == ALERTS.read_text().count("- alert:") and all(METRIC.search(e) for e in exprs)


def test_every_queried_metric_is_exported():
    worker = PipelineMetrics(k=10)
    worker.observe_feedbacks([SimpleNamespace(hit=True, rank=1, list_age_s=1.0)])
    worker.deadletters["not valid JSON"] += 1
    for quantiles in (
        worker.batch_seconds,
        worker.kernel_seconds,
        worker.latency_seconds,
        worker.batch_sizes,
    ):
        quantiles.add(0.01)
    for stage in ("engine", "write"):
        worker.stages.add(stage, 0.01)
    trainer = TrainerMetrics(loss=1.0, published_ts=1.0)
    serving = ServingMetrics()
    serving.responses[200] += 1
    serving.latency_seconds.add(0.001)
    text = (
        worker.prometheus()
        + trainer.prometheus()
        + serving.prometheus()
        + "\n".join(lag_lines({("events", 0): 3}))
    )
    missing = sorted(queried_metrics() - exported_names(text))
    assert missing == [], f"the dashboard or alerts query metrics no worker exports: {missing}"
    assert {
        "attnflow_consumer_lag",
        "attnflow_produce_to_emit_seconds",
        "attnflow_model_age_seconds",
        "attnflow_online_hit_rate",
        "attnflow_batch_size",
    } <= queried_metrics()
