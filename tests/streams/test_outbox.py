"""streams/outbox.py: records land on the partition aiokafka would pick, in per-partition batches.

A stand-in producer keeps these fast; the integration and end-to-end tests ship through the real one.
"""
import asyncio

from aiokafka.partitioner import DefaultPartitioner

from streams.outbox import Outbox


class Builder:
    def __init__(self, room: int):
        self.records, self.room, self.closed = [], room, False

    def append(self, key, value, timestamp):
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()

    def close(self):
        self.closed = True


class Metadata:
    def __init__(self, partitions: int):
        self.partitions = partitions

    def partitions_for_topic(self, topic):
        return set(range(self.partitions))

    def available_partitions_for_topic(self, topic):
        return self.partitions_for_topic(topic)


class Producer:
    """The parts of ``AIOKafkaProducer`` the outbox uses, with its real ``_partition`` logic."""

    def __init__(self, partitions: int, room: int = 1000, partitioner=None):
        self._metadata = Metadata(partitions)
        self._partitioner = partitioner or DefaultPartitioner()
        self.room, self.shipped, self.partition_calls = room, [], 0

    async def partitions_for(self, topic):
        return self._metadata.partitions_for_topic(topic)

    def _partition(self, topic, partition, key, value, serialized_key, serialized_value):
        self.partition_calls += 1
        all_partitions = sorted(self._metadata.partitions_for_topic(topic))
        return self._partitioner(serialized_key, all_partitions, all_partitions)

    def create_batch(self):
        return Builder(self.room)

    async def send_batch(self, builder, topic, partition):
        assert builder.closed
        self.shipped.append((topic, partition, builder.records))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def where(producer: Producer) -> dict:
    return {(topic, key): partition for topic, partition, records in producer.shipped for key, _ in records}


def expected_partition(key: bytes, partitions: int) -> int:
    return DefaultPartitioner()(key, list(range(partitions)), list(range(partitions)))


def test_keys_land_where_the_partitioner_puts_them_and_each_key_is_hashed_once():
    producer = Producer(partitions=4)
    outbox = Outbox(lambda: producer)
    records = [(topic, f"user-{i % 50}".encode(), b"v") for i in range(400) for topic in ("recs", "feedback")]
    asyncio.run(outbox.send(records))
    assert producer.partition_calls == 100  # 50 keys x 2 topics; the other 700 records hit the cache
    assert all(partition == expected_partition(key, 4) for (_, key), partition in where(producer).items())
    assert sum(len(records) for *_, records in producer.shipped) == 800
    assert len({(t, p) for t, p, _ in producer.shipped}) == len(producer.shipped)  # one batch per partition


def test_a_new_partition_count_forgets_the_cached_partitions():
    producer = Producer(partitions=4)
    outbox = Outbox(lambda: producer)
    keys = [f"user-{i}".encode() for i in range(64)]
    asyncio.run(outbox.send([("recs", key, b"v") for key in keys]))
    producer._metadata.partitions, producer.shipped = 6, []
    asyncio.run(outbox.send([("recs", key, b"v") for key in keys]))
    assert all(partition == expected_partition(key, 6) for (_, key), partition in where(producer).items())


def test_full_batches_are_shipped_and_unkeyed_or_custom_partitioned_records_are_never_cached():
    class RoundRobin:
        def __init__(self):
            self.n = 0

        def __call__(self, key, all_partitions, available):
            self.n += 1
            return all_partitions[self.n % len(all_partitions)]

    producer = Producer(partitions=3, room=2, partitioner=RoundRobin())
    asyncio.run(Outbox(lambda: producer).send([("recs", b"same-key", b"v")] * 9 + [("recs", None, b"v")] * 3))
    assert producer.partition_calls == 12
    assert sum(len(records) for *_, records in producer.shipped) == 12
    assert all(len(records) <= 2 for *_, records in producer.shipped)


def test_every_output_of_a_rank_batch_leaves_in_closed_batches():
    """Recommendations, feedback, dead letters and the training message: all through ``send_batch``.

    A record given to ``producer.send`` instead lingers in an open batch (``producer_linger_ms``)
    before it leaves, and the rank batch waits for all its records: it once held every batch's
    delivery back by the linger. The stand-in producer has no ``send``, so such a record fails here.
    """
    from types import SimpleNamespace

    from models.engine import BatchResult, Feedback, Recommendation, Rejected, SourcedEvent
    from models.events import Event
    from models.training import toy_examples
    from streams.agents import DeadLetter, RankWorker
    from streams.settings import Settings

    producer = Producer(partitions=2)
    topics = [SimpleNamespace(get_topic_name=lambda name=name: name)
              for name in ("recs", "feedback", "dead", "train")]
    worker = RankWorker(Settings(compile_cache_dir=""), *topics)
    worker.outbox = Outbox(lambda: producer)
    cfg = worker.cfg
    result = BatchResult(
        recommendations=[Recommendation("u1", "default", ["i1"], [0.5], 3, 1.0)],
        feedback=[Feedback("u1", "i1", "click", "default", 1.0, True, 1, 0.2, "default", None)],
        rejected=[Rejected(SourcedEvent(Event("u2", "i9", "view", 2.0), 0, 7), "unknown item")])
    result.examples = toy_examples(cfg, n=3, n_items=10)
    bad = DeadLetter(b"{bad", "not valid JSON", "events", 1, 8)

    futures = asyncio.run(worker._queue_outputs([result], [bad], "events"))
    shipped = {topic: sum(len(records) for t, _, records in producer.shipped if t == topic)
               for topic in ("recs", "feedback", "dead", "train")}
    assert shipped == {"recs": 1, "feedback": 1, "dead": 2, "train": 1}
    assert len(futures) == len(producer.shipped)
    assert dict(worker.metrics.deadletters) == {"invalid_json": 1, "bad_value": 1}


def test_prepare_fetches_metadata_and_connects_to_each_leader_once():
    from types import SimpleNamespace

    ready = []

    async def connect(node):
        ready.append(node)
        return True

    producer = Producer(partitions=3)
    producer.client = SimpleNamespace(ready=connect, cluster=SimpleNamespace(
        leader_for_partition=lambda tp: {"recs": 1, "feedback": 2}[tp.topic] if tp.partition else None))
    asyncio.run(Outbox(lambda: producer).prepare(["recs", "feedback"]))
    assert sorted(ready) == [1, 2]    # one connection per leader; a partition without a leader is skipped
