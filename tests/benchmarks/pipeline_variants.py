"""The pipeline benchmark's variants (which app, which settings) and how one variant runs on one backlog:
its namespace, workers and trainers, both phases, and a py-spy profile when asked.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from tests.benchmarks.cpu import CpuMeter, listener_pid
from tests.benchmarks.pipeline_common import free_port, log
from tests.benchmarks.pipeline_load import Dataset
from tests.benchmarks.pipeline_phases import consume_backlog, latency_phase
from tests.benchmarks.pipeline_workers import (Kafka, Worker, redis_delta, redis_info, start_worker,
                                               stop_workers, wait_ready)


VARIANTS = ("raw_aiokafka", "noop_faust", "noop_faust_asyncio", "noop_faust_eager", "pipeline_stub",
            "pipeline", "pipeline_notrain", "pipeline_notrain_stock", "pipeline_notrain_d1",
            "pipeline_notrain_d2", "pipeline_nomerge", "pipeline_split", "pipeline_2w", "naive",
            "pipeline_batched", "pipeline_notrain_batched", "pipeline_notrain_batched_b2048")
# Variants that read the same backlog sent as batched messages (``streams.codec.encode_events``: a JSON
# array of up to ``--batch-events`` events a message, grouped by partition as ``streams.replay`` does)
BATCHED_VARIANTS = ("pipeline_batched", "pipeline_notrain_batched", "pipeline_notrain_batched_b2048")
# Faust as released: no eager delivery, the stock Monitor with its per-message hooks, no Cython fast paths
STOCK_FAUST = {"eager_delivery": False, "faust_message_stats": True, "faust_cython_optimizations": False}
# Worker variants: (which app runs, how its settings differ from the pipeline's defaults).
WORKER_VARIANTS = {
    "pipeline": ("pipeline", {}),
    # the rank path alone: no examples, no trainer
    "pipeline_notrain": ("pipeline", {"train_enabled": False}),
    # stock Faust delivery
    "pipeline_notrain_stock": ("pipeline", {"train_enabled": False, "eager_delivery": False}),
    "pipeline_notrain_d1": ("pipeline", {"train_enabled": False, "pipeline_depth": 1}),
    "pipeline_notrain_d2": ("pipeline", {"train_enabled": False, "pipeline_depth": 2}),
    "pipeline_nomerge": ("pipeline", {"batch_merge": False, "batch_within_s": 0.02}),
    # a rank-only worker beside a dedicated trainer process (ATTNFLOW_ROLE=train, niced) on the same cores
    "pipeline_split": ("pipeline", {"role": "rank"}),
    "pipeline_2w": ("pipeline", {}),
    "naive": ("naive", {}),
    "noop_faust": ("noop", STOCK_FAUST),  # stock Faust: its own ceiling
    "noop_faust_asyncio": ("noop", {**STOCK_FAUST, "event_loop": "asyncio"}),
    # Faust as the worker configures it (eager delivery, lean Monitor, Cython paths)
    "noop_faust_eager": ("noop", {}),
    # the real rank worker with a stub engine (tests/benchmarks/stub_app.py): Faust, agent and outputs
    "pipeline_stub": ("stub", {"train_enabled": False}),
    "pipeline_batched": ("pipeline", {}),
    "pipeline_notrain_batched": ("pipeline", {"train_enabled": False}),
    # batched messages make room for larger engine batches: 2048 events a kernel call instead of 512
    "pipeline_notrain_batched_b2048": ("pipeline", {"train_enabled": False, "batch_size": 2048}),
}
# Latency phases cost ~10-20 s each: the design and its baseline at every rate; the rank path alone
# (no trainer in the worker) at 50% on the first catalogue, to show what the trainer costs in latency.
LATENCY_VARIANTS = ("pipeline", "naive", "pipeline_notrain", "pipeline_notrain_stock", "pipeline_notrain_d1",
                    "pipeline_notrain_d2", "pipeline_nomerge", "pipeline_split")
# Measured on the first catalogue only (time budget): the baselines that never look at item ids, and the
# pipeline variants whose question (trainer cost, scaling) the first catalogue answers.
FIRST_CATALOGUE_ONLY = ("raw_aiokafka", "noop_faust", "noop_faust_asyncio", "noop_faust_eager",
                        "pipeline_stub", "pipeline_notrain", "pipeline_notrain_stock", "pipeline_notrain_d1",
                        "pipeline_notrain_d2", "pipeline_nomerge", "pipeline_split", "pipeline_2w")


@dataclass
class Context:
    args: argparse.Namespace
    base: Settings
    kafka: Kafka
    redis: object
    log_dir: Path
    tag: str
    # pids of the broker and Redis, when they run on this machine
    services: dict = field(default_factory=dict)

    def meter(self, workers: list[Worker], trainers: list[Worker] = ()) -> CpuMeter:
        """CPU accounting for one variant: its processes, the services, and this process (load generator)."""
        return CpuMeter({"worker": [w.process.pid for w in workers],
                         "trainer": [t.process.pid for t in trainers],
                         **{name: [pid] for name, pid in self.services.items()}, "benchmark": [os.getpid()]},
                        threads_of=("worker", "trainer"))


def service_pids(settings: Settings, client) -> dict:
    """The broker's and Redis's pids when they listen on this machine (their CPU counts per event too)."""
    from urllib.parse import urlparse

    pids = {}
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    if host in ("127.0.0.1", "localhost", "::1") and port.isdigit():
        pids["kafka broker"] = listener_pid(int(port))
    try:
        pid = int(client.info("server")["process_id"])
        local = urlparse(settings.redis_url).hostname in ("127.0.0.1", "localhost", "::1")
        pids["redis"] = pid if local and Path(f"/proc/{pid}").exists() else None
    except Exception:  # noqa: BLE001 -- accounting is optional; the benchmark runs without it
        pids["redis"] = None
    return {name: pid for name, pid in pids.items() if pid}


def variant_settings(ctx: Context, dataset_settings: Settings, name: str, run: int) -> Settings:
    ns = f"{ctx.tag}-{dataset_settings.topic_prefix.strip('.')}-{name}-r{run}"
    return replace(dataset_settings, app_id=f"bench-{ns}", redis_prefix=f"bench-{ns}", web_port=free_port())


def register_catalogue(settings: Settings, dataset: Dataset) -> None:
    from models.store import RedisStore

    store = RedisStore(settings.redis_url, settings.redis_prefix)
    for start in range(0, dataset.n_items, 20000):
        store.item_index(dataset.item_ids[start:start + 20000])
    store.close()


def clear_namespace(settings: Settings) -> None:
    from models.store import RedisStore

    store = RedisStore(settings.redis_url, settings.redis_prefix)
    store.clear()
    store.close()


def run_worker_variant(ctx: Context, name: str, ds_settings: Settings, dataset: Dataset, run: int,
                       max_rates: dict, profile: bool = False) -> dict:
    args = ctx.args
    kind, overrides = WORKER_VARIANTS[name]
    n_workers = 2 if name == "pipeline_2w" else 1
    settings = replace(variant_settings(ctx, ds_settings, name, run), **overrides)
    if kind != "noop":
        register_catalogue(settings, dataset)
    workers = []
    for i in range(n_workers):
        workers.append(start_worker(kind, replace(settings, web_port=free_port()) if i else settings,
                                    ctx.log_dir))
    trainers = start_trainers(name, settings, ctx)
    out: dict = {"workers": n_workers}
    profiler = None
    try:
        ready_started = time.perf_counter()
        wait_ready(workers + trainers)
        out["start_to_ready_s"] = time.perf_counter() - ready_started
        info0 = redis_info(ctx.redis)
        stats0 = sum((w.stats() or {}).get("events", 0) for w in workers)
        if profile:
            profiler = start_profiler(workers[0], ctx)
        cap = args.naive_cap_s if kind == "naive" else args.cap_s
        out["throughput"] = consume_backlog(workers, args.events, cap, ctx.kafka, settings.app_id,
                                            desc=f"r{run} {dataset.n_items // 1000}k {name}",
                                            meter=ctx.meter(workers, trainers))
        time.sleep(1.0)  # last batch's state write and output flush
        if profiler is not None:
            out["profile"] = stop_profiler(profiler, out["throughput"].get("seconds"))
        info1 = redis_info(ctx.redis)
        snaps = [w.stats() or {} for w in workers]
        events = sum(s.get("events", 0) for s in snaps) - stats0
        if kind != "noop":
            out["redis"] = redis_delta(info0, info1, events, kind)
        out["memory"] = [w.status() for w in workers]
        out["lag_after"] = ctx.kafka.lag(settings.app_id, TopicNames.of(settings).events, settings.partitions)
        out["worker_stats"] = snaps
        if trainers:
            out["trainer_stats"] = [t.stats() or {} for t in trainers]
            out["trainer_memory"] = [t.status() for t in trainers]
        if kind == "pipeline":
            out["compiles_after_ready"] = [w.compiles_since_ready() for w in workers]
        out["settings"] = {k: v for k, v in settings.as_env().items()
                           if not any(secret in k for secret in ("URL", "BOOTSTRAP", "PASSWORD"))}
        rate = out["throughput"].get("events_per_s")
        fractions = fractions_for(args, name, dataset.n_items, profile)
        latency_wanted = name in LATENCY_VARIANTS or (profile and kind == "pipeline")
        # Fractions of a fixed rate when comparing runs with each other. Otherwise the pipeline's variants
        # (no trainer, depths, batching, dedicated trainer) run at the pipeline's maximum in this run, so that
        # their latency rows compare at equal load; the pipeline and the baselines at their own maximum.
        same_load = kind == "pipeline" and name != "pipeline" and max_rates.get("pipeline")
        base = args.latency_base_rate or same_load or rate
        out["latency_base_rate"] = base
        if args.latency_s > 0 and base and fractions and latency_wanted:
            # Live traffic goes to a fresh namespace (own topic, keys, group) so the backlog topic stays
            # identical for every variant and the worker starts with an empty lag.
            stop_workers(workers + trainers)
            clear_namespace(settings)
            settings = replace(settings, topic_prefix=f"{settings.topic_prefix}live-{name}.",
                               app_id=settings.app_id + "-live", redis_prefix=settings.redis_prefix + "-live",
                               web_port=free_port())
            ensure_topics(settings)
            register_catalogue(settings, dataset)
            ready_started = time.perf_counter()
            workers = [start_worker(kind, settings, ctx.log_dir)]
            trainers = start_trainers(name, settings, ctx)
            wait_ready(workers + trainers)
            # a new worker on a live catalogue
            out["live_start_to_ready_s"] = time.perf_counter() - ready_started
            out["latency_group_stable"] = wait_stable(ctx.kafka, settings.app_id, 1)
            out["latency"] = {}
            for fraction in fractions:
                if profile:
                    profiler = start_profiler(workers[0], ctx, suffix=f"-at-{fraction:.2f}")
                phase = latency_phase(workers, ctx.kafka, dataset, base * fraction, args.latency_s,
                                      drain_s=args.latency_s + 15,
                                      desc=f"r{run} {dataset.n_items // 1000}k {name} @{fraction:.0%}",
                                      meter=ctx.meter(workers, trainers), lead_in_s=args.latency_lead_in_s)
                if profiler is not None:
                    phase["profile"] = stop_profiler(profiler, args.latency_s)
                    profiler = None
                out["latency"][f"{fraction:.2f}"] = phase
            out["memory_after_latency"] = [w.status() for w in workers]
            # the live worker's own counters: what its trainer learned, and skipped, under live load
            out["worker_stats_after_latency"] = [w.stats() or {} for w in workers + trainers]
            if kind == "pipeline":
                out["compiles_after_ready_live"] = [w.compiles_since_ready() for w in workers]
    except Exception as exc:  # noqa: BLE001 -- a benchmark records failures, it does not abort the run
        log(f"{name}: {type(exc).__name__}: {exc} (log: {workers[0].log_path if workers else '-'})")
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
        stop_workers(workers + trainers)
        out["logs"] = [str(w.log_path) for w in workers + trainers]
        if kind != "noop":
            clear_namespace(settings)
        if settings.topic_prefix != ds_settings.topic_prefix and args.delete_topics:
            from streams.topics import delete_topics

            delete_topics(settings)
    return out


def start_trainers(name: str, settings: Settings, ctx: Context) -> list[Worker]:
    """The dedicated trainer beside a rank-only worker (``pipeline_split``), in
    the same group and namespace."""
    if WORKER_VARIANTS[name][1].get("role") != "rank" or not settings.train_enabled:
        return []
    return [start_worker("pipeline", replace(settings, role="train", web_port=free_port()), ctx.log_dir)]


def wait_stable(kafka: Kafka, group: str, members: int, timeout_s: float = 60.0) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        state, n = kafka.group_members(group)
        if state == "Stable" and n >= members:
            time.sleep(1.0)
            return True
        time.sleep(0.3)
    return False


def fractions_for(args, name: str, n_items: int, profile: bool) -> list[float]:
    """Latency rates (fractions of the measured maximum): all on the first catalogue, fewer on the others."""
    if profile or name.startswith("pipeline_notrain"):
        return [0.5] if n_items == args.items[0] or profile else []
    return list(args.latency_fractions if n_items == args.items[0] else args.latency_fractions_other)


def start_profiler(worker: Worker, ctx: Context, suffix: str = ""):
    import shutil

    exe = shutil.which("py-spy")
    if not exe:
        log("py-spy not found (pip install py-spy); no profile")
        return None
    path = ctx.log_dir / f"profile-{worker.settings.app_id}{suffix}.txt"
    proc = subprocess.Popen([exe, "record", "--pid", str(worker.process.pid), "--rate", "200", "--format",
                             "raw", "--threads", "--idle", "--full-filenames", "--nonblocking", "-o",
                             str(path), "--duration", "600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    proc.output_path = path
    return proc


def stop_profiler(proc, seconds) -> dict:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "py-spy did not stop"}
    from tests.benchmarks.profile_summary import summarise

    path = proc.output_path
    if not path.exists():
        return {"error": f"py-spy wrote nothing: {proc.stderr.read().decode()[-500:]}"}
    return {"raw_profile": str(path), "sampled_s": seconds,
            **summarise(path.read_text(), rate=200, seconds=seconds)}
