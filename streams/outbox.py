"""Bulk output: one batch's records go to Kafka as record batches per partition, not one send each.

A rank batch of 512 events produces about 1,000 output records (a recommendation per user, a
feedback record per event). Sent one by one, each pays aiokafka's per-message path (metadata
wait, partitioner, accumulator) and a future: about 20 µs, ~20 ms of every batch on this machine.
Appending them to one ``BatchBuilder`` per (topic, partition) and handing each builder to
``send_batch`` costs about 4 µs a record. Partitions are chosen by the producer's own partitioner,
so a key lands exactly where ``producer.send`` would have put it.

A closed batch is ready for the sender at once, whereas a record given to ``producer.send`` waits in
an open batch for the producer's linger (``producer_linger_ms``) before it leaves. So everything a
rank batch emits goes through here, the training message and dead letters included: one record sent
with ``producer.send`` held the whole batch's delivery for the linger, as the batch waits for every
one of its records to be acknowledged.
"""
from __future__ import annotations

import asyncio
from typing import Iterable

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition

MAX_CACHED_KEYS = 1 << 18


class Outbox:
    """Ships ``(topic, key, value)`` records through an aiokafka producer in per-partition batches.

    ``producer`` is a callable returning the started ``AIOKafkaProducer`` (Faust starts its
    producer after the agents are registered, so it is looked up at send time).

    With the default partitioner a key always lands on the same partition while the topic's
    partition count stays the same, so the partition of each key is remembered per topic (up to
    ``MAX_CACHED_KEYS`` keys; forgotten when the count changes). aiokafka's murmur2 is pure Python:
    two keyed records per event paid ~5 µs of the event loop's time for it.
    """

    def __init__(self, producer):
        self._producer = producer
        # topic -> (its partitions, key -> one)
        self._partitions: dict[str, tuple[object, dict[bytes, int]]] = {}

    def _key_partitions(self, producer, topic: str) -> dict[bytes, int] | None:
        """This topic's key -> partition cache, or None where the partitioner may
        not be a function of the key."""
        if not isinstance(producer._partitioner, DefaultPartitioner):
            return None
        partitions = producer._metadata.partitions_for_topic(topic)
        cached = self._partitions.get(topic)
        if cached is None or cached[0] != partitions or len(cached[1]) > MAX_CACHED_KEYS:
            cached = self._partitions[topic] = (partitions, {})
        return cached[1]

    async def prepare(self, topics: Iterable[str]) -> None:
        """Fetch the topics' metadata and connect to their partitions' leaders now, so that the first
        batch's delivery waits for neither."""
        producer = self._producer()
        leaders = set()
        for topic in topics:
            for partition in await producer.partitions_for(topic):
                leaders.add(producer.client.cluster.leader_for_partition(TopicPartition(topic, partition)))
        for node in leaders - {None, -1}:
            await producer.client.ready(node)

    async def send(self, records: Iterable[tuple[str, bytes | None, bytes]]) -> list[asyncio.Future]:
        """Queue every record; returns the delivery futures (one per record batch) to await."""
        producer = self._producer()
        open_batches: dict[tuple[str, int], object] = {}
        futures: list[asyncio.Future] = []
        caches: dict[str, dict[bytes, int] | None] = {}
        for topic, key, value in records:
            if topic not in caches:
                await producer.partitions_for(topic)  # metadata for the partitioner below
                caches[topic] = self._key_partitions(producer, topic)
            cache = caches[topic]
            partition = cache.get(key) if cache is not None and key is not None else None
            if partition is None:
                partition = producer._partition(topic, None, key, value, key, value)
                if cache is not None and key is not None:
                    cache[key] = partition
            builder = open_batches.get((topic, partition))
            if builder is None:
                builder = open_batches[(topic, partition)] = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:  # full: ship it, start another
                futures.append(await self._ship(producer, builder, topic, partition))
                builder = open_batches[(topic, partition)] = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)  # the first record always fits
        for (topic, partition), builder in open_batches.items():
            futures.append(await self._ship(producer, builder, topic, partition))
        return futures

    @staticmethod
    async def _ship(producer, builder, topic: str, partition: int) -> asyncio.Future:
        builder.close()
        return await producer.send_batch(builder, topic, partition=partition)
