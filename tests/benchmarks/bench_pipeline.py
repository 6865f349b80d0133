"""End-to-end benchmark on the real Kafka broker and Redis server: throughput, latency, cost per event.

    python -m tests.benchmarks.bench_pipeline            # full: 3 runs, 10k and 100k items (~20 min, 2 cores)
    python -m tests.benchmarks.bench_pipeline --quick    # smoke check: small backlog, 1 run, short phases
    python -m tests.benchmarks.bench_pipeline --profile  # also py-spy a worker at max throughput

Services come from ``ATTNFLOW_KAFKA_BOOTSTRAP`` / ``ATTNFLOW_REDIS_URL`` (``streams.settings``).
Every configuration gets a fresh namespace (topic prefix, Redis prefix, consumer group).

Per run and catalogue size, one backlog of N synthetic events (Zipf items, ~N/5 users, all four
event types and scenes, increasing ``ts``) is produced once; every variant then consumes that same
topic with its own consumer group:

- ``pipeline``: the real rank worker (``streams.cli.start_worker``), one process;
- ``pipeline_notrain``: the same with ``ATTNFLOW_TRAIN_ENABLED=0`` (the rank path alone; throughput only);
- ``pipeline_notrain_d1`` / ``pipeline_notrain_d2``: the rank path alone with ``ATTNFLOW_PIPELINE_DEPTH=1``
  (one batch in flight) and ``2``, against the default depth of ``pipeline_notrain``: what pipelining
  batches costs or gives in throughput and latency;
- ``pipeline_nomerge``: the pipeline batched as before dynamic batching (``ATTNFLOW_BATCH_MERGE=0``,
  ``ATTNFLOW_BATCH_WITHIN_S=0.02``): every 20 ms take of Faust's ``take_events`` is a batch of its
  own, instead of joining a batch that still waits for the engine;
- ``pipeline_split``: a rank-only worker (``ATTNFLOW_ROLE=rank``) beside a dedicated trainer process
  (``ATTNFLOW_ROLE=train``, at ``ATTNFLOW_TRAIN_NICE``) on the same cores;
- ``pipeline_2w``: two rank workers in one group (4 partitions);
- ``naive``: ``tests.benchmarks.naive_app`` (per event: GET, NumPy full scoring, SET, one send);
- ``noop_faust``: ``tests.benchmarks.noop_app`` (take_events and count: Faust's ceiling);
- ``noop_faust_asyncio``: the same on asyncio's own event loop instead of uvloop (what uvloop gives);
- ``pipeline_notrain_stock``: ``pipeline_notrain`` with stock Faust delivery (``ATTNFLOW_EAGER_DELIVERY=0``);
- ``noop_faust_eager``: the same with Faust configured as the worker runs it: eager delivery
  (``streams/eager.py``), the Monitor without per-message hooks (``streams/sensors.py``) and Faust's
  Cython fast paths. The other noop variants run stock Faust (``ATTNFLOW_EAGER_DELIVERY=0``,
  ``ATTNFLOW_FAUST_MESSAGE_STATS=1``, ``ATTNFLOW_FAUST_CYTHON_OPTIMIZATIONS=0``);
- ``pipeline_stub``: ``tests.benchmarks.stub_app``, the real rank worker with a stub engine (Faust, the
  agent and its outputs, without Redis or JAX: what the worker costs around the engine);
- ``raw_aiokafka``: an aiokafka consumer in this process (the transport's ceiling);
- ``pipeline_batched`` / ``pipeline_notrain_batched``: ``pipeline`` / ``pipeline_notrain`` reading the
  same backlog sent as batched messages (JSON arrays of ``--batch-events`` events, grouped by partition
  as ``streams.replay`` sends them), from a topic of their own produced in the same run;
  ``pipeline_notrain_batched_b2048`` the same with ``ATTNFLOW_BATCH_SIZE=2048``.

Measured: max throughput from the backlog (worker ``/stats`` event counters, which the rank worker
advances when a batch is done: outputs delivered and state written; from the first batch done to the
last; two workers from the moment the group is stable), then, with the same worker
caught up, latency at 25/50/75% of that maximum; the pipeline's variants run at fractions of the
``pipeline``'s maximum in the same run, so that they compare at equal load (events carry their produce
time in ``ts``; latency = the recommendation's Kafka timestamp minus it), Redis commands / socket reads /
bytes per event (``INFO`` deltas; this Redis must serve only the benchmark), kernel time and batch sizes from
``/stats``, RSS and CPU of each worker. Medians over runs, ratios between variants. Never fails on
a timing: a phase that runs out of time is recorded as such.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson

from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from tests.benchmarks.common import REPO, RESULTS, header
# The parts of the benchmark, re-exported: other benchmarks and tests import them from here.
from tests.benchmarks.pipeline_common import free_port, log
from tests.benchmarks.pipeline_load import (EVENT_TYPES, SCENE_P, SCENES, TYPE_P, Dataset, batched,
                                            produce_at_rate, produce_backlog, producer)
from tests.benchmarks.pipeline_phases import (SLO_MS, _raw_consume, consume_backlog, latency_percentiles,
                                              latency_phase, send_and_collect)
from tests.benchmarks.pipeline_summary import add_cpu, medians, ratios, table
from tests.benchmarks.pipeline_variants import (BATCHED_VARIANTS, FIRST_CATALOGUE_ONLY, LATENCY_VARIANTS,
                                                STOCK_FAUST, VARIANTS, WORKER_VARIANTS, Context,
                                                clear_namespace, fractions_for, register_catalogue,
                                                run_worker_variant, service_pids, start_profiler,
                                                start_trainers, stop_profiler, variant_settings, wait_stable)
from tests.benchmarks.pipeline_workers import (Kafka, Worker, http_json, proc_status, redis_delta, redis_info,
                                               start_worker, stop_workers, wait_ready)


def run_once(ctx: Context, run: int, n_items: int, variants: list[str], first_catalogue: bool) -> dict:
    args = ctx.args
    prefix = f"b{ctx.tag}r{run}i{n_items // 1000}k."
    ds_settings = replace(ctx.base, topic_prefix=prefix, app_id=f"bench-{ctx.tag}",
                          redis_prefix=f"bench-{ctx.tag}",
                          initial_capacity=max(16384, 1 << (n_items - 1).bit_length()),
                          log_level="warn", partitions=4)
    ensure_topics(ds_settings)
    dataset = Dataset(n_items=n_items, n_users=max(1, args.events // 5), seed=args.seed)
    backlog = dataset.events(args.events, ts0=time.time() - 3600)
    result: dict = {"n_items": n_items, "topic_prefix": prefix, "load_average": os.getloadavg()}
    result["produce"] = produce_backlog(ds_settings, backlog)
    log(f"run {run}, {n_items} items: backlog of {args.events} events produced at "
        f"{result['produce']['rate']:.0f}/s")
    batched_settings = None
    if any(name in BATCHED_VARIANTS for name in variants):
        batched_settings = replace(ds_settings, topic_prefix=prefix + "batched.")
        ensure_topics(batched_settings)
        messages = batched(backlog, batched_settings.partitions, args.batch_events)
        result["produce_batched"] = {**produce_backlog(batched_settings, messages), "events": len(backlog),
                                     "messages": len(messages), "events_per_message": args.batch_events}
    max_rates: dict = {}
    for name in variants:
        if name in FIRST_CATALOGUE_ONLY and not first_catalogue and not args.every_variant_everywhere:
            continue
        if name == "raw_aiokafka":
            result[name] = asyncio.run(_raw_consume(ds_settings, TopicNames.of(ds_settings).events,
                                                    f"bench-{ctx.tag}-raw-{n_items}-r{run}", args.events,
                                                    args.cap_s))
        else:
            own = batched_settings if name in BATCHED_VARIANTS else ds_settings
            result[name] = run_worker_variant(ctx, name, own, dataset, run, max_rates)
        rate = (result[name].get("throughput") or result[name]).get("events_per_s")
        max_rates[name] = rate
        log(f"run {run}, {n_items} items, {name}: "
            + (f"{rate:.0f} events/s" if rate
               else str(result[name].get("error") or result[name].get("throughput", {}).get("error"))))
    if args.delete_topics:
        from streams.topics import delete_topics

        delete_topics(ds_settings)
        if batched_settings is not None:
            delete_topics(batched_settings)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small backlog, 1 run, short phases (smoke check)")
    parser.add_argument("--runs", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--events", type=int, default=None,
                        help="backlog size N (default 40000: seconds of steady state, not a "
                             "start-up transient; 4000 with --quick)")
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000], help="catalogue sizes")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--every-variant-everywhere", action="store_true",
                        help=f"run {', '.join(FIRST_CATALOGUE_ONLY)} on every catalogue, not only the first")
    parser.add_argument("--latency-s", type=float, default=None, help="seconds per latency rate (0: skip)")
    parser.add_argument("--latency-lead-in-s", type=float, default=None,
                        help="seconds at each latency rate before it is measured (default 3; "
                             "1 with --quick): the percentiles describe a worker in its steady state, the "
                             "lead-in's are kept apart")
    parser.add_argument("--latency-fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                        help="latency rates as fractions of the measured maximum, first catalogue")
    parser.add_argument("--latency-fractions-other", type=float, nargs="*", default=[0.5],
                        help="the same for the other catalogues")
    parser.add_argument("--latency-base-rate", type=float, default=None,
                        help="events/s the latency fractions apply to, instead of each run's "
                             "measured maximum (the same load in every run, for A/B comparisons)")
    parser.add_argument("--cap-s", type=float, default=120.0, help="most seconds a backlog phase may take")
    parser.add_argument("--naive-cap-s", type=float, default=None, help="same for the naive baseline")
    parser.add_argument("--profile", action="store_true",
                        help="one extra pipeline run under py-spy (first catalogue): at max "
                             "throughput and at 50%%")
    parser.add_argument("--batch-events", type=int, default=200,
                        help="events per message of the batched variants' backlog (%(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-topics", dest="delete_topics", action="store_false")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/attnflow-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS / "bench.json")
    return parser


def main(argv=None) -> dict:
    import redis
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.events = args.events or (4000 if args.quick else 40000)
    args.latency_s = args.latency_s if args.latency_s is not None else (5.0 if args.quick else 10.0)
    if args.latency_lead_in_s is None:
        args.latency_lead_in_s = 1.0 if args.quick else 3.0
    args.naive_cap_s = args.naive_cap_s or (6.0 if args.quick else 12.0)
    base = Settings.from_env(log_level="warn")
    # Workers log every XLA compilation (at WARNING), so a shape the warm-up missed shows in the report.
    os.environ.setdefault("JAX_LOG_COMPILES", "1")
    tag = uuid.uuid4().hex[:6]
    args.log_dir.mkdir(parents=True, exist_ok=True)
    client = redis.Redis.from_url(base.redis_url)
    kafka = Kafka(base)
    ctx = Context(args, base, kafka, client, args.log_dir, tag, service_pids(base, client))
    log("CPU accounting: "
        f"{', '.join(f'{k} pid {v}' for k, v in ctx.services.items()) or 'no local services found'}")
    report = header()
    report["parameters"] = {
        "quick": args.quick, "runs": args.runs, "events": args.events, "users": args.events // 5,
        "items": args.items, "zipf_s": 1.0, "k": base.k, "history": base.history, "dim": base.dim,
        "scenes": list(base.scenes), "batch_size": base.batch_size, "batch_within_s": base.batch_within_s,
        "partitions": 4, "pipeline_depth": base.pipeline_depth,
        "latency_s": args.latency_s, "latency_lead_in_s": args.latency_lead_in_s,
        "latency_fractions": args.latency_fractions,
        "latency_base_rate": args.latency_base_rate, "cap_s": args.cap_s,
        "naive_cap_s": args.naive_cap_s, "kafka": base.kafka_bootstrap, "redis": base.redis_url,
        "variants": args.variants, "first_catalogue_only": list(FIRST_CATALOGUE_ONLY),
        "batch_events": args.batch_events, "latency_fractions_other": args.latency_fractions_other,
        "notes": ["raw_aiokafka and noop_faust read item ids never: measured on the first catalogue only",
                  "naive phases stop after naive_cap_s; its rate is over that window",
                  "Redis runs with appendfsync always (deploy/redis.conf): the naive SET per "
                  "event pays an fsync"]}
    runs = []
    started = time.perf_counter()

    def save(partial: bool) -> None:  # after every run: a late failure must not lose measured runs
        report["runs"] = runs
        report["partial"] = partial
        report["wall_s"] = time.perf_counter() - started
        report["load_average_at_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
                                          | orjson.OPT_NON_STR_KEYS, default=str))

    try:
        for run in tqdm(range(1, args.runs + 1), desc="runs", unit="run"):
            runs.append({str(n): run_once(ctx, run, n, args.variants, first_catalogue=(i == 0))
                         for i, n in enumerate(args.items)})
            save(partial=True)
        if args.profile:
            log("profile: one more pipeline run under py-spy")
            report["profile"] = profile_run(ctx)
            save(partial=True)
    finally:
        kafka.close()
    report["medians"] = medians(runs, args.items)
    report["ratios"] = ratios(report["medians"])
    save(partial=False)
    print(table(report["medians"], report["ratios"], args.latency_fractions))
    if report.get("profile"):
        from tests.benchmarks.profile_summary import format_summary

        print("\n== profile at max throughput ==\n" + format_summary(report["profile"].get("profile") or {}))
        noop = (report["profile"].get("noop_faust") or {}).get("profile") or {}
        print("\n== do-nothing Faust agent at max throughput ==\n" + format_summary(noop))
        for fraction, phase in (report["profile"].get("latency") or {}).items():
            print(f"\n== profile at {float(fraction):.0%} of max ==\n"
                  + format_summary(phase.get("profile") or {}))
    print(f"\n{'quick' if args.quick else 'full'} run, {args.runs} run(s), {report['wall_s'] / 60:.1f} min; "
          f"wrote {args.out}")
    return report


def profile_run(ctx: Context) -> dict:
    n_items = ctx.args.items[0]
    prefix = f"b{ctx.tag}prof."
    ds_settings = replace(ctx.base, topic_prefix=prefix,
                          initial_capacity=max(16384, 1 << (n_items - 1).bit_length()),
                          log_level="warn", partitions=4)
    ensure_topics(ds_settings)
    dataset = Dataset(n_items=n_items, n_users=max(1, ctx.args.events // 5), seed=ctx.args.seed)
    produce_backlog(ds_settings, dataset.events(ctx.args.events, ts0=time.time() - 3600))
    out = run_worker_variant(ctx, "pipeline", ds_settings, dataset, 0, {}, profile=True)
    # Faust's own per-event cost: the do-nothing agent at full speed, on the same backlog
    out["noop_faust"] = run_worker_variant(ctx, "noop_faust", ds_settings, dataset, 0, {}, profile=True)
    if ctx.args.delete_topics:
        from streams.topics import delete_topics

        delete_topics(ds_settings)
    return out


if __name__ == "__main__":
    main()
