"""The web side of request-time ranking: ``GET /recommendations`` on every rank worker and on
``attnflow serve``.

``ServingService`` parses a query, queues the request, and answers it from ``models.requests.RequestRanker``.
Concurrent requests are coalesced (``RequestBatcher``): while one kernel call runs, the requests that
arrive queue up, and the next call ranks all of them together (up to ``ATTNFLOW_SERVE_BATCH_SIZE``),
so a busy server makes fewer, fuller calls instead of a queue of single ones. ``make_app`` is the
stateless serve process: an aiohttp app that needs only Redis.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import orjson

from models.requests import Answer, Request, RequestError, RequestLimits, RequestRanker, parse_request
from models.store import FATAL_STORE_ERRORS, TRANSIENT_ERRORS
from streams.quantiles import Quantiles
from streams.threadnames import set_native_name

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """More requests are queued than the server should keep waiting: refuse (503) rather than answer late."""


class RequestBatcher:
    """Coalesces concurrent ``submit`` calls into ``answer(list_of_requests)`` calls on one executor thread.

    A call takes everything queued when the previous one finished, up to ``max_batch`` (``max_batch=1``:
    one request per call, the unbatched path). ``window_s`` > 0 first waits that long for more, but only
    while requests keep arriving during calls (the previous call ended with some queued): a lone client
    is answered at once, a busy server makes fewer, fuller calls (each costs ~1 ms of kernel CPU whatever
    its size up to the smallest bucket, so fuller calls leave the cores to the HTTP side).

    >>> async def demo():
    ...     batcher = RequestBatcher(lambda requests: [r * 10 for r in requests], max_batch=8)
    ...     batcher.start()
    ...     answers = await asyncio.gather(*(batcher.submit(n) for n in range(3)))
    ...     await batcher.stop()
    ...     return answers, batcher.calls
    >>> asyncio.run(demo())
    ([0, 10, 20], 1)
    """

    def __init__(self, answer, max_batch: int, window_s: float = 0.0, max_queue: int = 1024,
                 executor: ThreadPoolExecutor | None = None, on_batch=None):
        self.answer, self.max_batch, self.window_s, self.max_queue = answer, max_batch, window_s, max_queue
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnflow-serve",
                                                       initializer=set_native_name, initargs=("af-serve",))
        self.on_batch = on_batch  # called with (requests in the call, seconds it took)
        self.calls = 0
        self.waits = 0  # calls that first waited window_s for more requests
        self._queue: deque = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for _, future in self._queue:
            if not future.done():
                future.cancel()
        self._queue.clear()

    async def submit(self, request):
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"{len(self._queue)} requests queued")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        busy = False  # requests arrived while the previous call ran: more are likely to follow
        while True:
            if not self._queue:
                busy = False
                self._wake.clear()
                await self._wake.wait()
            if busy and self.window_s > 0 and len(self._queue) < self.max_batch:
                self.waits += 1
                await asyncio.sleep(self.window_s)  # the configured wait for more requests to join
            taken = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            taken = [(request, future) for request, future in taken if not future.done()]  # clients gone
            if not taken:
                continue
            started = time.perf_counter()
            try:
                answers = await loop.run_in_executor(self.executor, self.answer, [r for r, _ in taken])
            except Exception as exc:  # noqa: BLE001 -- each waiting request gets the error
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self.calls += 1
                busy = bool(self._queue)
                if self.on_batch is not None:
                    self.on_batch(len(taken), time.perf_counter() - started)
            for (_, future), answer in zip(taken, answers):
                if not future.done():
                    future.set_result(answer)


class ServingMetrics:
    """Counters of the request path: answers by HTTP status, cold starts, batch sizes, latency."""

    def __init__(self):
        self.responses: Counter = Counter()
        self.cold_starts = 0
        self.retries = 0
        self.batches = 0
        self.batch_sizes = Quantiles(size=2048)
        self.batch_seconds = Quantiles(size=2048)
        self.latency_seconds = Quantiles(size=8192)  # request parsed -> answer ready

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.batch_sizes.add(size)
        self.batch_seconds.add(seconds)

    def snapshot(self) -> dict:
        return {"responses": {str(k): v for k, v in sorted(self.responses.items())},
                "cold_starts": self.cold_starts, "store_retries": self.retries, "batches": self.batches,
                "batch_size": self.batch_sizes.summary(), "batch_seconds": self.batch_seconds.summary(),
                "latency_seconds": self.latency_seconds.summary()}

    def prometheus(self) -> str:
        lines = ["# HELP attnflow_serve_responses_total /recommendations answers by HTTP status",
                 "# TYPE attnflow_serve_responses_total counter"]
        lines += [f'attnflow_serve_responses_total{{status="{k}"}} {v}'
                  for k, v in sorted(self.responses.items())]
        for name, value, help_ in (("cold_starts_total", self.cold_starts,
                                    "answers for users without a state"),
                                   ("batches_total", self.batches, "kernel calls of the request path")):
            lines += [f"# HELP attnflow_serve_{name} {help_}", f"# TYPE attnflow_serve_{name} counter",
                      f"attnflow_serve_{name} {value}"]
        for name, quantiles in (("latency_seconds", self.latency_seconds), ("batch_size", self.batch_sizes)):
            summary = quantiles.summary()
            lines += [f"# TYPE attnflow_serve_{name} summary"]
            lines += [f'attnflow_serve_{name}{{quantile="{q}"}} {summary[p]}'
                      for q, p in (("0.5", "p50"), ("0.99", "p99")) if summary[p] is not None]
        return "\n".join(lines) + "\n"


class ServingService:
    """``/recommendations`` for one process: a :class:`RequestRanker` behind a :class:`RequestBatcher`.

    ``shared_params``: see ``RequestRanker`` (a rank worker passes its engine's). Answers 503 until
    :meth:`start` has warmed the kernels up.
    """

    def __init__(self, settings, store=None, shared_params=None):
        self.settings = settings
        self.cfg = settings.engine_config()
        self.limits = RequestLimits(max_k=settings.serve_max_k, max_exclude=settings.serve_max_exclude,
                                    max_batch=settings.serve_batch_size)
        self.store, self.shared_params = store, shared_params
        self.metrics = ServingMetrics()
        self.ranker: RequestRanker | None = None
        self.batcher: RequestBatcher | None = None
        self.ready = False

    async def start(self) -> None:
        """Connect, load the catalogue and snapshot, compile every batch bucket;
        retries while the store is down."""
        self.store = self.store or self.settings.store()
        self.ranker = RequestRanker(self.cfg, self.store, self.limits, shared_params=self.shared_params,
                                    popularity_refresh_s=self.settings.popularity_refresh_s)
        max_batch = self.limits.max_batch if self.settings.serve_batching else 1
        self.batcher = RequestBatcher(self.ranker.answer, max_batch, self.settings.serve_batch_window_s,
                                      max_queue=max(1024, 32 * max_batch),
                                      on_batch=self.metrics.observe_batch)
        loop, delay = asyncio.get_running_loop(), 0.1
        while True:
            try:
                seconds = await loop.run_in_executor(self.batcher.executor, self.ranker.warmup)
                break
            except TRANSIENT_ERRORS as exc:
                self.metrics.retries += 1
                log.warning("store unavailable (%s); the request path retries in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)
        # What start-up made (JAX, the compiled kernels, aiohttp) lives as long as the process: out of the
        # collector's full scans, which took 100 ms and more each (see streams.agents.freeze_heap)
        gc.collect()
        gc.freeze()
        self.batcher.start()
        self.ready = True
        log.info("serving /recommendations: kernels compiled for batches of %s in %.1fs (batching %s, model "
                 "version %d, %d items)", ",".join(map(str, self.ranker.buckets)), seconds,
                 "on" if self.settings.serve_batching else "off", self.ranker.model_version,
                 len(self.ranker.ids))

    async def stop(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.stop()
            self.batcher.executor.shutdown(wait=False)

    async def respond(self, query) -> tuple[int, dict]:
        """HTTP status and JSON body for a ``/recommendations`` query."""
        status, body = await self._respond(query)
        self.metrics.responses[status] += 1
        return status, body

    async def _respond(self, query) -> tuple[int, dict]:
        if not self.ready:
            return 503, {"error": "not_ready", "message": "the server is still loading the model"}
        started = time.perf_counter()
        try:
            request = parse_request(query, self.cfg.scenes, self.cfg.k, self.limits)
        except RequestError as exc:
            return exc.status, exc.body()
        try:
            answer: Answer = await self.batcher.submit(request)
        except Overloaded as exc:
            return 503, {"error": "overloaded", "message": str(exc)}
        except TRANSIENT_ERRORS as exc:
            self.metrics.retries += 1
            return 503, {"error": "store_unavailable", "message": f"{type(exc).__name__}: {exc}"}
        except FATAL_STORE_ERRORS as exc:
            log.error("the store refuses the request path: %s", exc)
            return 503, {"error": "store_refused", "message": type(exc).__name__}
        except Exception:  # noqa: BLE001 -- one bad batch must not take the server down
            log.exception("answering %r failed", request)
            return 500, {"error": "internal", "message": "the request could not be answered"}
        self.metrics.latency_seconds.add(time.perf_counter() - started)
        self.metrics.cold_starts += answer.cold_start
        return 200, answer.as_json()

    def stats(self) -> dict:
        ranker = self.ranker
        return {"ready": self.ready, "model_version": ranker.model_version if ranker else None,
                "catalogue_version": ranker.catalogue.version if ranker else None,
                "n_items": len(ranker.ids) if ranker else None, **self.metrics.snapshot()}


def make_app(settings, store=None):
    """The ``attnflow serve`` web app: ``/recommendations``, ``/ready``, ``/stats``, ``/metrics``. The model
    loads in the background after the server starts listening, so ``/ready`` says 503 until then."""
    from aiohttp import web

    service = ServingService(settings, store=store)

    def as_json(body, status=200):
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    async def recommendations(request):
        status, body = await service.respond(request.query)
        return as_json(body, status)

    async def ready(request):
        return as_json({"ready": service.ready}, 200 if service.ready else 503)

    async def stats(request):
        return as_json(service.stats())

    async def metrics(request):
        return web.Response(text=service.metrics.prometheus(), content_type="text/plain")

    async def started(app):
        app["warmup"] = asyncio.get_running_loop().create_task(service.start())

    async def stopping(app):
        app["warmup"].cancel()
        await asyncio.gather(app["warmup"], return_exceptions=True)
        await service.stop()

    app = web.Application()
    app.router.add_get("/recommendations", recommendations)
    app.router.add_get("/ready", ready)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.on_startup.append(started)
    app.on_cleanup.append(stopping)
    app["service"] = service
    return app


def serve(settings, port: int | None = None) -> None:
    """Run the serve process until SIGINT/SIGTERM on ``settings.web_host`` :
    ``port`` (default ``serve_port``)."""
    from aiohttp import web

    from models.kernels import enable_compile_cache
    from streams.settings import use_event_loop

    use_event_loop(settings)
    enable_compile_cache(settings.compile_cache_dir)
    port = port or settings.serve_port
    log.info("attnflow serve on http://%s:%d (Redis prefix %r)", settings.web_host, port,
             settings.redis_prefix)
    web.run_app(make_app(settings), host=settings.web_host, port=port, access_log=None, print=None)
