"""Batched event messages through the rank worker: the same results as one event per message, a fence
per event (partition, offset, index) and bad events dead-lettered alone with their index."""
import asyncio
from types import SimpleNamespace

import numpy as np
import orjson

from models.engine import Engine
from models.events import Event
from models.store import MemoryStore
from streams.agents import RankWorker
from streams.codec import encode_event, encode_events
from streams.outbox import Outbox
from streams.settings import Settings
from tests.streams.test_agents import FaustEvent, Message
from tests.streams.test_outbox import Producer

USERS = [f"u{i}" for i in range(5)]


def stream(n=64, seed=3):
    rng = np.random.default_rng(seed)
    types = ("view", "click", "cart", "purchase")
    return [Event(USERS[rng.integers(len(USERS))], f"i{rng.integers(25)}", types[rng.integers(4)], float(t),
                  event_id=f"e{t}") for t in range(n)]


def worker_on(store, batch_size=16):
    """A rank worker with a stand-in producer; ``batch_size`` is also the engine's events per kernel call."""
    settings = Settings(compile_cache_dir="", dim=8, history=4, k=3, initial_capacity=32,
                        batch_size=batch_size, scenes=("default",), train_enabled=False, pipeline_depth=1)
    producer = Producer(partitions=1)
    topics = [SimpleNamespace(get_topic_name=lambda name=name: name) for name in ("recs", "feedback", "dead")]
    worker = RankWorker(settings, *topics)
    worker.outbox = Outbox(lambda: producer)
    worker.engine = Engine(worker.cfg, store)
    worker.metrics.batches = 1  # not the first batch: that one freezes the heap (of the test process here)
    return worker, producer


def messages(values, first_offset=0):
    return [FaustEvent(value=v,
                       message=Message(topic="events", partition=0, offset=first_offset + n, timestamp=None))
            for n, v in enumerate(values)]


def run(worker, takes):
    async def go():
        for take in takes:
            await worker.handle(take)
        await worker.drain()

    asyncio.run(go())


def shipped(producer, topic):
    return [orjson.loads(v) for t, _, records in producer.shipped if t == topic for _, v in records]


def model_state(store, user, codec):
    """A user's stored state without its fence (which says where the events came from, so differs)."""
    state = codec.decode([store.read_state(user)])[0]
    return {name: state[name].tolist() for name in state.dtype.names
            if name not in ("partition", "offset", "fence_index")}


def test_batched_messages_give_the_states_lists_and_feedback_of_single_event_messages():
    events = stream()
    single, batched = MemoryStore(), MemoryStore()
    one, one_out = worker_on(single)
    many, many_out = worker_on(batched)
    run(one, [messages([encode_event(e) for e in events[i:i + 16]], i) for i in range(0, len(events), 16)])
    # 8 events a message, 4 messages a take: 32 events, split into kernel calls of 16. Interests are
    # stored as float16 between batches, so the same batch boundaries give the same bits.
    values = [encode_events(events[i:i + 8]) for i in range(0, len(events), 8)]
    run(many, [messages(values[i:i + 4], i) for i in range(0, len(values), 4)])
    assert many.metrics.events == one.metrics.events == len(events)
    # each take of 32 events went as two batches of 16: batches still pipeline and are acked as they finish
    assert many.metrics.batches - 1 == one.metrics.batches - 1 == len(events) // 16
    for user in USERS:
        assert model_state(batched, user, one.engine.codec) == model_state(single, user, one.engine.codec)
    last = {}
    for out in (one_out, many_out):
        last[out] = {r["user_id"]: (r["items"], r["scores"]) for r in shipped(out, "recs")}
    assert last[one_out] == last[many_out] and len(last[one_out]) == len(USERS)
    feedback = [[(f["user_id"], f["item_id"], f["hit"], f["rank"]) for f in shipped(out, "feedback")]
                for out in (one_out, many_out)]
    assert sorted(feedback[0]) == sorted(feedback[1]) and len(feedback[0]) == len(events)
    assert not shipped(many_out, "dead")


def test_a_bad_event_in_a_batch_is_dead_lettered_alone_with_its_index_and_its_neighbours_apply():
    events = stream(6)
    docs = [orjson.loads(encode_event(e)) for e in events]
    docs[2] = {**docs[2], "type": "like"}
    docs[4] = "not an event"
    store = MemoryStore()
    worker, out = worker_on(store)
    take = messages([orjson.dumps(docs), b"[]", b"[{]"])
    run(worker, [take])
    dead = shipped(out, "dead")
    assert [(d["offset"], d["index"], d["reason"].split(" ")[0]) for d in dead] == [
        (0, 2, "unknown"), (0, 4, "event"), (1, None, "batched"), (2, None, "not")]
    assert orjson.loads(dead[0]["value"]) == docs[2]  # the event's own JSON, not the whole message
    applied = sum(codec_n_events(worker, store, u) for u in USERS)
    assert applied == 4 and len(shipped(out, "feedback")) == 4
    assert worker.metrics.events == 4 + 2 + 2 and all(e.acked for e in take)


def codec_n_events(worker, store, user):
    value = store.read_state(user)
    return 0 if value is None else int(worker.engine.codec.decode([value])[0]["n_events"])


def test_a_redelivered_batched_message_is_skipped_event_by_event():
    """The whole topic again (a crash before the offset commit): every event is fenced off, including
    those of a message whose events were split over two kernel calls."""
    events = stream(40)
    store = MemoryStore()
    worker, out = worker_on(store, batch_size=16)
    values = [encode_events(events[:25]), encode_events(events[25:])]
    run(worker, [messages(values)])
    before = {u: store.read_state(u) for u in USERS}
    again, again_out = worker_on(store, batch_size=16)
    run(again, [messages(values)])
    assert {u: store.read_state(u) for u in USERS} == before
    assert again.metrics.replayed == len(events) and not shipped(again_out, "recs")


def test_the_replay_batcher_keeps_each_users_events_in_order_on_the_partition_of_their_key():
    from kafka.partitioner.default import murmur2

    from streams.codec import decode_events
    from streams.replay import EventBatcher

    events = stream(500)
    batcher = EventBatcher(partitions=3, max_events=40, max_bytes=4096)
    out = [m for e in events for m in batcher.add(e)] + batcher.flush()
    assert sum(n for _, _, n in out) == len(events)
    by_user = {}
    for key, value, n in out:
        assert len(value) <= 4096 and n <= 40
        partition = (murmur2(key) & 0x7FFFFFFF) % 3  # where Kafka's default partitioner puts the message
        decoded, bad = decode_events(value, ("default",))
        assert not bad and len(decoded) == n
        for _, event in decoded:
            assert (murmur2(event.user_id.encode()) & 0x7FFFFFFF) % 3 == partition
            by_user.setdefault(event.user_id, []).append(event)
    assert by_user == {u: [e for e in events if e.user_id == u] for u in by_user}
