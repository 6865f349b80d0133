"""The README's results block renders what the benchmark measured, and nothing it did not."""
from __future__ import annotations

import re

from streams import benchtables, report


def test_cpu_table_renders_measured_variants_only():
    medians = {"10000": {
        "pipeline": {"cpu_us_per_event_total": 280.4, "cpu_us_per_event_worker": 252.0,
                     "cpu_us_per_event_kafka_broker": 11.0, "machine_utilisation": 0.66,
                     "cpu_ceiling_events_per_s": 7135.0,
                     "latency@0.50_cpu_us_per_event_total": 641.0,
                     "latency@0.50_cpu_us_per_event_worker": 433.0, "latency@0.50_machine_utilisation": 0.74},
        "naive": {"events_per_s": 700.0},  # measured before the accounting existed: no row
    }}
    lines = report._cpu_lines(medians)
    rows = [line for line in lines if line.startswith("| 10,000")]
    assert rows == [
        "| 10,000 | pipeline | max | 280 | 252 | – | 11 | – | – | – | 66% | 7,135 |",
        "| 10,000 | pipeline | 50% | 641 | 433 | – | – | – | – | – | 74% | – |",
    ]
    assert report._cpu_lines({"10000": {"naive": {"events_per_s": 700.0}}}) == []


def test_engine_table_renders_rows_and_fit():
    data = {"command": ["python", "-m", "tests.benchmarks.bench_engine"], "machine": {"cores": 2},
            "parameters": {"items": 10000},
            "results": [{"events": 16, "wall_ms_median": 3.76, "cpu_ms_median": 3.54,
                         "cpu_us_per_event": 221.2},
                        {"events": 512, "wall_ms_median": 27.68, "cpu_ms_median": 29.02,
                         "cpu_us_per_event": 56.7}],
            "fit": {"cpu_ms_fixed_per_batch": 2.39, "cpu_us_per_event": 52.1}}
    lines = report.engine_tables(data)
    assert "| 16 | 3.8 | 3.5 | 221 |" in lines and "| 512 | 27.7 | 29.0 | 57 |" in lines
    assert "Least-squares fit: CPU per batch ≈ 2.4 ms + 52 µs × events." in lines
    assert "Command: `python -m tests.benchmarks.bench_engine`" in lines
    assert report.engine_tables({"results": []}) == []


def test_thread_table_renders_the_worker_threads_where_measured():
    medians = {"10000": {
        "pipeline_notrain": {"thread_us_per_event_worker_event_loop": 90.4,
                             "thread_us_per_event_worker_engine": 27.0,
                             "thread_us_per_event_worker_xla": 40.2,
                             "latency@0.50_thread_us_per_event_worker_event_loop": 300.0},
        "noop_faust": {"cpu_us_per_event_worker": 50.0},  # no thread split measured: no row
    }}
    rows = [line for line in benchtables._thread_lines(medians) if line.startswith("| 10,000")]
    assert rows == ["| 10,000 | pipeline_notrain | max | 90 | – | 27 | – | – | 40 | – |",
                    "| 10,000 | pipeline_notrain | 50% | 300 | – | – | – | – | – | – |"]
    assert benchtables._thread_lines({"10000": {"noop_faust": {"cpu_us_per_event_worker": 50.0}}}) == []


def test_latency_table_shows_the_slo_share_and_a_new_workers_first_second():
    data = {"parameters": {"latency_lead_in_s": 3.0}, "medians": {"10000": {
        "pipeline": {"events_per_s": 8000.0, "latency@0.50_rate": 4000.0, "latency@0.50_p50_ms": 21.4,
                     "latency@0.50_p95_ms": 41.0, "latency@0.50_p99_ms": 70.5,
                     "latency@0.50_within_slo": 0.9716, "latency@0.50_first_second_p99_ms": 133.0},
        "naive": {"events_per_s": 800.0, "latency@0.50_rate": 400.0, "latency@0.50_p50_ms": 4.6,
                  # measured before either existed
                  "latency@0.50_p95_ms": 78.6, "latency@0.50_p99_ms": 91.1}}}}
    lines = report.bench_tables(data)
    assert "| 10,000 | pipeline | 50% (4,000/s) | 21 | 41 | 70 | 97.2% | 133 |" in lines
    assert "| 10,000 | naive | 50% (400/s) | 5 | 79 | 91 | – | – |" in lines
    assert any("runs 3 s before it is measured" in line for line in lines)


def test_fault_table_shows_each_run_and_marks_a_failed_one():
    run = {"scenario": "worker_kill", "fault_duration_s": 0.0, "recovery_s": 8.09, "events_lost": 0,
           "events_applied_twice": 0, "users_missing": 0, "users_wrong_fence": 0, "users_wrong_history": 0,
           "feedback_missing": 0, "replayed_skipped_by_fence": 468, "retries": 0, "passed": True}
    lost = {**run, "scenario": "redis_outage", "fault_duration_s": 14.7, "recovery_s": 19.8, "events_lost": 3,
            "users_wrong_fence": 1, "passed": False}
    lines = report.fault_tables({"events_per_scenario": 20000, "scenarios": [run, lost], "command": ["x"]})
    rows = [line for line in lines if line.startswith("| ") and "fault |" not in line]
    assert rows == [
        "| worker SIGKILLed | 0.0 | 8.1 | 0 | 0 | 0 | 0 | 468 | 0 | yes |",
        "| every Redis node stopped, restarted | 14.7 | 19.8 | 3 | 0 | 1 | 0 | 468 | 0 | **no** |"]
    assert report.fault_tables({"scenarios": []}) == []


def test_readme_keeps_the_ci_test_command_and_stays_short():
    readme = (report.REPO / "README.md").read_text()
    ci = (report.REPO / ".ci" / "run").read_text()
    # CI's first pytest names no paths (options such as --durations aside): the whole suite, as in the README
    assert re.search(r"^run_pytest( --durations=\d+)?$", ci, re.M)
    assert ".venv/bin/python -m pytest\n" in readme
    assert len(readme.splitlines()) <= 250
    for doc in ("README.md", "docs/performance.md"):
        text = (report.REPO / doc).read_text()
        assert text.count(report.START) == 1 and text.count(report.END) == 1, doc


def test_readme_block_is_a_subset_of_the_performance_page():
    headline, full = report.render_readme(), report.render()
    assert len(headline) < len(full)
    assert "Leave-one-out" not in headline and "Leave-one-out" in full


def test_configuration_page_lists_every_setting():
    from dataclasses import fields

    from streams.configdoc import render
    from streams.settings import Settings

    page = render()
    missing = [f.name for f in fields(Settings) if f.name != "extra"
               and f"`ATTNFLOW_{f.name.upper()}`" not in page]
    assert missing == []


def test_serve_goal_line_says_whether_the_goal_was_met_and_how_busy_the_machine_was():
    data = {"goal": {"p99_ms_at_rate": 31.94, "rate": 1000.0, "target_ms": 10.0, "met": False},
            "load_average_at_end": [3.21, 4.0, 2.5]}
    assert report.serve_goal(data) == (
        "Request path goal p99 <= 10 ms at 1,000 requests/s (batched, open loop): "
        "31.9 ms, **not met**; load average 3.2, 4.0, 2.5 (1/5/15 min) at the end.")
    assert report.serve_goal({"goal": {"met": True}}).endswith("– ms, met.")
