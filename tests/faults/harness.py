"""One fault run: a namespace on the clusters, three workers, a replay, one fault, a recount from the log.

A run produces ``events`` events (about 50 per user, 500 items, every scene), starts three rank
workers in one consumer group (training off, Redis WAIT 1, so an acked batch is on a replica), and
injects its fault once the group has committed ``fault_at`` of the events:

- ``worker_kill``: SIGKILL the worker that is processing the most; the group rebalances onto two.
- ``redis_master_kill``: SIGKILL a Redis master; its replica is promoted, the old master restarts
  as a replica.
- ``broker_kill``: SIGKILL a Kafka broker, restart it ``outage_s`` later.
- ``redis_outage``: stop every Redis node for ``outage_s`` (10 s), start them again.

Progress is the consumer group's committed offsets, read from Kafka. The run has *recovered* when
every partition that still had events at the fault has committed past where it stood then; the
run is *done* when every partition has committed its last event. Then the events topic is read back
and every user's state is recomputed from it: event count, last (partition, offset) and history
must equal the state in Redis, so an event lost or applied twice shows as a mismatch; and every
event must have its feedback message (outputs are at least once, so repeats are counted, not failed).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import orjson

from models.events import EVENT_TYPES
from models.state import StateCodec
from streams.cli import start_worker, stop_worker, wait_ready, worker_stats
from streams.kafka_clients import connect
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

REPO = Path(__file__).resolve().parent.parent.parent
REDIS_SH = REPO / "deploy" / "redis.sh"
KAFKA_SH = REPO / "deploy" / "kafka.sh"
SCENARIOS = ("worker_kill", "redis_master_kill", "broker_kill", "redis_outage")
WORKERS = 3


def deploy(script: Path, *args: str) -> str:
    return subprocess.run(["bash", str(script), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def clusters_up() -> tuple[str, str]:
    """(kafka bootstrap, redis url) of the two clusters, started from deploy/ where they are down."""
    deploy(REDIS_SH, "cluster", "start")
    deploy(KAFKA_SH, "cluster", "start")
    return deploy(KAFKA_SH, "cluster", "bootstrap"), deploy(REDIS_SH, "cluster", "url")


def run_settings(kafka: str, redis: str, base_port: int) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        kafka_bootstrap=kafka, redis_url=redis, replication_factor=3, redis_wait_replicas=1,
        topic_prefix=f"f{tag}.", redis_prefix=f"attnflow-fault-{tag}", app_id=f"attnflow-fault-{tag}",
        web_port=base_port, partitions=6, batch_size=256, batch_within_s=0.01, dim=16, history=8, k=5,
        scenes=("default", "search", "product"), initial_capacity=1024, train_enabled=False,
        session_timeout_s=6.0, heartbeat_interval_s=0.5, commit_interval_s=0.5, log_level="info")


def generate(n: int, seed: int = 0) -> list[dict]:
    """``n`` events of ``n // 50`` users over 500 items (Zipf-like), times increasing."""
    rng = np.random.default_rng(seed)
    n_users = max(n // 50, 1)
    users = rng.integers(n_users, size=n)
    items = np.minimum(rng.zipf(1.3, size=n) - 1, 499)
    types = rng.choice(len(EVENT_TYPES), size=n, p=[0.7, 0.2, 0.07, 0.03])
    scenes = rng.integers(3, size=n)
    names = ("default", "search", "product")
    return [{"user_id": f"u{users[i]}", "item_id": f"i{items[i]}", "type": EVENT_TYPES[types[i]],
             "ts": 1_700_000_000.0 + i * 0.5, "scene": names[scenes[i]], "event_id": f"e{i}"}
            for i in range(n)]


def produce(settings: Settings, events: list[dict]) -> None:
    from kafka import KafkaProducer

    producer = connect(KafkaProducer, settings, acks="all", linger_ms=20, batch_size=256 * 1024)
    topic = TopicNames.of(settings).events
    try:
        for doc in events:
            producer.send(topic, key=doc["user_id"].encode(), value=orjson.dumps(doc))
        producer.flush(timeout=120)
    finally:
        producer.close()


class Progress:
    """The group's committed offset and the log end of each events partition, read from Kafka."""

    def __init__(self, settings: Settings):
        from kafka import KafkaConsumer, TopicPartition
        from kafka.admin import KafkaAdminClient

        self.group = settings.app_id
        self.admin = connect(KafkaAdminClient, settings, request_timeout_ms=5000)
        self.consumer = connect(KafkaConsumer, settings, group_id=None, request_timeout_ms=5000)
        topic = TopicNames.of(settings).events
        self.partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        self.end = {tp.partition: off for tp, off in self.consumer.end_offsets(self.partitions).items()}
        self.last = {p: 0 for p in self.end}
        self.error: str | None = None

    def committed(self) -> dict[int, int]:
        """Committed offsets (the last answer again while the brokers do not answer)."""
        try:
            got = self.admin.list_group_offsets({self.group: self.partitions}).get(self.group, {})
            self.last = {**self.last, **{tp.partition: max(meta.offset, 0) for tp, meta in got.items()}}
        except Exception as exc:  # noqa: BLE001 - a broker down mid-fault: keep the last known offsets
            self.error = f"{type(exc).__name__}: {exc}"
        else:
            self.error = None
        return dict(self.last)

    def done(self, committed: dict[int, int]) -> bool:
        return all(committed.get(p, 0) >= end for p, end in self.end.items())

    def close(self) -> None:
        self.admin.close()
        self.consumer.close()


@dataclasses.dataclass
class Fault:
    """What a scenario did: when the fault began, when the service was whole again, and notes."""
    started: float
    restored: float
    detail: dict


def _busiest_worker(workers: list[subprocess.Popen], ports: list[int]) -> int:
    first = [worker_stats(p).get("events", 0) if w.poll() is None else -1 for w, p in zip(workers, ports)]
    time.sleep(1.0)
    second = [worker_stats(p).get("events", 0) if w.poll() is None else -1 for w, p in zip(workers, ports)]
    return int(np.argmax([b - a for a, b in zip(first, second)]))


def _redis_masters() -> list[int]:
    import redis

    url = deploy(REDIS_SH, "cluster", "url")
    host, port = url.split("://", 1)[1].split(",")[0].rsplit(":", 1)
    client = redis.RedisCluster(host=host, port=int(port))
    try:
        return sorted(n.port for n in client.get_primaries())
    finally:
        client.close()


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s:.0f}s")
        time.sleep(0.2)


