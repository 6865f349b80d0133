"""What every benchmark report carries: the command, the machine, the date, the
commit; plus timing helpers."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
RESULTS = REPO / "docs" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """Where the numbers come from; load average says how busy the (possibly shared) machine was."""
    import jax

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = None
    return {
        "platform": platform.platform(), "cpu_model": cpu_model(), "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1) if mem_gib else None, "python": platform.python_version(),
        "jax": jax.__version__, "jax_devices": [str(d) for d in jax.devices()],
        "load_average_at_start": load,
    }


def git_commit() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    if os.environ.get("ATTNFLOW_BENCH_COMMIT"):
        # a copied tree whose .git is not this commit's (a lent GPU machine)
        return {"commit": os.environ["ATTNFLOW_BENCH_COMMIT"], "dirty": None,
                "source": "ATTNFLOW_BENCH_COMMIT"}
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def command_line() -> list[str]:
    """The command as a user types it: ``python -m tests.benchmarks.x ...`` rather than the module's path."""
    argv = list(sys.argv)
    path = Path(argv[0]).resolve() if argv and argv[0] else None
    if path is not None and path.suffix == ".py" and REPO in path.parents:
        return ["python", "-m", ".".join(path.relative_to(REPO).with_suffix("").parts), *argv[1:]]
    return argv


def header() -> dict:
    return {"command": command_line(), "machine": machine(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "git": git_commit()}


def timed(fn, reps: int, warmup: int = 1) -> list[float]:
    """Seconds of ``fn()`` for ``reps`` calls after ``warmup`` untimed ones (``fn`` must block until done)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def median(values):
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None
