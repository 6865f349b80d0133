"""The pipeline benchmark's report arithmetic: medians over runs, CPU per event, ratios between variants,
and the text table it prints.
"""
from __future__ import annotations

import collections

from streams.threadnames import ALL_ROLES
from tests.benchmarks.common import median, ratio
from tests.benchmarks.pipeline_variants import VARIANTS, WORKER_VARIANTS


def medians(runs: list[dict], sizes: list[int]) -> dict:
    """Median over runs of every headline number, per catalogue size and variant."""
    out = {}
    for n in sizes:
        per = collections.defaultdict(lambda: collections.defaultdict(list))
        for run in runs:
            r = run.get(str(n))
            if not r:
                continue
            for name in VARIANTS:
                v = r.get(name)
                if not v:
                    continue
                t = v.get("throughput", v)
                per[name]["events_per_s"].append(t.get("events_per_s"))
                per[name]["events_per_s_per_worker"].append(t.get("events_per_s_per_worker"))
                if t.get("worker_cpu_utilisation"):
                    per[name]["worker_cpu_utilisation"].append(median(t["worker_cpu_utilisation"]))
                add_cpu(per[name], "", t.get("cpu"))
                for key, value in (v.get("redis") or {}).items():
                    if key.endswith("_per_event") and isinstance(value, (int, float)):
                        per[name][f"redis_{key}"].append(value)
                snaps = v.get("worker_stats") or []
                kind, overrides = WORKER_VARIANTS.get(name, ("", {}))
                if kind == "pipeline" and overrides.get("train_enabled", True):
                    # how much of the stream the online trainer (in a worker or on its own) had learned
                    # from when the backlog was done, and after the live phases
                    for key, stats in (("train_examples_per_event", snaps + (v.get("trainer_stats") or [])),
                                       ("live_train_examples_per_event",
                                        v.get("worker_stats_after_latency") or [])):
                        if stats:
                            learned = sum((s.get("trainer") or {}).get("examples", 0) for s in stats)
                            per[name][key].append(learned / max(sum(s.get("events", 0) for s in stats), 1))
                for s in snaps:
                    for q in ("kernel_seconds", "batch_seconds", "batch_size"):
                        if isinstance(s.get(q), dict) and s[q].get("p50") is not None:
                            for p in ("p50", "p95", "p99"):
                                scale = 1e3 if q != "batch_size" else 1
                                per[name][f"{q.replace('_seconds', '_ms')}_{p}"].append(s[q][p] * scale)
                for m in v.get("memory") or []:
                    per[name]["rss_mib"].append(m.get("rss_mib"))
                for m in v.get("memory_after_latency") or []:
                    per[name]["rss_mib_after_latency"].append(m.get("rss_mib"))
                for fraction, lat in (v.get("latency") or {}).items():
                    for p in ("p50_ms", "p95_ms", "p99_ms", "within_slo"):
                        per[name][f"latency@{fraction}_{p}"].append(lat["event_to_recommendation"].get(p))
                    if lat.get("lead_in"):
                        # a fresh worker's first second at this rate, and the whole lead-in
                        for part in ("first_second", "event_to_recommendation"):
                            q = lat["lead_in"][part]
                            label = "first_second" if part == "first_second" else "lead_in"
                            for p in ("p50_ms", "p99_ms", "within_slo"):
                                per[name][f"latency@{fraction}_{label}_{p}"].append(q.get(p))
                    per[name][f"latency@{fraction}_rate"].append(lat["rate_target"])
                    per[name][f"latency@{fraction}_mean_batch_events"].append(lat["mean_batch_events"])
                    per[name][f"latency@{fraction}_mean_ms"].append(
                        lat.get("event_to_recommendation_mean_ms"))
                    for stage, ms in (lat.get("stage_mean_ms") or {}).items():
                        per[name][f"latency@{fraction}_stage_{stage}_ms"].append(ms)
                    add_cpu(per[name], f"latency@{fraction}_", lat.get("cpu"))
        out[str(n)] = {name: {k: median(vals) for k, vals in metrics.items()}
                       for name, metrics in per.items()}
    return out


