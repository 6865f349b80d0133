"""The pipeline benchmark's two measurements of a running variant: drain a backlog at full speed
(throughput), then send at a fixed share of that rate and time each event to its recommendation (latency).
"""
from __future__ import annotations

import time

import numpy as np
import orjson

from streams.metrics import STAGES
from streams.settings import Settings
from streams.topics import TopicNames
from tests.benchmarks.cpu import CpuMeter
from tests.benchmarks.pipeline_load import Dataset, produce_at_rate
from tests.benchmarks.pipeline_workers import Kafka, Worker


def consume_backlog(workers: list[Worker], target: int, cap_s: float, kafka: Kafka, group: str,
                    desc: str, start_timeout_s: float = 120.0, meter: CpuMeter | None = None) -> dict:
    """Poll ``/stats`` until the workers counted ``target`` events; rate from first event (or stable group).

    With ``meter``, also the CPU per event of each process it watches, from the first event on."""
    from tqdm import tqdm

    samples = []
    t_first = c_first = t_stable = c_stable = None
    capped = False
    began = time.perf_counter()
    cpu0 = [w.status()["cpu_s"] or 0.0 for w in workers]
    with tqdm(total=target, unit="ev", desc=desc, leave=False, mininterval=0.5) as bar:
        while True:
            now = time.perf_counter()
            snaps = [w.progress() or {"events": 0} for w in workers]
            counts = [s["events"] for s in snaps]
            total = sum(counts)
            samples.append((now, total))
            bar.update(min(total, target) - bar.n)
            if t_first is None and total > 0:
                t_first, c_first = now, total
                cpu0 = [w.status()["cpu_s"] or 0.0 for w in workers]
                cpu_first = meter.sample() if meter else None
            if len(workers) > 1 and t_stable is None and t_first is not None:
                state, members = kafka.group_members(group)
                if state == "Stable" and members >= len(workers) and all(c > 0 for c in counts):
                    t_stable, c_stable = now, total
            if total >= target:
                break
            if t_first is not None and now - t_first > cap_s:
                capped = True
                break
            if t_first is None and now - began > start_timeout_s:
                return {"events_per_s": None, "error": f"nothing consumed within {start_timeout_s:.0f}s"}
            if any(w.process.poll() is not None for w in workers):
                return {"events_per_s": None, "error": "a worker exited", "counts": counts}
            time.sleep(0.1)
    t_end = samples[-1][0]
    cpu_usage = meter.delta(cpu_first, meter.sample(), total - c_first) if meter else None
    if len(workers) > 1 and t_stable is None:
        t_stable, c_stable = t_first, c_first  # never observed stable: whole window, flagged
    t0, c0 = (t_stable, c_stable) if len(workers) > 1 else (t_first, c_first)
    cpu1 = [w.status()["cpu_s"] or 0.0 for w in workers]
    seconds = t_end - t0
    window = "stable group" if len(workers) > 1 else "first event (polled)"
    if len(workers) == 1 and snaps[0].get("first_ts") and snaps[0].get("last_ts"):
        # the baselines time their own first and latest batch: exact even for a phase of a second
        c0, total = snaps[0]["first_events"], snaps[0]["events"]
        seconds = snaps[0]["last_ts"] - snaps[0]["first_ts"]
        window = "first to last batch (worker clock)"
    return {
        "events_per_s": (total - c0) / seconds if seconds > 0 and total > c0 else None,
        "events_per_s_per_worker": ((total - c0) / seconds / len(workers)) if seconds > 0
        and total > c0 else None, "seconds": seconds, "events_counted": total - c0, "capped": capped,
        "window": window,
        "group_stable_after_first_s": (t_stable - t_first) if len(workers) > 1 else None,
        "per_worker_events": counts,
        "worker_cpu_utilisation": [(b - a) / (t_end - t_first) if t_end > t_first else None
                                   for a, b in zip(cpu0, cpu1)],
        "cpu": cpu_usage,
    }


async def _raw_consume(settings: Settings, topic: str, group: str, target: int, cap_s: float) -> dict:
    from aiokafka import AIOKafkaConsumer

    from streams.kafka_clients import aiokafka_kwargs

    consumer = AIOKafkaConsumer(topic, **aiokafka_kwargs(settings, group_id=group, enable_auto_commit=True,
                                                         auto_offset_reset="earliest",
                                                         max_partition_fetch_bytes=4 * 1024 * 1024))
    await consumer.start()
    count, t_first, c_first = 0, None, 0
    started = time.perf_counter()
    try:
        while count < target:
            asked = time.perf_counter()
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            count += sum(len(v) for v in batch.values())
            now = time.perf_counter()
            if t_first is None and count:
                t_first = asked  # from the request that brought the first records: that fetch counts too
            if t_first is not None and now - t_first > cap_s:
                break
            if t_first is None and now - started > 60:
                break
    finally:
        await consumer.stop()
    t_end = time.perf_counter()
    seconds = (t_end - t_first) if t_first else None
    rate = (count - c_first) / seconds if seconds and count > c_first else None
    return {"events_per_s": rate, "events_per_s_per_worker": rate, "seconds": seconds,
            "events_counted": count - c_first, "capped": count < target, "window": "first fetch"}


SLO_MS = 50.0  # the latency goal: the share of events within it is reported beside the percentiles


