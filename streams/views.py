"""Web views of a rank worker: ``/metrics`` (Prometheus), ``/stats`` (JSON; ``/stats?brief=1``: counters
only, no quantiles), ``/ready`` (probe)."""
from __future__ import annotations


def register(app, worker, trainer) -> None:
    @app.page("/metrics")
    async def metrics(web, request):
        return web.text(worker.metrics.prometheus() + trainer.metrics.prometheus(),
                        content_type="text/plain; version=0.0.4")

    @app.page("/stats")
    async def stats(web, request):
        if request.query.get("brief"):  # counters only: for pollers that ask many times a second
            return web.json(worker.metrics.progress())
        return web.json({**worker.metrics.snapshot(), "trainer": trainer.metrics.snapshot()})

    @app.page("/ready")
    async def ready(web, request):
        ok = worker.metrics.ready
        return web.json({"ready": ok}, status=200 if ok else 503)
