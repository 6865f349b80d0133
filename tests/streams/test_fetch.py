"""streams/fetch.py: Faust's consumer gets the fetch limits it is configured with."""
import asyncio
import inspect

from aiokafka import AIOKafkaConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams import fetch


def test_the_limits_reach_the_consumer_faust_builds(monkeypatch):
    async def make():  # aiokafka wants a running loop; never started, so no broker is needed
        return AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")

    built = asyncio.run(make())
    monkeypatch.setattr(fetch, "_original", lambda thread, transport: built)
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer",
                        AIOKafkaConsumerThread._create_worker_consumer)
    fetch.install(min_bytes=16384, max_wait_ms=5)
    consumer = AIOKafkaConsumerThread._create_worker_consumer(object(), transport=None)
    assert consumer is built
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (16384, 5)


def test_aiokafka_still_builds_its_fetcher_from_those_attributes():
    """``fetch.install`` sets private attributes; this fails loudly if an aiokafka upgrade renames them."""
    source = inspect.getsource(AIOKafkaConsumer.start)
    assert "fetch_min_bytes=self._fetch_min_bytes" in source
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in source


def test_faust_still_uses_the_defaults_the_settings_name():
    """Nothing is patched at the defaults: they must stay what Faust and aiokafka use (a version change
    that moves them shows here)."""
    import faust.transport.drivers.aiokafka as driver

    assert inspect.signature(AIOKafkaConsumer).parameters["fetch_min_bytes"].default == 1
    source = inspect.getsource(driver.AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_max_wait_ms=1500" in source
    assert fetch.FAUST_DEFAULTS == {"fetch_min_bytes": 1, "fetch_max_wait_ms": 1500}
    before = AIOKafkaConsumerThread._create_worker_consumer
    assert fetch.install(1, 1500) is False
    assert AIOKafkaConsumerThread._create_worker_consumer is before
