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
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson

from streams.metrics import STAGES
from streams.settings import Settings
from streams.threadnames import ALL_ROLES
from streams.topics import TopicNames, ensure_topics
from tests.benchmarks.common import REPO, RESULTS, header, median, ratio
from tests.benchmarks.cpu import CpuMeter, listener_pid, process_cpu_s

VARIANTS = ("raw_aiokafka", "noop_faust", "noop_faust_asyncio", "noop_faust_eager", "pipeline_stub",
            "pipeline", "pipeline_notrain", "pipeline_notrain_stock", "pipeline_notrain_d1",
            "pipeline_notrain_d2", "pipeline_nomerge", "pipeline_split", "pipeline_2w", "naive",
            "pipeline_batched", "pipeline_notrain_batched", "pipeline_notrain_batched_b2048")
# Variants that read the same backlog sent as batched messages (``streams.codec.encode_events``: a JSON
# array of up to ``--batch-events`` events a message, grouped by partition as ``streams.replay`` does)
BATCHED_VARIANTS = ("pipeline_batched", "pipeline_notrain_batched", "pipeline_notrain_batched_b2048")
# Latency phases cost ~10-20 s each: the design and its baseline at every rate; the rank path alone
# (no trainer in the worker) at 50% on the first catalogue, to show what the trainer costs in latency.
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
LATENCY_VARIANTS = ("pipeline", "naive", "pipeline_notrain", "pipeline_notrain_stock", "pipeline_notrain_d1",
                    "pipeline_notrain_d2", "pipeline_nomerge", "pipeline_split")
# Measured on the first catalogue only (time budget): the baselines that never look at item ids, and the
# pipeline variants whose question (trainer cost, scaling) the first catalogue answers.
FIRST_CATALOGUE_ONLY = ("raw_aiokafka", "noop_faust", "noop_faust_asyncio", "noop_faust_eager",
                        "pipeline_stub", "pipeline_notrain", "pipeline_notrain_stock", "pipeline_notrain_d1",
                        "pipeline_notrain_d2", "pipeline_nomerge", "pipeline_split", "pipeline_2w")
EVENT_TYPES = ("view", "click", "cart", "purchase")
TYPE_P = (0.75, 0.15, 0.07, 0.03)
SCENES = ("default", "home", "search", "product")
SCENE_P = (0.25, 0.35, 0.2, 0.2)


