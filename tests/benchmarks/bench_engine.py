"""Engine benchmark: one micro-batch through ``Engine.process`` and ``Engine.commit`` on the real Redis,
without Kafka or Faust, at several batch sizes; CPU and wall time per batch.

    python -m tests.benchmarks.bench_engine        # 10k items; writes docs/results/engine_bench.json
    python -m tests.benchmarks.bench_engine --items 1000 --batches 8 32 --reps 2 --out /tmp/e.json  # smoke

Needs Redis (``ATTNFLOW_REDIS_URL``; ``deploy/redis.sh start``). CPU is this process's
(``time.process_time``: all threads, XLA's included). Set beside the pipeline benchmark's CPU per event
(``bench.json``), it says how much of a worker's CPU the engine takes (state read, kernels, feedback, state
write) and how much goes to everything around it (Faust, the Kafka clients, the agent). The least-squares line
``CPU per batch = fixed + per_event * events`` says what batch size does to the cost of an event:
every batch pays the fixed part, however few events it holds. Never fails on a timing.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson

from models.engine import Engine, SourcedEvent
from streams.codec import decode_event
from streams.settings import Settings
from tests.benchmarks.bench_pipeline import Dataset, clear_namespace, register_catalogue
from tests.benchmarks.common import RESULTS, header, median


def fit_line(sizes: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares ``value = fixed + per_event * size``; returns ``(fixed, per_event)``.

    >>> fit_line([10, 20, 40], [3.0, 4.0, 6.0])
    (2.0, 0.1)
    """
    per_event, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    return round(float(fixed), 9), round(float(per_event), 9)


def bench_batches(engine: Engine, events: list, sizes: list[int], reps: int, log) -> list[dict]:
    """Time ``process`` + ``commit`` of consecutive slices of ``events``; rounds interleave the sizes."""
    cursor = 0
    runs: dict[int, list[tuple[float, float]]] = {n: [] for n in sizes}
    for rep in range(reps):
        for n in sizes:
            batch, cursor = events[cursor:cursor + n], cursor + n
            cpu0, wall0 = time.process_time(), time.perf_counter()
            engine.commit(engine.process(batch))
            runs[n].append((time.perf_counter() - wall0, time.process_time() - cpu0))
        log(f"  round {rep + 1}/{reps}")
    out = []
    for n in sizes:
        wall, cpu = ([run[i] for run in runs[n]] for i in (0, 1))
        out.append({"events": n, "wall_ms_median": 1e3 * median(wall), "cpu_ms_median": 1e3 * median(cpu),
                    "cpu_us_per_event": 1e6 * median(cpu) / n, "reps": len(runs[n])})
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512],
                        help="events per batch (the worker's batches are smaller the lower the rate)")
    parser.add_argument("--reps", type=int, default=30, help="timed batches per size")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine_bench.json")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    sizes = sorted(set(args.batches))
    settings = replace(Settings.from_env(), redis_prefix=f"bench-engine-{uuid.uuid4().hex[:6]}",
                       batch_size=max(sizes), initial_capacity=max(16384, 1 << (args.items - 1).bit_length()))
    import redis

    from models.store import connect, redacted

    try:
        connect(settings.redis_url, socket_connect_timeout=3).ping()
    except redis.exceptions.ConnectionError as exc:
        raise SystemExit(f"Redis is not reachable at {redacted(settings.redis_url)} ({exc}); start it with "
                         "`bash deploy/redis.sh start` or set ATTNFLOW_REDIS_URL") from None
    dataset = Dataset(n_items=args.items, n_users=8000, seed=0)
    warm = 20
    total = warm * max(sizes) + args.reps * sum(sizes)
    events = [SourcedEvent(decode_event(value, settings.scenes), 0, offset)
              for offset, (_, value) in enumerate(dataset.events(total, ts0=time.time() - 3600))]
    register_catalogue(settings, dataset)
    from models.store import RedisStore

    store = RedisStore(settings.redis_url, settings.redis_prefix)
    try:
        engine = Engine(settings.engine_config(), store, emit_examples=settings.train_enabled)
        log(f"engine: kernels compiled in {engine.warmup():.1f}s; {warm} warm-up batches")
        for start in range(0, warm * max(sizes), max(sizes)):  # users get histories, Redis and caches warm up
            engine.commit(engine.process(events[start:start + max(sizes)]))
        results = bench_batches(engine, events[warm * max(sizes):], sizes, args.reps, log)
    finally:
        store.close()
        clear_namespace(settings)
    fixed, per_event = fit_line([r["events"] for r in results], [r["cpu_ms_median"] for r in results])
    report = header()
    report["parameters"] = {"items": args.items, "users": dataset.n_users, "batches": sizes,
                            "reps": args.reps, "warmup_batches": warm, "k": settings.k,
                            "history": settings.history, "dim": settings.dim,
                            "training_examples": settings.train_enabled, "redis": settings.redis_url,
                            "redis_prefix": settings.redis_prefix}
    report["results"] = results
    report["fit"] = {"cpu_ms_fixed_per_batch": fixed, "cpu_us_per_event": 1e3 * per_event,
                     "model": "CPU ms per batch = fixed + per_event * events (least squares over "
                              "the batch sizes)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    if not args.quiet:
        print(f"{'events':>7} {'wall ms':>8} {'CPU ms':>8} {'CPU us/event':>12}")
        for r in results:
            print(f"{r['events']:>7} {r['wall_ms_median']:>8.2f} {r['cpu_ms_median']:>8.2f} "
                  f"{r['cpu_us_per_event']:>12.0f}")
        print(f"fit: {fixed:.2f} ms per batch + {1e3 * per_event:.0f} us per event; wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
