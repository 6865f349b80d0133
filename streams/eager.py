"""Eager message delivery in Faust's consumer (``ATTNFLOW_EAGER_DELIVERY``, on by default).

Faust hands each fetched message to the streams with ``await self.wait_first(callback(message),
self.suspend_flow.wait())``; mode's ``wait_first`` wraps every argument (and the service's ``stopped`` and
``crashed`` events) in a task, waits for the first and cancels the rest, so that a rebalance can interrupt a
delivery blocked on a full stream buffer. Almost no delivery blocks.

:func:`install` gives Faust's ``Consumer`` a ``wait_first`` that runs the delivery by hand first: if it
finishes without waiting, no task is made; if it has to wait, it goes on as a task under the stock
``wait_first``, so a rebalance still interrupts it. It also replaces ``ProducerBuffer.wait_until_ebb``, which
Faust awaits before every delivery, by a direct length check while the (unthreaded) buffer is under its
limit: attnflow's outputs never go through that buffer (``streams/outbox.py``). What it saves is measured in
docs/performance.md; tests/streams/test_private_patches.py guards the internals it relies on.
"""
from __future__ import annotations

import asyncio
import inspect

from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from mode.services import Service, WaitResults

_original = Service.wait_first
_original_ebb = ProducerBuffer.wait_until_ebb


async def _resume(coro, waiting_on):
    """Drive a coroutine that was started by hand and now waits on ``waiting_on``, as a task would."""
    while True:
        try:
            if waiting_on is None:  # a bare yield (``asyncio.sleep(0)``): give the loop one turn
                await asyncio.sleep(0)
            else:
                # what a task does with a future its coroutine yields; awaiting it again requires it
                waiting_on._asyncio_future_blocking = False
                await waiting_on
        except BaseException as exc:  # noqa: BLE001 -- cancelled, or the awaited future failed: pass it in
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            waiting_on = coro.send(None)
        except StopIteration as stop:
            return stop.value


async def eager_wait_first(self, *coros, timeout=None) -> WaitResults:
    """``Service.wait_first`` that lets its first awaitable finish synchronously without any task."""
    first = coros[0] if coros else None
    if (not inspect.iscoroutine(first) or self._stopped.is_set() or self._crashed.is_set()
            or not all(inspect.iscoroutine(c) for c in coros[1:])):
        return await _original(self, *coros, timeout=timeout)
    try:
        waiting_on = first.send(None)
    except StopIteration as stop:
        for other in coros[1:]:
            other.close()
        return WaitResults([first], [stop.value], False)
    except BaseException:
        for other in coros[1:]:
            other.close()
        raise
    task = asyncio.ensure_future(_resume(first, waiting_on))
    results = await _original(self, task, *coros[1:], timeout=timeout)
    return WaitResults([first if w is task else w for w in results.done], results.results, results.stopped)


async def lean_wait_until_ebb(self) -> None:
    """``ProducerBuffer.wait_until_ebb``, returning at once while the unthreaded buffer is under its limit."""
    if self.queue is None and len(self.pending._queue) <= self.max_messages:
        return
    await _original_ebb(self)


def install(enabled: bool = True) -> None:
    """Switch Faust's consumers to (or back from) eager delivery; call before the worker starts."""
    Consumer.wait_first = eager_wait_first if enabled else _original
    ProducerBuffer.wait_until_ebb = lean_wait_until_ebb if enabled else _original_ebb