def latency_percentiles(seconds) -> dict:
    """p50/p95/p99/max in ms, and the share of events within ``SLO_MS``, of latencies in seconds.

    >>> q = latency_percentiles([0.01] * 98 + [0.2, 0.3]); round(q["p50_ms"]), q["within_slo"], q["n"]
    (10, 0.98, 100)
    """
    if not len(seconds):
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "within_slo": None, "n": 0}
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": float(ms.max()),
            "within_slo": float(np.mean(ms <= SLO_MS)), "n": int(len(ms))}


def send_and_collect(workers: list[Worker], kafka: Kafka, dataset: Dataset, rate: float, seconds: float,
                     drain_s: float, desc: str, meter: CpuMeter | None = None) -> dict:
    """Produce at ``rate`` for ``seconds``, wait until the workers have taken it all in, and read back
    the recommendations of those events: per event, its latency to the recommendation's Kafka
    timestamp and to the worker's ``emitted_ts``, in the order the events were sent."""
    settings = workers[0].settings
    names = TopicNames.of(settings)
    before = kafka.end_offsets(names.recommendations, settings.partitions)
    stats0 = [w.stats() or {} for w in workers]
    cpu_before = meter.sample() if meter else None
    sent = produce_at_rate(settings, dataset, rate, seconds, desc)
    cpu_usage = meter.delta(cpu_before, meter.sample(), sent["sent"]) if meter else None
    target = sum(s.get("events", 0) for s in stats0) + sent["sent"]
    deadline = time.time() + drain_s
    while time.time() < deadline:
        if sum((w.progress() or {}).get("events", 0) for w in workers) >= target:
            break
        time.sleep(0.2)
    time.sleep(0.5)  # the last batch's outputs
    stats1 = [w.stats() or {} for w in workers]
    after = kafka.end_offsets(names.recommendations, settings.partitions)
    rows = []
    for message in kafka.read(names.recommendations, before, after):
        doc = orjson.loads(message.value)
        if doc.get("event_ts", 0) < sent["start"] - 1:
            continue
        rows.append((doc["event_ts"], message.timestamp / 1000.0 - doc["event_ts"],
                     doc["emitted_ts"] - doc["event_ts"]))
    rows.sort()
    return {"sent": sent, "stats0": stats0, "stats1": stats1, "cpu": cpu_usage,
            "event_ts": [r[0] for r in rows], "to_recommendation": [r[1] for r in rows],
            "to_emit": [r[2] for r in rows]}


def latency_phase(workers: list[Worker], kafka: Kafka, dataset: Dataset, rate: float, seconds: float,
                  drain_s: float, desc: str, meter: CpuMeter | None = None, lead_in_s: float = 0.0) -> dict:
    """Produce at ``rate`` with a caught-up worker; latency = recommendation timestamp - event ``ts``.

    With ``lead_in_s``, the same rate runs that long first, unmeasured, so that the percentiles
    describe a worker in its steady state; the lead-in's own numbers are kept apart
    (``lead_in``, and ``first_second``: the first second of events, which on a freshly started
    worker is its start-up). With ``meter``, also the CPU per event of each process it watches while
    the load is sent (the benchmark's own share is the load generator)."""
    lead_in = None
    if lead_in_s > 0:
        lead = send_and_collect(workers, kafka, dataset, rate, lead_in_s, drain_s, desc + " lead-in")
        start = lead["sent"]["start"]
        first = [lat for ts, lat in zip(lead["event_ts"], lead["to_recommendation"]) if ts < start + 1.0]
        lead_in = {"seconds": lead_in_s, "sent": lead["sent"]["sent"],
                   "event_to_recommendation": latency_percentiles(lead["to_recommendation"]),
                   "first_second": latency_percentiles(first)}
    run = send_and_collect(workers, kafka, dataset, rate, seconds, drain_s, desc, meter)
    sent, stats0, stats1 = run["sent"], run["stats0"], run["stats1"]
    consumed = sum(s.get("events", 0) for s in stats1) - sum(s.get("events", 0) for s in stats0)
    batches = sum(s.get("batches", 0) for s in stats1) - sum(s.get("batches", 0) for s in stats0)
    lat_kafka = run["to_recommendation"]

    def window(key):  # the worker's own percentiles (its window also holds earlier phases' batches)
        q = [s.get(key) or {} for s in stats1]
        return {p: (q[0].get(p) * 1e3 if q and q[0].get(p) is not None else None)
                for p in ("p50", "p95", "p99")}

    def stage_means():  # mean ms per event in each stage over this phase (worker-side, all workers)
        out = {}
        for stage in STAGES:
            seconds = events = 0
            for s0, s1 in zip(stats0, stats1):
                q0, q1 = (s0.get("stages") or {}).get(stage, {}), (s1.get("stages") or {}).get(stage, {})
                seconds += q1.get("seconds", 0.0) - q0.get("seconds", 0.0)
                events += q1.get("events", 0) - q0.get("events", 0)
            out[stage] = 1e3 * seconds / events if events else None
        return out

    return {"rate_target": rate, "rate_achieved": sent["rate_achieved"], "sent": sent["sent"],
            "consumed": consumed, "drained": consumed >= sent["sent"],
            "mean_batch_events": consumed / batches if batches else None,
            "event_to_recommendation": latency_percentiles(lat_kafka),
            "event_to_emit": latency_percentiles(run["to_emit"]),
            "event_to_recommendation_mean_ms": 1e3 * float(np.mean(lat_kafka)) if lat_kafka else None,
            "lead_in": lead_in, "stage_mean_ms": stage_means(), "cpu": run["cpu"],
            "worker_batch_ms": window("batch_seconds"), "worker_kernel_ms": window("kernel_seconds")}