def inject(name: str, workers: list[subprocess.Popen], ports: list[int], outage_s: float,
           mark: Callable[[], None]) -> Fault:
    """Inject fault ``name``; ``mark`` is called the moment the fault has struck
    (progress is measured from there)."""
    if name == "worker_kill":
        victim = _busiest_worker(workers, ports)
        started = time.monotonic()
        os.killpg(workers[victim].pid, signal.SIGKILL)
        workers[victim].wait()
        mark()
        return Fault(started, started, {"killed_worker": victim})
    if name == "redis_master_kill":
        port = _redis_masters()[0]
        started = time.monotonic()
        deploy(REDIS_SH, "cluster", "kill", str(port))
        mark()
        _wait(lambda: _failed_over(port), 60, f"a replica promoted in place of master {port}")
        promoted = time.monotonic()
        deploy(REDIS_SH, "cluster", "restart", str(port))  # it rejoins as a replica of the promoted node
        return Fault(started, time.monotonic(), {"killed_master_port": port,
                                                 "promotion_s": round(promoted - started, 2)})
    if name == "broker_kill":
        node = 2
        started = time.monotonic()
        deploy(KAFKA_SH, "cluster", "kill", str(node))
        mark()
        time.sleep(outage_s)
        deploy(KAFKA_SH, "cluster", "restart", str(node))
        return Fault(started, time.monotonic(), {"killed_broker": node, "down_s": outage_s})
    if name == "redis_outage":
        started = time.monotonic()
        deploy(REDIS_SH, "cluster", "stop")
        mark()
        time.sleep(outage_s)
        deploy(REDIS_SH, "cluster", "start")
        return Fault(started, time.monotonic(), {"down_s": outage_s})
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


