"""Baseline (b): a Faust agent that only iterates the events topic in micro-batches and counts.

The ceiling Faust itself allows for a consumer of this topic. Run it as a worker process:

    python -m tests.benchmarks.noop_app worker -l warn --web-port 6070
    # or: python -m faust -A tests.benchmarks.noop_app worker -l warn --web-port 6070
"""
from __future__ import annotations

from streams.settings import restore_root_log_level
from tests.benchmarks.baseline_app import make_app

app, settings, events_topic, _, counters = make_app("noop")
counters.ready = True


@app.agent(events_topic, concurrency=1, name="noop")
async def noop(stream):
    """Take the same micro-batches as the rank agent and do nothing with them."""
    restore_root_log_level(settings.log_level)  # as the rank worker does once started
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
        counters.done(len(events))


if __name__ == "__main__":
    app.main()
