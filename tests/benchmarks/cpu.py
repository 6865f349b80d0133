"""Where the machine's CPU goes per event: the worker, the broker, Redis, the benchmark, the rest.

A throughput number alone does not say whether a goal is out of reach on a machine. CPU seconds
per event do: on ``cores`` cores, nothing can go faster than ``cores / (CPU seconds per event)``
events per second, whatever the pipeline does, and the split says which process spends them.

    >>> meter = CpuMeter({"self": [os.getpid()]})
    >>> before = meter.sample()
    >>> while meter.delta(before, meter.sample(), events=1)["cpu_us_per_event"]["self"] == 0:  # a clock tick
    ...     _ = sum(i * i for i in range(100_000))
    >>> usage = meter.delta(before, meter.sample(), events=1000)
    >>> own = usage["cpu_us_per_event"]["self"]
    >>> own > 0 and usage["total_us_per_event"] >= own
    True
"""
from __future__ import annotations

import os
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads); None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def thread_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of a process: its OS name and user + system CPU seconds ({} once the process is gone)."""
    out = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            head, tail = (task / "stat").read_text().rsplit(")", 1)
            fields = tail.split()
            out[int(task.name)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / CLK_TCK)
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return out


def machine_busy_s() -> float | None:
    """CPU seconds every process on the machine has run (user, nice, system, irq, softirq), all cores.

    Steal (time the hypervisor gave to another guest) and idle/iowait are not counted."""
    try:
        user, nice, system, _idle, _iowait, irq, softirq = (
            int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq) / CLK_TCK


def listener_pid(port: int) -> int | None:
    """The local process listening on TCP ``port`` (the broker, Redis), or None when it is not visible."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


class CpuMeter:
    """CPU seconds of named groups of processes, and of the whole machine, between two samples.

    What the named groups do not account for is ``other``: the kernel's own work for sockets and
    disks outside process time, other processes of the benchmark, anything else on the machine.
    """

    def __init__(self, groups: dict[str, list[int]], threads_of: tuple[str, ...] = ()):
        self.groups = {name: [pid for pid in pids if pid] for name, pids in groups.items() if any(pids)}
        self.threads_of = [name for name in threads_of if name in self.groups]
        self.cores = os.cpu_count() or 1

    def sample(self) -> dict:
        procs = {}
        for name, pids in self.groups.items():
            values = [process_cpu_s(pid) for pid in pids]
            procs[name] = None if not pids or any(v is None for v in values) else sum(values)
        threads = {name: {(pid, tid): v for pid in self.groups[name] for tid, v in thread_cpu_s(pid).items()}
                   for name in self.threads_of}
        return {"t": time.perf_counter(), "machine": machine_busy_s(), "procs": procs, "threads": threads}

    def _by_role(self, before: dict, after: dict) -> dict[str, dict[str, float]]:
        """CPU seconds of each group in ``threads_of`` split by what its threads do (``streams.threadnames``);
        a thread that started in between counts from zero, one that ended in between is missing."""
        from streams.threadnames import role_of

        out = {}
        for name in self.threads_of:
            roles: dict[str, float] = {}
            old = before.get("threads", {}).get(name, {})
            for key, (comm, seconds) in after.get("threads", {}).get(name, {}).items():
                role = role_of(comm)
                roles[role] = roles.get(role, 0.0) + seconds - old.get(key, (comm, 0.0))[1]
            out[name] = roles
        return out

    def delta(self, before: dict, after: dict, events: int) -> dict:
        wall = after["t"] - before["t"]
        per = {}
        for name in self.groups:
            a, b = before["procs"].get(name), after["procs"].get(name)
            per[name] = (b - a) if a is not None and b is not None else None
        machine = (after["machine"] - before["machine"]
                   if None not in (before["machine"], after["machine"]) else None)
        named = sum(v for v in per.values() if v is not None)
        if machine is not None:
            per["other"] = max(machine - named, 0.0)
        # /proc/stat and /proc/PID/stat tick separately: the machine never did less than its processes
        total = max(machine, named) if machine is not None else named
        us = (lambda s: 1e6 * s / events if s is not None and events else None)  # noqa: E731
        return {
            "wall_s": wall, "events": events, "cores": self.cores,
            "machine_utilisation": total / (wall * self.cores) if wall > 0 else None,
            "cpu_s": per, "cpu_us_per_event": {name: us(s) for name, s in per.items()},
            "total_us_per_event": us(total),
            "threads_us_per_event": {name: {role: us(s) for role, s in sorted(roles.items())}
                                     for name, roles in self._by_role(before, after).items()},
            # the most events/s these processes could reach on this machine at this CPU cost per event
            "ceiling_events_per_s": self.cores * events / total if total and events else None,
        }
