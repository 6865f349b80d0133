"""How long the broker may hold a fetch to gather messages: Faust fixes it, this sets it.

Faust builds its Kafka consumer with ``fetch_max_wait_ms=1500`` and aiokafka's
``fetch_min_bytes=1``: the broker answers a fetch as soon as one byte is there. At a live rate
that is a fetch every few messages, and each costs Faust's consumer thread (``af-consumer``) the
same Python work however little it carries: at a quarter of the maximum rate that thread took more
CPU per event than the event loop does at full speed (the pipeline benchmark's thread table). With ``ATTNFLOW_FETCH_MIN_BYTES`` the broker holds a
fetch until that many bytes are there or ``ATTNFLOW_FETCH_MAX_WAIT_MS`` have passed, so a fetch
carries a few milliseconds of messages. A backlog is fetched at once either way.

The defaults stay Faust's. In A/B runs at half the maximum rate (3 alternating rounds of the
pipeline benchmark's ``pipeline_notrain`` variant at a fixed rate, with 16 KiB / 5 ms and
4 KiB / 10 ms against the defaults), the consumer thread's CPU per event fell by about a third,
but the worker's total hardly moved and the latency percentiles did not improve.
"""
from __future__ import annotations

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

_original = AIOKafkaConsumerThread._create_worker_consumer


def install(min_bytes: int, max_wait_ms: int) -> None:
    """Make Faust's consumers fetch with these limits; call before the worker starts."""
    def create_worker_consumer(self, transport):
        consumer = _original(self, transport)
        # read by AIOKafkaConsumer.start() when it builds its fetcher
        consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = min_bytes, max_wait_ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer
