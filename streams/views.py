"""Web views of a rank worker: ``/metrics`` (Prometheus), ``/stats`` (JSON; ``/stats?brief=1``: counters
only, no quantiles), ``/ready`` (probe), ``/recommendations`` (request-time lists, ``streams.serving``)."""

from __future__ import annotations

from streams.market_metrics import market_lines
from streams.metrics import lag_lines
from streams.serving import ServingService


def register(app, worker, trainer) -> None:
    settings = worker.settings
    serving = None
    if settings.serve_in_worker and settings.role != "train":
        serving = ServingService(settings, shared_params=lambda: _engine_params(worker))

        @app.task
        async def start_serving():
            """Warm the request path up beside the rank agent (its own kernels, its own thread)."""
            await serving.start()

        @app.page("/recommendations")
        async def recommendations(web, request):
            status, body = await serving.respond(request.query)
            return web.json(body, status=status)

    def serving_text() -> str:
        return serving.metrics.prometheus() if serving is not None else ""

    def market_text() -> str:
        market = getattr(worker.engine, "market", None)
        return "\n".join(market_lines(market.report())) + "\n" if market is not None else ""

    @app.page("/metrics")
    async def metrics(web, request):
        lag = "\n".join(lag_lines(consumer_lags(app))) + "\n"
        return web.text(
            worker.metrics.prometheus() + trainer.metrics.prometheus() + serving_text() + market_text() + lag,
            content_type="text/plain; version=0.0.4",
        )

    @app.page("/stats")
    async def stats(web, request):
        if request.query.get("brief"):  # counters only: for pollers that ask many times a second
            return web.json(worker.metrics.progress())
        return web.json(
            {
                **worker.metrics.snapshot(),
                "trainer": trainer.metrics.snapshot(),
                **({"serving": serving.stats()} if serving is not None else {}),
                **({"market": market.report()} if (market := getattr(worker.engine, "market", None)) else {}),
            }
        )

    @app.page("/ready")
    async def ready(web, request):
        ok = worker.metrics.ready
        body = {"ready": ok}
        if serving is not None:
            body["serving"] = serving.ready  # /recommendations answers 503 until it is
        return web.json(body, status=200 if ok else 503)


def _engine_params(worker):
    """``(model_version, params)`` of the worker's engine (None before it starts). The engine thread
    swaps the two one after the other, so a batch in between may carry the previous version's label."""
    engine = worker.engine
    return None if engine is None else (engine.model_version, engine.params)


def consumer_lags(app) -> dict:
    """``{(topic, partition): lag}`` for this worker's assigned partitions: the broker's end offset (as of the
    last fetch) minus the offset Faust last committed. A partition with no commit since it was assigned
    yet, or no fetch, is left out; the group's whole lag is what KEDA and the broker report."""
    try:
        assignment = app.consumer.assignment()
    except Exception:  # noqa: BLE001 -- not started, or between rebalances: nothing to report
        return {}
    committed = app.monitor.tp_committed_offsets or {}
    lags = {}
    for tp in assignment:
        end, done = app.consumer.highwater(tp), committed.get(tp)
        if end is not None and done is not None:
            lags[(tp.topic, tp.partition)] = max(end - done, 0)
    return lags