def log(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- synthetic events ----------------------------------------------------------------------

@dataclass
class Dataset:
    """A catalogue, a user population and a Zipf item popularity; produces events as (key, value)."""

    n_items: int
    n_users: int
    seed: int = 0
    zipf_s: float = 1.0
    rng: np.random.Generator = field(init=False)
    item_ids: list = field(init=False)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.item_ids = [f"sku-{i}" for i in range(self.n_items)]
        weights = 1.0 / np.arange(1, self.n_items + 1) ** self.zipf_s
        self._item_p = weights / weights.sum()
        self._popularity = self.rng.permutation(self.n_items)  # rank -> item: no index locality for free

    def _columns(self, n: int):
        rng = self.rng
        items = self._popularity[rng.choice(self.n_items, n, p=self._item_p)]
        return (rng.integers(0, self.n_users, n), items, rng.choice(4, n, p=TYPE_P),
                rng.choice(4, n, p=SCENE_P))

    def events(self, n: int, ts0: float, step: float = 1e-4, prefix: str = "b") -> list[tuple[bytes, bytes]]:
        users, items, types, scenes = self._columns(n)
        out = []
        for i in range(n):
            user = f"u{users[i]}"
            out.append((user.encode(), orjson.dumps({
                "user_id": user, "item_id": self.item_ids[items[i]], "type": EVENT_TYPES[types[i]],
                "ts": ts0 + i * step, "scene": SCENES[scenes[i]], "event_id": f"{prefix}{i}"})))
        return out

    def live(self, n: int):
        """Columns for ``n`` live events; the caller stamps ``ts`` at send time."""
        users, items, types, scenes = self._columns(n)
        return [(f"u{u}", self.item_ids[i], EVENT_TYPES[t], SCENES[s])
                for u, i, t, s in zip(users, items, types, scenes)]


def batched(pairs: list[tuple[bytes, bytes]], partitions: int, max_events: int) -> list[tuple[bytes, bytes]]:
    """The same events as batched messages: per partition of each key (Kafka's murmur2), in order, up to
    ``max_events`` a message, keyed by its first event's key (which hashes to that partition too)."""
    from kafka.partitioner.default import murmur2

    groups: dict[int, list] = collections.defaultdict(list)
    out = []
    for key, value in pairs:
        p = (murmur2(key) & 0x7FFFFFFF) % partitions
        group = groups[p]
        group.append((key, value))
        if len(group) == max_events:
            out.append((group[0][0], b"[" + b",".join(v for _, v in group) + b"]"))
            groups[p] = []
    out += [(g[0][0], b"[" + b",".join(v for _, v in g) + b"]") for g in groups.values() if g]
    return out


def producer(settings: Settings, linger_ms: int):
    from kafka import KafkaProducer

    from streams.kafka_clients import connect

    return connect(KafkaProducer, settings, acks="all", linger_ms=linger_ms, batch_size=512 * 1024,
                   max_request_size=8 * 1024 * 1024, retries=5, client_id=f"{settings.app_id}-bench")


def produce_backlog(settings: Settings, pairs) -> dict:
    from tqdm import tqdm

    topic = TopicNames.of(settings).events
    kafka = producer(settings, linger_ms=20)
    failures = []
    started = time.perf_counter()
    with tqdm(total=len(pairs), unit="ev", desc="produce backlog", leave=False, mininterval=0.5) as bar:
        for i, (key, value) in enumerate(pairs):
            kafka.send(topic, key=key, value=value).add_errback(failures.append)
            if i % 2000 == 1999:
                bar.update(2000)
        kafka.flush()
        bar.update(len(pairs) % 2000)
    kafka.close()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} backlog events were not delivered: {failures[0]!r}")
    return {"events": len(pairs), "seconds": seconds, "rate": len(pairs) / seconds}


def produce_at_rate(settings: Settings, dataset: Dataset, rate: float, seconds: float, desc: str) -> dict:
    """Send events at ``rate``/s for ``seconds``; each carries its wall-clock send time in ``ts``.

    The load generator shares the two cores with the worker under test, so it is kept cheap: every
    2 ms the events that are due go out as per-partition record batches (aiokafka through
    ``streams.outbox.Outbox``, the worker's own output path). One kafka-python ``send`` per event
    took about half a core at 2.5k events/s; this takes less than half of that. Keys are
    partitioned by the same murmur2 hash either way, so users stay on the partitions of the backlog.
    """
    return asyncio.run(_produce_at_rate(settings, dataset, rate, seconds, desc))


async def _produce_at_rate(settings: Settings, dataset: Dataset, rate: float, seconds: float,
                           desc: str) -> dict:
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    from streams.kafka_clients import aiokafka_kwargs
    from streams.outbox import Outbox

    topic = TopicNames.of(settings).events
    columns = dataset.live(int(rate * seconds) + 1)
    kafka = AIOKafkaProducer(**aiokafka_kwargs(settings, acks="all", linger_ms=0,
                                               client_id=f"{settings.app_id}-bench"))
    await kafka.start()
    outbox = Outbox(lambda: kafka)
    deliveries, sent = [], 0
    try:
        started = time.time()
        with tqdm(total=len(columns), unit="ev", desc=desc, leave=False, mininterval=0.5) as bar:
            while sent < len(columns):
                due = min(len(columns), int((time.time() - started) * rate) + 1)
                now = time.time()
                deliveries += await outbox.send(
                    (topic, user.encode(),
                     orjson.dumps({"user_id": user, "item_id": item, "type": etype, "ts": now,
                                   "scene": scene, "event_id": f"l{sent + i}"}))
                    for i, (user, item, etype, scene) in enumerate(columns[sent:due]))
                bar.update(due - sent)
                sent = due
                await asyncio.sleep(0.002)
        outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
    finally:
        await kafka.stop()
    took = time.time() - started
    return {"sent": sent, "seconds": took, "rate_achieved": sent / took,
            "failed_batches": sum(isinstance(o, BaseException) for o in outcomes),
            "producer": "aiokafka record batches", "start": started, "end": started + took}


