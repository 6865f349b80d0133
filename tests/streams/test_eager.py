"""streams/eager.py: Faust's consumer hands messages over without tasks, and waits
exactly as before otherwise."""
import asyncio

import pytest
from mode.services import Service

from streams.eager import eager_wait_first


def run(coro):
    return asyncio.run(coro)


def test_a_delivery_that_does_not_wait_returns_at_once_and_starts_nothing_else():
    async def main():
        service, started = Service(), []

        async def deliver():
            return "delivered"

        async def other():
            started.append(True)
            await asyncio.Event().wait()

        tasks_before = len(asyncio.all_tasks())
        result = await eager_wait_first(service, deliver(), other())
        return result, started, len(asyncio.all_tasks()) - tasks_before

    (done, results, stopped), started, new_tasks = run(main())
    assert results == ["delivered"] and not stopped
    assert started == [] and new_tasks == 0


@pytest.mark.parametrize("wait", ["sleep", "sleep0"])
def test_a_delivery_that_waits_goes_on_as_a_task_and_its_result_comes_back(wait):
    async def main():
        async def deliver():
            await (asyncio.sleep(0.01) if wait == "sleep" else asyncio.sleep(0))
            return 7

        coro = deliver()
        results = await eager_wait_first(Service(), coro, asyncio.Event().wait())
        return results.done == [coro], results.results

    assert run(main()) == (True, [7])


def test_a_blocked_delivery_is_interrupted_by_the_other_awaitable_as_in_stock_faust():
    async def main():
        queue, suspend = asyncio.Queue(1), asyncio.Event()
        await queue.put("earlier")

        async def deliver():
            await queue.put("blocked")  # the stream's buffer is full

        waiting = asyncio.ensure_future(eager_wait_first(Service(), deliver(), suspend.wait()))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        suspend.set()  # a rebalance suspends the flow
        results = await waiting
        await asyncio.sleep(0)
        return results.results, queue.qsize()

    assert run(main()) == ([True], 1)  # the blocked put was cancelled, not left to land later


def test_errors_propagate_whether_raised_at_once_or_after_waiting():
    async def at_once():
        raise ValueError("bad message")

    async def later():
        await asyncio.sleep(0.001)
        raise KeyError("later")

    for failing, error in ((at_once, ValueError), (later, KeyError)):
        with pytest.raises(error):
            run(eager_wait_first(Service(), failing(), asyncio.Event().wait()))


def test_anything_but_coroutines_and_a_stopped_service_take_the_stock_path():
    async def main():
        service, event = Service(), asyncio.Event()
        event.set()
        first = await eager_wait_first(service, event)  # an Event, as Service.wait passes
        service._stopped.set()

        async def deliver():
            return 1

        second = await eager_wait_first(service, deliver())
        return first, second

    first, second = run(main())
    assert first.results == [True] and not first.stopped
    assert second.stopped  # stock behaviour: a stopped service reports stopped


def test_the_producer_buffer_check_flushes_exactly_when_faust_would():
    """Faust's conductor awaits ``wait_until_ebb`` before every delivery; the lean check returns at
    once while the buffer is within its limit and leaves a fuller one to Faust's own flush."""
    from types import SimpleNamespace

    from faust.transport.producer import ProducerBuffer

    from streams.eager import _original_ebb, lean_wait_until_ebb

    async def flushes(check, pending: int) -> list[int]:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        for n in range(pending):
            buffer.pending.put_nowait(n)
        flushed = []

        async def flush_atmost(most):
            flushed.append(most)
            return most

        buffer.flush_atmost = flush_atmost
        await check(buffer)
        return flushed

    for pending in (0, ProducerBuffer.max_messages, ProducerBuffer.max_messages + 1):
        lean, stock = (run(flushes(check, pending)) for check in (lean_wait_until_ebb, _original_ebb))
        assert lean == stock == ([ProducerBuffer.max_messages] if pending > ProducerBuffer.max_messages
                                 else [])
