"""How long the broker may hold a consumer's fetch (``ATTNFLOW_FETCH_MIN_BYTES`` / ``_FETCH_MAX_WAIT_MS``).

Faust builds its Kafka consumer with aiokafka's ``fetch_min_bytes=1`` and its own ``fetch_max_wait_ms=1500``
and offers no setting for either. Larger values make each fetch carry a few milliseconds of messages, which
costs Faust's consumer thread less per event at live rates (the A/B runs are in docs/performance.md; the
defaults stay Faust's). Only a value that differs from Faust's is set, so by default nothing is patched.
"""
from __future__ import annotations

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

FAUST_DEFAULTS = {"fetch_min_bytes": 1, "fetch_max_wait_ms": 1500}
_original = AIOKafkaConsumerThread._create_worker_consumer


def install(min_bytes: int, max_wait_ms: int) -> bool:
    """Make Faust's consumers fetch with these limits; call before the worker starts. Returns whether a
    limit differed from Faust's own (else nothing is changed).

    >>> install(FAUST_DEFAULTS["fetch_min_bytes"], FAUST_DEFAULTS["fetch_max_wait_ms"])
    False
    """
    wanted = {"fetch_min_bytes": min_bytes, "fetch_max_wait_ms": max_wait_ms}
    changed = {name: value for name, value in wanted.items() if value != FAUST_DEFAULTS[name]}
    if not changed:
        return False

    def create_worker_consumer(self, transport):
        consumer = _original(self, transport)
        for name, value in changed.items():  # read by AIOKafkaConsumer.start() when it builds its fetcher
            setattr(consumer, f"_{name}", value)
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer
    return True
