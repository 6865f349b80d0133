"""streams/serving.py: coalescing of concurrent requests, and the statuses /recommendations answers with."""
import asyncio
import threading

import redis

from models.store import MemoryStore
from streams.serving import RequestBatcher, ServingService
from streams.settings import Settings

SETTINGS = Settings(compile_cache_dir="", dim=8, history=4, k=3, initial_capacity=64, batch_size=16,
                    scenes=("default", "home"), serve_max_k=10, serve_max_exclude=2, serve_batch_size=8)


class Gate:
    """An answer function that holds its first call until released, recording every call's size."""

    def __init__(self):
        self.calls, self.entered, self.release = [], threading.Event(), threading.Event()

    def __call__(self, requests):
        self.calls.append(len(requests))
        self.entered.set()
        self.release.wait(10)
        return [f"answer-{r}" for r in requests]


async def run_with_first_call_held(batcher, gate, n):
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, 10)  # first call is running
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, n)]
    await asyncio.sleep(0)  # all queued
    gate.release.set()
    answers = await asyncio.gather(first, *rest)
    await batcher.stop()
    return answers


def test_requests_that_queue_during_a_call_are_answered_together_up_to_the_batch_size():
    gate = Gate()
    answers = asyncio.run(run_with_first_call_held(RequestBatcher(gate, max_batch=8), gate, 20))
    assert answers == [f"answer-{i}" for i in range(20)]
    assert gate.calls == [1, 8, 8, 3]


def test_the_batch_window_is_waited_only_while_requests_arrive_during_calls():
    gate = Gate()
    batcher = RequestBatcher(gate, max_batch=8, window_s=0.001)
    answers = asyncio.run(run_with_first_call_held(batcher, gate, 20))
    assert answers == [f"answer-{i}" for i in range(20)]
    assert gate.calls == [1, 8, 8, 3] and batcher.waits == 1  # only before the last, partly filled call

    async def lone():
        lone_batcher = RequestBatcher(lambda requests: requests, max_batch=8, window_s=0.001)
        lone_batcher.start()
        answers = [await lone_batcher.submit(n) for n in range(3)]  # one client, one request at a time
        await lone_batcher.stop()
        return answers, lone_batcher.waits
    assert asyncio.run(lone()) == ([0, 1, 2], 0)


def test_without_batching_every_request_is_its_own_call():
    gate = Gate()
    asyncio.run(run_with_first_call_held(RequestBatcher(gate, max_batch=1), gate, 5))
    assert gate.calls == [1, 1, 1, 1, 1]


def test_a_failing_call_fails_each_of_its_requests_and_the_next_call_goes_on():
    calls = []

    def answer(requests):
        calls.append(list(requests))
        if len(calls) == 1:
            raise redis.ConnectionError("down")
        return requests

    async def go():
        batcher = RequestBatcher(answer, max_batch=4)
        batcher.start()
        first = await asyncio.gather(batcher.submit("a"), return_exceptions=True)
        second = await batcher.submit("b")
        await batcher.stop()
        return first, second

    first, second = asyncio.run(go())
    assert isinstance(first[0], redis.ConnectionError) and second == "b"


def test_statuses_not_ready_bad_request_answer_and_store_down():
    class Flaky(MemoryStore):
        down = False

        def read_batch(self, users, new_item_ids):
            if self.down:
                raise redis.ConnectionError("down")
            return super().read_batch(users, new_item_ids)

    store = Flaky()
    store.item_index([f"i{n}" for n in range(20)])

    async def go():
        service = ServingService(SETTINGS, store=store)
        out = [await service.respond({"user_id": "u"})]
        await service.start()
        out.append(await service.respond({"user_id": "u", "scene": "home", "k": "4"}))
        out.append(await service.respond({"user_id": "u", "k": "11"}))
        out.append(await service.respond({"user_id": "u", "exclude": "a,b,c"}))
        store.down = True
        out.append(await service.respond({"user_id": "u"}))
        stats = service.stats()
        await service.stop()
        return out, stats

    (not_ready, ok, bad_k, too_many, down), stats = asyncio.run(go())
    assert not_ready == (503, {"error": "not_ready", "message": not_ready[1]["message"]})
    assert ok[0] == 200 and ok[1]["cold_start"] and len(ok[1]["items"]) == 4 and ok[1]["scene"] == "home"
    assert set(ok[1]) == {"user_id", "scene", "items", "scores", "model_version", "catalogue_version",
                          "cold_start"}
    assert bad_k[0] == 400 and bad_k[1]["error"] == "bad_k" and bad_k[1]["max_k"] == 10
    assert too_many[0] == 400 and too_many[1]["error"] == "too_many_excludes"
    assert down[0] == 503 and down[1]["error"] == "store_unavailable"
    assert stats["responses"] == {"200": 1, "400": 2, "503": 2} and stats["cold_starts"] == 1