def _failed_over(dead: int) -> bool:
    """A surviving seed node sees ``dead`` as failed and every slot served again."""
    import redis

    for port in _cluster_ports():
        if port == dead:
            continue
        try:
            node = redis.Redis(port=port, socket_timeout=1)
            info, nodes = node.execute_command("CLUSTER INFO"), node.execute_command("CLUSTER NODES")
        except redis.RedisError:
            continue
        dead_failed = any(address.endswith(f":{dead}") and "fail" in meta["flags"].split(",")
                          for address, meta in nodes.items())
        return (dead_failed and info["cluster_state"] == "ok" and info["cluster_slots_ok"] == "16384"
                and info["cluster_slots_pfail"] == info["cluster_slots_fail"] == "0")
    return False


def _cluster_ports() -> list[int]:
    url = deploy(REDIS_SH, "cluster", "url")
    return [int(hp.rsplit(":", 1)[1]) for hp in url.split("://", 1)[1].split(",")]


def read_events(settings: Settings, which: str = "events") -> list[tuple[dict, int, int]]:
    """Every record of a topic (``TopicNames`` field) as (document, partition, offset), read to its end
    (not until a quiet spell: a slow broker cannot cut it short)."""
    from kafka import KafkaConsumer, TopicPartition

    topic = getattr(TopicNames.of(settings), which)
    consumer = connect(KafkaConsumer, settings, group_id=None, enable_auto_commit=False,
                       max_poll_records=5000, fetch_max_bytes=64 * 2**20)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out = []
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for records in consumer.poll(timeout_ms=2000).values():
                out += [(orjson.loads(r.value), r.partition, r.offset) for r in records]
        return out
    finally:
        consumer.close()


def read_event_ids(settings: Settings, which: str) -> list[str]:
    """``event_id`` of every message of an output topic."""
    return [doc["event_id"] for doc, _, _ in read_events(settings, which)]


def recount(settings: Settings, store, log: list[tuple[dict, int, int]]) -> dict:
    """Compare every user's stored state with the one the log implies."""
    codec = StateCodec(settings.engine_config())
    ids = store.item_ids()
    per_user = defaultdict(list)
    for doc, partition, offset in sorted(log, key=lambda r: (r[1], r[2])):
        per_user[doc["user_id"]].append((doc["item_id"], partition, offset))
    lost = twice = wrong_fence = wrong_history = missing = 0
    examples = []
    for user, events in per_user.items():
        blob = store.read_state(user)
        if blob is None:
            missing += 1
            lost += len(events)
            continue
        state = codec.decode([blob])[0]
        n = int(state["n_events"])
        lost += max(len(events) - n, 0)
        twice += max(n - len(events), 0)
        fence_ok = (int(state["partition"]), int(state["offset"])) == events[-1][1:]
        held = [ids[i] for i in state["hist_item"] if i >= 0]
        history_ok = held == [e[0] for e in events][-settings.history:]
        wrong_fence += not fence_ok
        wrong_history += not history_ok
        if (n != len(events) or not fence_ok or not history_ok) and len(examples) < 5:
            examples.append({"user": user, "log_events": len(events), "state_events": n,
                             "fence_ok": fence_ok, "history_ok": history_ok})
    return {"users": len(per_user), "events": len(log), "events_lost": lost, "events_applied_twice": twice,
            "users_missing": missing, "users_wrong_fence": wrong_fence, "users_wrong_history": wrong_history,
            "examples": examples}