# ---- worker processes ----------------------------------------------------------------------

def proc_status(pid: int) -> dict:
    """RSS and peak RSS (MiB), CPU seconds of a process; None values when it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except (OSError, IndexError, ValueError):
        pass
    return {"rss_mib": out.get("VmRSS"), "peak_rss_mib": out.get("VmHWM"), "cpu_s": process_cpu_s(pid)}


def http_json(port: int, path: str, timeout: float = 5.0) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return orjson.loads(reply.read())
    except (OSError, ValueError):
        return None


@dataclass
class Worker:
    kind: str                 # pipeline | naive | noop
    settings: Settings
    process: subprocess.Popen
    log_path: Path
    log_offset: int = 0       # log size when the worker became ready

    def mark_ready(self) -> None:
        try:
            self.log_offset = self.log_path.stat().st_size
        except OSError:
            pass

    def compiles_since_ready(self) -> dict:
        """XLA compilations logged after start-up (JAX_LOG_COMPILES=1): a shape the warm-up missed."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return {}
        return dict(collections.Counter(re.findall(r"Compiling (jit\([\w.<>]+\)|[\w.<>]+)", text)))

    @property
    def port(self) -> int:
        return self.settings.web_port

    def stats(self) -> dict | None:
        return http_json(self.port, "/stats")

    def progress(self) -> dict | None:
        """The worker's counters without its quantiles: what a polling loop needs, at a fraction of the
        cost to the worker (the full ``/stats`` computes a dozen percentiles per call)."""
        return http_json(self.port, "/stats?brief=1")

    def status(self) -> dict:
        return proc_status(self.process.pid)


def start_worker(kind: str, settings: Settings, log_dir: Path, offset_reset: str = "earliest") -> Worker:
    from streams import cli

    log_path = log_dir / f"{settings.app_id}-{settings.web_port}.log"
    if kind == "pipeline":
        return Worker(kind, settings, cli.start_worker(settings, log_path), log_path)
    env = {**os.environ, **settings.as_env(), "BENCH_OFFSET_RESET": offset_reset}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", f"tests.benchmarks.{kind}_app", "worker", "-l", "warn",
         "--web-port", str(settings.web_port), "--web-host", "127.0.0.1", "--web-bind", "127.0.0.1"],
        env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    return Worker(kind, settings, process, log_path)


def wait_ready(workers: list[Worker], timeout_s: float = 240.0) -> None:
    from streams import cli

    for w in workers:
        cli.wait_ready(w.port, w.process, timeout_s=timeout_s)
        w.mark_ready()


def stop_workers(workers: list[Worker]) -> None:
    from streams import cli

    for w in workers:
        cli.stop_worker(w.process)


# ---- Kafka and Redis observations ----------------------------------------------------------

