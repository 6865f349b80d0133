"""A worker as a child process, as the demo, the tests and the benchmarks run it: start one with given
settings, wait for its ``/ready``, read its ``/stats``, stop it; and how a process lowers its own CPU
priority (``attnflow worker`` with ``ATTNFLOW_TRAIN_NICE``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from streams.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def lower_priority(increment: int) -> str:
    """Let other processes on this machine have the CPU first: nice, and the autogroup's nice too.

    Linux keeps a nice value per thread and new threads inherit it, so call this before anything
    starts a thread. With autogroups (``/proc/sys/kernel/sched_autogroup_enabled``), the scheduler
    first shares the CPU fairly between sessions and applies nice only within one; a process that
    leads its own session (started with setsid, as the benchmark and service managers do) therefore
    also lowers its autogroup's weight. One that shares a terminal's session leaves the autogroup
    alone, as that would slow the session's other processes too; plain nice already applies there.
    """
    done = [f"nice {os.nice(increment)}"]
    autogroup = Path("/proc/self/autogroup")
    if os.getsid(0) == os.getpid() and autogroup.exists():
        try:
            autogroup.write_text(str(increment))
            done.append(f"autogroup nice {increment}")
        except OSError as exc:
            done.append(f"autogroup unchanged ({exc.strerror})")
    return ", ".join(done)


def wait_ready(port: int, process: subprocess.Popen | None = None, timeout_s: float = 600.0) -> dict:
    """Poll a worker's ``/ready`` until it answers 200; raises at once if the process dies, or when time
    runs out. The deadline is only a ceiling against a hung start: three workers compiling their kernels
    at once on a busy 2-core machine took over 180 s in CI, so it is generous."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"worker exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as reply:
                return orjson.loads(reply.read())
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"worker on port {port} not ready after {timeout_s:.0f}s")


def worker_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as reply:
        return orjson.loads(reply.read())


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    """A rank worker in a child process with ``settings`` in its environment."""
    env = {**os.environ, **settings.as_env()}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=out,
                            stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def stop_worker(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
