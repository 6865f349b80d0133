"""What keeps a worker process going or ends it: retries through store outages, the crash of an agent
whose batch failed (with a hard exit if the orderly stop hangs), and the heap freeze after start-up.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading

from models.store import TRANSIENT_ERRORS

log = logging.getLogger(__name__)


async def run_retrying(executor, metrics, fn, *args):
    """Run ``fn`` in ``executor``, retrying store outages (``TRANSIENT_ERRORS``) with backoff until
    they pass; each retry is counted in ``metrics.retries``."""
    loop = asyncio.get_running_loop()
    delay = 0.1
    while True:
        try:
            return await loop.run_in_executor(executor, fn, *args)
        except TRANSIENT_ERRORS as exc:
            metrics.retries += 1
            log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def freeze_heap() -> None:
    """Put every object alive now out of the cyclic garbage collector's reach (``gc.freeze``).

    After start-up a worker holds some 180k tracked objects (JAX, Faust, the compiled kernels) that
    live as long as the process. Each full collection scanned them all again: 100-160 ms, holding
    the GIL, every few seconds under load, which stalled the event loop and the engine alike. Frozen,
    they are never scanned; later garbage is collected as before.
    """
    gc.collect()
    gc.freeze()
    log.info("heap frozen: %d objects out of the collector's scans", gc.get_freeze_count())


EX_SOFTWARE = 70  # the exit status of a worker that had to end itself after a failed batch


def exit_unless_stopped_within(grace_s: float, reason: BaseException) -> threading.Timer | None:
    """End the process with ``EX_SOFTWARE`` if it is still alive ``grace_s`` seconds from now.

    A worker whose batch failed must exit so that its supervisor restarts it and its unacked events are
    redelivered; Faust's orderly stop normally takes a few seconds, but one stuck stage of it (a producer
    flush, an agent that does not drain) would leave a live worker that consumes nothing. Nothing is lost
    by the hard exit: the events were never committed and the state fence skips what was written.
    ``grace_s <= 0`` turns the guard off."""
    if grace_s <= 0:
        return None

    def hard_exit() -> None:
        log.critical("the worker did not stop within %.0fs of a failed batch (%s: %s): "
                     "exiting with status %d", grace_s, type(reason).__name__, reason, EX_SOFTWARE)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EX_SOFTWARE)

    timer = threading.Timer(grace_s, hard_exit)
    timer.daemon = True
    timer.start()
    return timer


async def crash_agent(agent, exc: BaseException, grace_s: float = 0.0) -> None:
    """Crash ``agent`` as if its body had raised ``exc``: what Faust does then (``Agent._execute_actor``),
    and with a ``CrashingSupervisor`` the worker stops and exits with the error; if that stop takes
    longer than ``grace_s``, the process ends itself (see ``exit_unless_stopped_within``)."""
    exit_unless_stopped_within(grace_s, exc)
    for actor in list(agent._actors):
        await actor.crash(exc)
    agent.supervisor.wakeup()
