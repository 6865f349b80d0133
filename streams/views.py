"""Web views of a rank worker: ``/metrics`` (Prometheus), ``/stats`` (JSON), ``/ready`` (probe)."""
from __future__ import annotations


def register(app, worker, trainer) -> None:
    @app.page("/metrics")
    async def metrics(web, request):
        return web.text(worker.metrics.prometheus() + trainer.metrics.prometheus(),
                        content_type="text/plain; version=0.0.4")

    @app.page("/stats")
    async def stats(web, request):
        return web.json({**worker.metrics.snapshot(), "trainer": trainer.metrics.snapshot()})

    @app.page("/ready")
    async def ready(web, request):
        ok = worker.metrics.ready
        return web.json({"ready": ok}, status=200 if ok else 503)
