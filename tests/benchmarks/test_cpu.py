"""The benchmark's CPU accounting: it finds the processes it should watch and charges CPU to the right one."""
from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.benchmarks import bench_pipeline
from tests.benchmarks.cpu import CpuMeter, listener_pid, process_cpu_s


def test_listener_pid_finds_the_process_listening_on_a_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert listener_pid(server.getsockname()[1]) == os.getpid()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening
        assert listener_pid(port) is None


def usage_while_spinning(meter: CpuMeter, child: subprocess.Popen, events: int) -> dict:
    """Tell ``child`` to spin (a line on its stdin), wait for its ``done``, and meter the interval."""
    before = meter.sample()
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "done"
    return meter.delta(before, meter.sample(), events=events)


def test_meter_charges_a_busy_child_to_its_group_and_an_idle_one_nothing():
    # spins 0.4 s of CPU when told, then stays alive
    spin = ("import sys, time\ninput()\nend = time.process_time() + 0.4\n"
            "while time.process_time() < end: pass\nprint('done', flush=True)\ntime.sleep(10)\n")
    busy = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        time.sleep(0.2)  # both interpreters started
        meter = CpuMeter({"busy": [busy.pid], "idle": [idle.pid], "none": []})
        assert set(meter.groups) == {"busy", "idle"}, "a group without processes is not reported"
        usage = usage_while_spinning(meter, busy, events=1000)
    finally:
        busy.kill()
        idle.kill()
    assert usage["cpu_s"]["busy"] == pytest.approx(0.4, abs=0.15)
    assert usage["cpu_s"]["idle"] < 0.05
    assert usage["cpu_us_per_event"]["busy"] == pytest.approx(1e6 * usage["cpu_s"]["busy"] / 1000)
    assert usage["cpu_s"]["other"] >= 0.0
    assert usage["total_us_per_event"] >= usage["cpu_us_per_event"]["busy"]
    assert 0.0 < usage["machine_utilisation"] <= 1.05  # the two /proc files tick separately
    assert usage["ceiling_events_per_s"] == pytest.approx(usage["cores"] * 1e6 / usage["total_us_per_event"])


def test_meter_splits_a_process_by_what_its_named_threads_do():
    """A child names a thread ``af-engine`` and spins in it: the engine role is charged, the event loop is
    not."""
    spin = "\n".join([
        "import threading, time",
        "from streams.threadnames import set_native_name",
        "def work():",
        "    assert set_native_name('af-engine')",
        "    input()",
        "    end = time.thread_time() + 0.4",
        "    while time.thread_time() < end: pass",
        "    print('done', flush=True)",
        "    time.sleep(10)  # a thread that has ended is no longer in /proc",
        "set_native_name('af-loop')",
        "threading.Thread(target=work).start()",
        "time.sleep(10)"])
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=bench_pipeline.REPO)
    try:
        time.sleep(0.5)  # the interpreter has started and named its threads
        meter = CpuMeter({"worker": [child.pid]}, threads_of=("worker", "absent"))
        assert meter.threads_of == ["worker"]
        usage = usage_while_spinning(meter, child, events=100)
    finally:
        child.kill()
    roles = usage["threads_us_per_event"]["worker"]
    assert roles["engine"] == pytest.approx(1e6 * 0.4 / 100, rel=0.4)
    assert roles["event loop"] < roles["engine"] / 10
    assert sum(roles.values()) == pytest.approx(usage["cpu_us_per_event"]["worker"], rel=0.2)


def test_meter_reports_a_vanished_process_as_unknown_not_zero():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    assert process_cpu_s(child.pid) is None
    meter = CpuMeter({"gone": [child.pid]})
    usage = meter.delta(meter.sample(), meter.sample(), events=10)
    assert usage["cpu_s"]["gone"] is None and usage["cpu_us_per_event"]["gone"] is None


def test_medians_flatten_the_accounting_per_process():
    metrics = collections.defaultdict(list)
    usage = {"cpu_us_per_event": {"worker": 200.0, "kafka broker": 10.0}, "total_us_per_event": 250.0,
             "machine_utilisation": 0.6, "ceiling_events_per_s": 8000.0}
    bench_pipeline.add_cpu(metrics, "", usage)
    bench_pipeline.add_cpu(metrics, "latency@0.50_", usage)
    bench_pipeline.add_cpu(metrics, "", None)
    assert metrics["cpu_us_per_event_kafka_broker"] == [10.0]
    assert metrics["cpu_ceiling_events_per_s"] == [8000.0]
    assert metrics["latency@0.50_cpu_us_per_event_worker"] == [200.0]
    assert "latency@0.50_cpu_ceiling_events_per_s" not in metrics


def test_medians_keep_the_slo_share_and_the_lead_in_apart_from_the_measured_phase():
    def run(p99, first_p99):
        q = bench_pipeline.latency_percentiles
        lead = {"event_to_recommendation": q([0.02] * 90 + [0.1] * 10), "first_second": q([first_p99] * 10)}
        return {"10000": {"pipeline": {"throughput": {"events_per_s": 8000.0}, "latency": {"0.50": {
            "rate_target": 4000.0, "mean_batch_events": 60.0, "lead_in": lead,
            "event_to_recommendation": q([0.01] * 98 + [p99] * 2)}}}}}

    runs = [run(0.2, 0.3), run(0.04, 0.1), run(0.06, 0.2)]
    med = bench_pipeline.medians(runs, [10000])["10000"]["pipeline"]
    assert round(med["latency@0.50_p99_ms"]) == 60 and med["latency@0.50_within_slo"] == 0.98
    assert round(med["latency@0.50_first_second_p99_ms"]) == 200
    assert med["latency@0.50_lead_in_within_slo"] == 0.9
    old = run(0.2, 0.3)  # a run from before the lead-in existed
    del old["10000"]["pipeline"]["latency"]["0.50"]["lead_in"]
    old_med = bench_pipeline.medians([old], [10000])["10000"]["pipeline"]
    assert "latency@0.50_first_second_p99_ms" not in old_med
