"""Names a worker's threads for the operating system, so that ``top -H``, ``ps -L`` and
``/proc/PID/task/*/comm`` say which thread spends the CPU.

A worker runs Python on several threads (the event loop, Faust's Kafka consumer, the engine, the
state writer, the trainer) that all share one interpreter lock; by default every one of them is
called ``python``. XLA names its own threads (``tf_XLAEigen``...).
"""
from __future__ import annotations

import threading
from pathlib import Path

# comm name (15 bytes at most) -> what the thread does; the CPU benchmark groups threads by these
ROLES = {"af-loop": "event loop", "af-consumer": "kafka consumer", "af-engine": "engine",
         "af-write": "state writes", "af-train": "trainer"}
ALL_ROLES = (*ROLES.values(), "xla", "other")


def set_native_name(name: str, thread: threading.Thread | None = None) -> bool:
    """Give ``thread`` (default: the calling one) an OS-level name; False where the OS does not allow it.

    >>> set_native_name("a-name-longer-than-15-bytes")   # the kernel keeps 15 bytes: refused, not cut
    False
    """
    thread = thread or threading.current_thread()
    if thread.native_id is None or len(name.encode()) > 15:
        return False
    try:
        Path(f"/proc/self/task/{thread.native_id}/comm").write_text(name)
        return True
    except OSError:
        return False


def name_worker_threads() -> None:
    """Name the event loop (the calling thread) and Faust's Kafka consumer thread."""
    set_native_name("af-loop")
    for thread in threading.enumerate():
        service = getattr(thread, "service", None)  # mode's WorkerThread runs a ServiceThread
        if service is not None and type(service).__name__.endswith("ConsumerThread"):
            set_native_name("af-consumer", thread)


def role_of(comm: str) -> str:
    """What a thread does, from its OS name.

    >>> role_of("af-engine"), role_of("tf_XLAEigen"), role_of("python")
    ('engine', 'xla', 'other')
    """
    if comm in ROLES:
        return ROLES[comm]
    if comm.startswith("tf_"):
        return "xla"
    return "other"