def add_cpu(metrics: dict, prefix: str, usage: dict | None) -> None:
    """A phase's CPU accounting (``tests.benchmarks.cpu``) as flat metrics: µs per event by process."""
    if not usage:
        return
    for process, us in (usage.get("cpu_us_per_event") or {}).items():
        metrics[f"{prefix}cpu_us_per_event_{process.replace(' ', '_')}"].append(us)
    metrics[f"{prefix}cpu_us_per_event_total"].append(usage.get("total_us_per_event"))
    for process, roles in (usage.get("threads_us_per_event") or {}).items():  # the worker's CPU by thread
        for role, us in roles.items():
            metrics[f"{prefix}thread_us_per_event_{process}_{role.replace(' ', '_')}"].append(us)
    metrics[f"{prefix}machine_utilisation"].append(usage.get("machine_utilisation"))
    if not prefix:
        metrics["cpu_ceiling_events_per_s"].append(usage.get("ceiling_events_per_s"))


def ratios(med: dict) -> dict:
    out = {}
    first = next(iter(med.values()), {})
    for n, m in med.items():
        own = lambda name: (m.get(name) or {}).get("events_per_s")  # noqa: E731  (this catalogue only)
        get = lambda name: (m.get(name) or first.get(name) or {}).get("events_per_s")  # noqa: E731
        out[n] = {
            "pipeline_over_naive": ratio(get("pipeline"), get("naive")),
            "pipeline_over_noop_faust": ratio(get("pipeline"), get("noop_faust")),
            "pipeline_stub_over_noop_faust": ratio(get("pipeline_stub"), get("noop_faust")),
            "pipeline_notrain_over_stub": ratio(own("pipeline_notrain"), own("pipeline_stub")),
            "noop_faust_over_raw_aiokafka": ratio(get("noop_faust"), get("raw_aiokafka")),
            "noop_faust_uvloop_over_asyncio": ratio(own("noop_faust"), own("noop_faust_asyncio")),
            # worker CPU per event, stock Faust over Faust as the worker configures it: what eager delivery,
            # the lean Monitor and the Cython fast paths save together (the do-nothing rate is fetch-bound)
            "noop_faust_cpu_stock_over_eager": ratio(*((m.get(name) or {}).get("cpu_us_per_event_worker")
                                                       for name in ("noop_faust", "noop_faust_eager"))),
            "pipeline_notrain_eager_over_stock": ratio(own("pipeline_notrain"),
                                                       own("pipeline_notrain_stock")),
            "pipeline_2w_over_1w": ratio(own("pipeline_2w"), get("pipeline")),
            "pipeline_over_pipeline_notrain": ratio(get("pipeline"), own("pipeline_notrain")),
            # pipeline_notrain runs the default depth (streams.settings.Settings.pipeline_depth)
            "pipeline_notrain_over_depth1": ratio(own("pipeline_notrain"), own("pipeline_notrain_d1")),
            "pipeline_notrain_over_depth2": ratio(own("pipeline_notrain"), own("pipeline_notrain_d2")),
            "pipeline_over_nomerge": ratio(get("pipeline"), own("pipeline_nomerge")),
            "pipeline_split_over_pipeline": ratio(own("pipeline_split"), get("pipeline")),
            # the same events, batched messages over one event per message (same run, same catalogue)
            "pipeline_batched_over_single": ratio(own("pipeline_batched"), own("pipeline")),
            "pipeline_notrain_batched_over_single": ratio(own("pipeline_notrain_batched"),
                                                          own("pipeline_notrain")),
            "pipeline_notrain_batched_b2048_over_single": ratio(own("pipeline_notrain_batched_b2048"),
                                                                own("pipeline_notrain")),
        }
    return out


