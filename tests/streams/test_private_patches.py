"""Guards for the private internals of Faust, mode and aiokafka that streams/eager.py, streams/sensors.py and
streams/fetch.py rely on. Each test fails loudly, naming the patch to re-check, when an upgrade changes
what the patch assumes; pyproject.toml pins the versions these were checked against."""
from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
from faust.sensors.monitor import Monitor
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from mode.services import Service, WaitResults

# Versions these internals were read in. A new version: re-read the code each test names, then update.
CHECKED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.", "aiokafka": "0.14.0"}


@pytest.mark.parametrize("package", sorted(CHECKED))
def test_the_patched_dependencies_are_the_versions_the_patches_were_checked_against(package):
    assert version(package).startswith(CHECKED[package]), (
        f"{package} {version(package)}: streams/eager.py, streams/sensors.py and streams/fetch.py patch its "
        f"internals as of {CHECKED[package]}; re-check them (and these tests) before moving the pin")


def test_eager_delivery_still_matches_fausts_drain_loop_and_modes_wait_first():
    """streams/eager.py replaces ``Consumer.wait_first``, called per message by ``_drain_messages``."""
    drain = inspect.getsource(Consumer._drain_messages)
    assert "await self.wait_first(" in drain and "callback(message), self.suspend_flow.wait()" in drain
    assert list(inspect.signature(Service.wait_first).parameters) == ["self", "coros", "timeout"]
    assert WaitResults._fields == ("done", "results", "stopped")
    service_source = inspect.getsource(Service.__init__) + inspect.getsource(Service)
    assert "self._stopped" in service_source and "self._crashed" in service_source


def test_the_lean_buffer_check_still_matches_fausts_producer_buffer():
    """streams/eager.py's ``lean_wait_until_ebb`` reads ``queue``, ``pending._queue`` and ``max_messages``."""
    source = inspect.getsource(ProducerBuffer)
    assert "self.pending = asyncio.Queue()" in source and "self.queue" in source
    assert ProducerBuffer.max_messages == 100
    from streams import eager

    # Faust's own method, even when an earlier test already installed the lean one in its place
    ebb = inspect.getsource(eager._original_ebb)
    assert "if self.size > self.max_messages:" in ebb
    size = inspect.getsource(ProducerBuffer.size.fget)
    assert "pending.qsize()" in size or "self.queue" in size


def test_the_lean_monitor_still_overrides_the_hooks_faust_calls_per_message():
    """streams/sensors.py empties four Monitor hooks: they must exist with these parameters, and Faust's
    consumer and streams must still call them through the sensors."""
    expected = {"on_message_in": ["self", "tp", "offset", "message"],
                "on_message_out": ["self", "tp", "offset", "message"],
                "on_stream_event_in": ["self", "tp", "offset", "stream", "event"],
                "on_stream_event_out": ["self", "tp", "offset", "stream", "event", "state"]}
    for name, params in expected.items():
        assert list(inspect.signature(getattr(Monitor, name)).parameters) == params, name
    import faust.streams

    streams_source = inspect.getsource(faust.streams)
    for name in expected:
        assert f"self.app.sensors.{name}" in streams_source, name