class Kafka:
    """Admin views the benchmark needs: group state, committed offsets, end offsets."""

    def __init__(self, settings: Settings):
        from kafka.admin import KafkaAdminClient

        from streams.kafka_clients import connect

        self.admin = connect(KafkaAdminClient, settings, client_id="attnflow-bench-admin")
        self.settings = settings

    def group_members(self, group: str) -> tuple[str | None, int]:
        try:
            info = self.admin.describe_groups([group])
        except Exception:  # noqa: BLE001 -- coordinator still loading: not stable yet
            return None, 0
        info = info.get(group, info) if isinstance(info, dict) else info[0]
        if not isinstance(info, dict):
            info = getattr(info, "_asdict", lambda: {})()
        state = info.get("group_state") or info.get("state")
        members = info.get("members") or []
        assigned = [m for m in members if m.get("member_assignment") or m.get("assignment")]
        return state, len(assigned) if assigned else len(members)

    def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        reply = self.admin.list_partition_offsets({TopicPartition(topic, p): OffsetSpec.LATEST
                                                   for p in range(partitions)})
        return {tp.partition: v.offset for tp, v in reply.items()}

    def lag(self, group: str, topic: str, partitions: int) -> int | None:
        try:
            committed = self.admin.list_group_offsets({group: None}).get(group, {})
            end = self.end_offsets(topic, partitions)
        except Exception:  # noqa: BLE001 -- informational only
            return None
        done = {tp.partition: om.offset for tp, om in committed.items() if tp.topic == topic}
        return sum(end[p] - max(done.get(p, 0), 0) for p in end)

    def read(self, topic: str, start: dict[int, int], end: dict[int, int]) -> list:
        """Messages of ``topic`` between two offset maps (end exclusive)."""
        from kafka import KafkaConsumer, TopicPartition

        from streams.kafka_clients import connect

        consumer = connect(KafkaConsumer, self.settings, group_id=None, enable_auto_commit=False,
                           consumer_timeout_ms=3000, fetch_max_bytes=32 * 1024 * 1024)
        parts = [TopicPartition(topic, p) for p in end if end[p] > start.get(p, 0)]
        out = []
        if parts:
            consumer.assign(parts)
            for tp in parts:
                consumer.seek(tp, start.get(tp.partition, 0))
            want = sum(end[tp.partition] - start.get(tp.partition, 0) for tp in parts)
            for message in consumer:
                if message.offset < end[message.partition]:
                    out.append(message)
                if len(out) >= want:
                    break
        consumer.close()
        return out

    def close(self):
        self.admin.close()


def redis_info(client) -> dict:
    info = client.info("all")
    calls = {k[len("cmdstat_"):]: v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}
    return {"commands": info["total_commands_processed"], "reads": info.get("total_reads_processed"),
            "net_in": info["total_net_input_bytes"], "net_out": info["total_net_output_bytes"],
            "calls": calls, "used_memory": info.get("used_memory")}


def redis_delta(before: dict, after: dict, events: int, kind: str = "pipeline") -> dict | None:
    if not events:
        return None
    def per(key):
        return (after[key] - before[key]) / events if after.get(key) is not None else None

    calls = {c: (n - before["calls"].get(c, 0)) / events for c, n in after["calls"].items()
             if n - before["calls"].get(c, 0) > 0 and c not in ("info", "client|setinfo", "hello")}
    # Client round trips, from what each design sends: the pipeline one pipelined read (MGET, item-index
    # script, LLEN, GET: one LLEN each) and one write script per batch; the naive
    # one GET and one SET per event.
    if kind == "pipeline":
        trips = 2 * calls.get("llen", 0)
    elif kind == "naive":
        trips = calls.get("get", 0) + calls.get("set", 0)
    else:
        trips = None
    return {"commands_per_event": per("commands"), "round_trips_per_event": trips,
            "socket_reads_per_event": per("reads"),
            "bytes_in_per_event": per("net_in"), "bytes_out_per_event": per("net_out"),
            "calls_per_event": dict(sorted(calls.items())), "events": events,
            "note": "commands include those run inside Lua scripts (GETRANGE/SET of the fenced write); "
                    "socket reads > round trips when a request is large (a 500-state write "
                    "arrives in many reads)"}


# ---- phases --------------------------------------------------------------------------------

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


# ---- one variant on one backlog --------------------------------------------------------------

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


# ---- profile -------------------------------------------------------------------------------

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


# ---- the run -------------------------------------------------------------------------------

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