def table(med: dict, rat: dict, fractions) -> str:
    def f(x, spec=".0f"):
        return "-" if x is None else format(x, spec)

    lines = [f"{'items':>7} {'variant':<13} {'ev/s':>8} {'ev/s/wkr':>8} {'cpu':>5} "
             f"{'kern p50':>8} {'batch':>6} {'redis cmd/ev':>12} {'trips/ev':>8} {'B in/ev':>8} "
             f"{'B out/ev':>8} {'RSS MiB':>8} {'trained':>7}"]
    for n, m in med.items():
        for name in VARIANTS:
            v = m.get(name)
            if not v:
                continue
            lines.append(f"{n:>7} {name:<13} {f(v.get('events_per_s')):>8} "
                         f"{f(v.get('events_per_s_per_worker')):>8} "
                         f"{f(v.get('worker_cpu_utilisation'), '.0%'):>5} "
                         f"{f(v.get('kernel_ms_p50'), '.1f'):>8} {f(v.get('batch_size_p50')):>6} "
                         f"{f(v.get('redis_commands_per_event'), '.2f'):>12} "
                         f"{f(v.get('redis_round_trips_per_event'), '.4f'):>8} "
                         f"{f(v.get('redis_bytes_in_per_event')):>8} "
                         f"{f(v.get('redis_bytes_out_per_event')):>8} {f(v.get('rss_mib')):>8} "
                         f"{f(v.get('train_examples_per_event'), '.0%'):>7}")
    lines.append("")
    parts = ("worker", "trainer", "kafka_broker", "redis", "benchmark", "other")
    lines.append(f"{'items':>7} {'variant':<13} {'CPU us/ev':>9} " + " ".join(f"{p[:9]:>9}" for p in parts)
                 + f" {'machine':>7} {'ceiling/s':>9}")
    for n, m in med.items():
        for name in VARIANTS:
            v = m.get(name) or {}
            if v.get("cpu_us_per_event_total") is None:
                continue
            lines.append(f"{n:>7} {name:<13} {f(v['cpu_us_per_event_total']):>9} "
                         + " ".join(f"{f(v.get(f'cpu_us_per_event_{p}')):>9}" for p in parts)
                         + f" {f(v.get('machine_utilisation'), '.0%'):>7} "
                           f"{f(v.get('cpu_ceiling_events_per_s')):>9}")
    lines.append("")
    roles = [r.replace(" ", "_") for r in ALL_ROLES]
    lines.append(f"{'items':>7} {'variant':<13} worker CPU us/ev by thread: "
                 + " ".join(f"{r[:9]:>9}" for r in roles))
    for n, m in med.items():
        for name in VARIANTS:
            v = m.get(name) or {}
            if not any(k.startswith("thread_us_per_event_worker_") for k in v):
                continue
            lines.append(f"{n:>7} {name:<13} {'':>27}"
                         + " ".join(f"{f(v.get(f'thread_us_per_event_worker_{r}')):>9}" for r in roles))
    lines.append("")
    lines.append(f"{'items':>7} {'variant':<13} {'load':>5} {'rate/s':>8} {'p50 ms':>8} "
                 f"{'p95 ms':>8} {'p99 ms':>8} {'<=50 ms':>8} {'ev/batch':>8} {'1st s p99':>9}")
    for n, m in med.items():
        for name in VARIANTS:
            v = m.get(name) or {}
            for fr in fractions:
                key = f"latency@{fr:.2f}"
                if v.get(f"{key}_rate") is None:
                    continue
                lines.append(f"{n:>7} {name:<13} {fr:>5.0%} {f(v.get(f'{key}_rate')):>8} "
                             f"{f(v.get(f'{key}_p50_ms'), '.1f'):>8} {f(v.get(f'{key}_p95_ms'), '.1f'):>8} "
                             f"{f(v.get(f'{key}_p99_ms'), '.1f'):>8} "
                             f"{f(v.get(f'{key}_within_slo'), '.1%'):>8} "
                             f"{f(v.get(f'{key}_mean_batch_events'), '.1f'):>8} "
                             f"{f(v.get(f'{key}_first_second_p99_ms'), '.0f'):>9}")
    lines.append("")
    for n, r in rat.items():
        lines.append(f"{n:>7} items: " + ", ".join(f"{k} {f(v, '.2f')}" for k, v in r.items()))
    return "\n".join(lines)
