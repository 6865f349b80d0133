"""Open-loop HTTP load at a fixed rate, for ``bench_serve`` (run in its own process).

    python -m tests.benchmarks.open_loop OPTIONS.json   # {"url", "paths", "rate", "duration"} -> JSON line

Request ``i`` is due at ``start + i / rate`` whatever happened to the earlier ones (open loop: a slow
answer does not hold back the next request, as with real users), each on a connection of its own
when the pool has none free. Latency is measured from the request's *due* time, not from when it was
sent, so a client or server that falls behind shows in the percentiles (no coordinated omission);
times come from ``time.perf_counter`` (uvloop's own clock counts whole milliseconds).
``behind_ms`` says how late the client itself sent requests. Bounded: ``rate * duration`` requests.
"""
from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
import orjson


async def run(url: str, paths: list[str], rate: float, duration: float) -> dict:
    import aiohttp

    n = int(rate * duration)
    latency = np.full(n, np.nan)
    behind = np.zeros(n)
    status: dict[int, int] = {}
    errors = 0
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one(i: int, due: float) -> None:
            nonlocal errors
            behind[i] = time.perf_counter() - due
            try:
                async with session.get(url + paths[i % len(paths)]) as reply:
                    await reply.read()
                    status[reply.status] = status.get(reply.status, 0) + 1
            except Exception:  # noqa: BLE001 -- counted; the load goes on
                errors += 1
                return
            latency[i] = time.perf_counter() - due

        # a few connections opened before the clock starts
        await asyncio.gather(*(one(i, time.perf_counter()) for i in range(min(8, n))))
        latency[:] = np.nan
        status.clear()
        tasks = []
        start = time.perf_counter() + 0.05
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    done = latency[~np.isnan(latency)] * 1e3
    p = np.percentile(done, [50, 90, 99, 99.9]) if len(done) else [None] * 4
    return {"requests": n, "answered": int(len(done)), "errors": errors,
            "status": {str(k): v for k, v in status.items()},
            "rate_target": rate, "rate_achieved": round(len(done) / elapsed, 1),
            "latency_ms": {"p50": _ms(p[0]), "p90": _ms(p[1]), "p99": _ms(p[2]), "p99_9": _ms(p[3]),
                           "mean": _ms(done.mean()) if len(done) else None,
                           "max": float(done.max()) if len(done) else None},
            "behind_ms": {"p99": float(np.percentile(behind, 99) * 1e3), "max": float(behind.max() * 1e3)}}


def _ms(value) -> float | None:
    return None if value is None else round(float(value), 3)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    options = orjson.loads(open(argv[0], "rb").read())
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    started = time.time()
    result = asyncio.run(run(options["url"], options["paths"], options["rate"], options["duration"]))
    result["wall_s"] = round(time.time() - started, 2)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


if __name__ == "__main__":
    main()
