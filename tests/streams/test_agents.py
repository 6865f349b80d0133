"""streams/agents.py: what the rank worker does with a micro-batch, with a stand-in producer and store."""
import asyncio
from types import SimpleNamespace

import orjson

from models.engine import Engine
from models.store import MemoryStore
from streams.agents import RankWorker
from streams.outbox import Outbox
from streams.settings import Settings
from tests.streams.test_outbox import Producer


class Message(SimpleNamespace):
    def incref(self):
        self.refs = getattr(self, "refs", 0) + 1


class FaustEvent(SimpleNamespace):
    def ack(self):
        self.acked = True


def test_the_rank_worker_bounds_ts_by_each_records_own_timestamp():
    """An event more than ATTNFLOW_MAX_FUTURE_S after its Kafka record's timestamp is dead-lettered;
    the same ts on a record a day older, or on a record without a timestamp, is ranked. The
    reference is the record's, never the worker's clock, so a replay decides the same."""
    settings = Settings(compile_cache_dir="", dim=8, history=4, k=3, initial_capacity=8, batch_size=16,
                        scenes=("default",), train_enabled=False, pipeline_depth=1, max_future_s=3600.0)
    producer = Producer(partitions=1)
    topics = [SimpleNamespace(get_topic_name=lambda name=name: name) for name in ("recs", "feedback", "dead")]
    worker = RankWorker(settings, *topics)
    worker.outbox = Outbox(lambda: producer)
    worker.engine = Engine(worker.cfg, MemoryStore())
    worker.metrics.batches = 1  # not the first batch: that one freezes the heap (of the test process here)
    ts = 1_700_000_000.0
    value = orjson.dumps({"user_id": "u", "item_id": "i", "type": "view", "ts": ts})
    records = [ts - 3601, ts - 3600, None, ts - 10**9]  # each record's own timestamp
    events = [FaustEvent(value=value, message=Message(topic="events", partition=0, offset=n, timestamp=sent))
              for n, sent in enumerate(records)]

    async def take():
        await worker.handle(events)
        await worker.drain()

    asyncio.run(take())
    dead = [orjson.loads(v) for topic, _, records in producer.shipped if topic == "dead" for _, v in records]
    assert [(d["offset"], d["reason"].split(":")[0]) for d in dead] == [(0, "timestamp out of range"),
                                                                        (3, "timestamp out of range")]
    assert "3601 s after its Kafka record's timestamp" in dead[0]["reason"]
    assert dict(worker.metrics.deadletters) == {"bad_timestamp": 2}
    assert worker.engine.store.read_state("u") is not None and worker.metrics.recommendations == 1
    assert all(e.acked for e in events) and all(e.message.refs == 1 for e in events)


def test_a_store_that_refuses_the_worker_stops_it_instead_of_dead_lettering_its_traffic():
    """A wrong password or an ACL without a needed command is no event's fault: the batch fails (the
    worker's supervisor then stops it with the error), nothing is dead-lettered and nothing is acked."""
    import pytest
    import redis

    class RefusingStore(MemoryStore):
        def read_batch(self, users, new_item_ids):
            raise redis.exceptions.NoPermissionError("this user has no permissions to run the 'mget' command")

    settings = Settings(compile_cache_dir="", dim=8, history=4, k=3, initial_capacity=8, batch_size=16,
                        scenes=("default",), train_enabled=False, pipeline_depth=1)
    producer = Producer(partitions=1)
    topics = [SimpleNamespace(get_topic_name=lambda name=name: name) for name in ("recs", "feedback", "dead")]
    worker = RankWorker(settings, *topics)
    worker.outbox = Outbox(lambda: producer)
    worker.engine = Engine(worker.cfg, RefusingStore())
    worker.metrics.batches = 1
    value = orjson.dumps({"user_id": "u", "item_id": "i", "type": "view", "ts": 1_700_000_000.0})
    events = [FaustEvent(value=value, message=Message(topic="events", partition=0, offset=n, timestamp=None))
              for n in range(3)]

    async def take():
        await worker.handle(events)
        await worker.drain()

    with pytest.raises(redis.exceptions.NoPermissionError):
        asyncio.run(take())
    assert not [topic for topic, _, _ in producer.shipped if topic == "dead"]
    assert not any(getattr(e, "acked", False) for e in events)


def test_a_worker_whose_orderly_stop_hangs_after_a_failed_batch_ends_itself_with_status_70():
    """The guard that ``crash_agent`` starts: a process still alive ``grace_s`` after a failed batch
    (here: one that sleeps instead of stopping) exits with EX_SOFTWARE and says why in its log."""
    import subprocess
    import sys

    program = ("import time\n"
               "from streams.agents import exit_unless_stopped_within\n"
               "exit_unless_stopped_within(0.05, RuntimeError('refused'))\n"
               "time.sleep(600)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 70
    assert "did not stop" in done.stderr and "RuntimeError: refused" in done.stderr


def test_the_hard_exit_guard_is_off_at_zero():
    from streams.agents import exit_unless_stopped_within

    assert exit_unless_stopped_within(0, RuntimeError("x")) is None
