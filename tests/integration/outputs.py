"""Reading the pipeline's output topics in the integration tests: everything written so far, however
slowly the consumer starts.
"""
from __future__ import annotations

import time

import orjson

from streams.kafka_clients import connect
from streams.topics import TopicNames


def read_to_end(settings, which: str, deadline_s: float = 60.0) -> list[dict]:
    """Every message of an output topic up to its end as it is now, in partition order. (Reading until a
    quiet spell, as ``read_topic`` does, can end before a slow consumer has fetched anything.)"""
    from kafka import KafkaConsumer, TopicPartition

    topic = getattr(TopicNames.of(settings), which)
    consumer = connect(KafkaConsumer, settings, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        docs, deadline = [], time.monotonic() + deadline_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to its end ({end}) within {deadline_s:.0f}s")
            for records in consumer.poll(timeout_ms=500).values():
                docs += [orjson.loads(message.value) for message in records]
        return docs
    finally:
        consumer.close()
