"""The pipeline benchmark's view of its processes and services: worker processes (start, ready, stop,
RSS and CPU), the Kafka group's offsets, and Redis ``INFO`` deltas.
"""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

from streams.settings import Settings
from tests.benchmarks.common import REPO
from tests.benchmarks.cpu import process_cpu_s


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
