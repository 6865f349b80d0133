"""streams/faustapp.py: the worker and the benchmark's baseline apps get their
Faust options from one place."""
import pytest
from faust.sensors.monitor import Monitor

from streams import faustapp
from streams.sensors import LeanMonitor
from streams.settings import Settings


@pytest.fixture
def app_for(monkeypatch, tmp_path):
    """``make_faust_app`` without its process-wide installs (event loop policy, Faust patches)."""
    monkeypatch.setenv("ATTNFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(faustapp, "use_event_loop", lambda settings: None)
    monkeypatch.setattr(faustapp.eager, "install", lambda enabled: None)
    monkeypatch.setattr(faustapp.fetch, "install", lambda min_bytes, max_wait_ms: None)
    return lambda **overrides: faustapp.make_faust_app(Settings(**overrides))


def test_the_faust_options_follow_the_settings(app_for):
    worker = app_for()
    assert worker.conf.Monitor is LeanMonitor and worker.conf.cython_optimizations
    stock = app_for(faust_message_stats=True, faust_cython_optimizations=False)
    assert stock.conf.Monitor is Monitor and not stock.conf.cython_optimizations
    assert worker.conf.producer_max_batch_size == stock.conf.producer_max_batch_size == 256 * 1024


def test_the_stock_baselines_run_faust_as_released():
    """The do-nothing agent's stock rows turn off every Faust option the worker turns on; the other one
    runs the worker's own."""
    from tests.benchmarks.bench_pipeline import STOCK_FAUST, WORKER_VARIANTS

    defaults = Settings()
    assert {name: getattr(defaults, name) for name in STOCK_FAUST} == {
        "eager_delivery": True, "faust_message_stats": False, "faust_cython_optimizations": True}
    assert WORKER_VARIANTS["noop_faust"] == ("noop", STOCK_FAUST)
    assert WORKER_VARIANTS["noop_faust_eager"] == ("noop", {})