def run_scenario(name: str, events: int, *, fault_at: float = 0.3, outage_s: float = 10.0,
                 timeout_s: float = 900.0, log_dir: Path, base_port: int = 7400,
                 say: Callable[[str], None] = print) -> dict:
    """Run one scenario end to end and return its record (see the module docstring)."""
    kafka, redis_url = clusters_up()
    settings = run_settings(kafka, redis_url, base_port)
    store = settings.store()
    ensure_topics(settings)
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = [base_port + i for i in range(WORKERS)]
    workers = []
    t_begin = time.monotonic()
    try:
        for i, port in enumerate(ports):
            workers.append(start_worker(dataclasses.replace(settings, web_port=port),
                                        log_dir / f"{name}-worker{i}.log"))
        for worker, port in zip(workers, ports):
            wait_ready(port, worker)
        say(f"[{name}] 3 workers ready; producing {events} events")
        produce(settings, generate(events))
        progress = Progress(settings)
        total = sum(progress.end.values())
        fault = None
        at_fault: dict[int, int] = {}
        recovered_at = None
        last_say = 0.0
        deadline = time.monotonic() + timeout_s
        while True:
            committed = progress.committed()
            done_n = sum(min(committed.get(p, 0), e) for p, e in progress.end.items())
            now = time.monotonic()
            if fault is None and done_n >= fault_at * total:
                say(f"[{name}] {done_n}/{total} committed: injecting the fault")
                fault = inject(name, workers, ports, outage_s, lambda: at_fault.update(progress.committed()))
                say(f"[{name}] fault over after {fault.restored - fault.started:.1f}s: {fault.detail}")
                continue
            if fault is not None and recovered_at is None:
                pending = [p for p, e in progress.end.items() if at_fault.get(p, 0) < e]
                if all(committed.get(p, 0) > at_fault.get(p, 0) for p in pending):
                    recovered_at = now
                    say(f"[{name}] resumed on every partition "
                        f"{recovered_at - fault.started:.1f}s after the fault")
            if progress.done(committed) and fault is not None and recovered_at is not None:
                break
            if now > deadline:
                raise TimeoutError(f"[{name}] {done_n}/{total} events committed after {timeout_s:.0f}s")
            if now - last_say > 10:
                say(f"[{name}] {done_n}/{total} committed"
                    + (f" (offsets unread: {progress.error})" if progress.error else ""))
                last_say = now
            time.sleep(0.25)
        t_done = time.monotonic()
        progress.close()
        alive = sum(w.poll() is None for w in workers)
        stats = [worker_stats(p) for w, p in zip(workers, ports) if w.poll() is None]
    finally:
        for worker in workers:
            stop_worker(worker)
    say(f"[{name}] all committed; reading the log back")
    log = read_events(settings)
    result = recount(settings, store, log)
    feedback = read_event_ids(settings, "feedback")
    wanted = {doc["event_id"] for doc, _, _ in log}
    have = set(feedback)
    store.clear()
    store.close()
    return {
        "scenario": name, "events": total, "workers": WORKERS, "partitions": settings.partitions,
        "fault_at_committed": sum(at_fault.values()), "fault": fault.detail,
        "fault_duration_s": round(fault.restored - fault.started, 2),
        "recovery_s": round(recovered_at - fault.started, 2),
        "recovery_after_restore_s": round(max(recovered_at - fault.restored, 0.0), 2),
        "run_s": round(t_done - t_begin, 1), "workers_alive_at_end": alive,
        "retries": sum(s.get("retries", 0) for s in stats),
        "replayed_skipped_by_fence": sum(s.get("replayed", 0) for s in stats),
        **result,
        "feedback_missing": len(wanted - have), "feedback_repeated": len(feedback) - len(have),
    }


def passed(record: dict) -> bool:
    return (record["events_lost"] == 0 and record["events_applied_twice"] == 0
            and record["users_missing"] == 0
            and record["users_wrong_fence"] == 0 and record["users_wrong_history"] == 0
            and record["feedback_missing"] == 0)
