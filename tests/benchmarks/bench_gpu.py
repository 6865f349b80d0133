"""The accelerator path: the kernel and the engine at 100k and 1M items on whatever ``jax.devices()`` gives.

    python -m tests.benchmarks.bench_gpu      # on a GPU machine: docs/results/{kernel,engine}_gpu.json
    python -m tests.benchmarks.bench_gpu --items 2000 --reps 1 --batches 8 --out-dir /tmp  # smoke, anywhere

No code changes for the GPU: the kernels are the ones the worker runs (``models.kernels.step`` at the
engine's bucket sizes) and the engine is ``models.engine.Engine`` (on a ``MemoryStore``, so that the
script needs no Redis on a lent machine; ``--redis`` uses ``ATTNFLOW_REDIS_URL`` instead). Per size:
the kernel's time per call with inputs from the host (as the engine calls it) and with inputs already on
the device, at each ``--batches`` user count; the engine's events per second over ``--engine-batches``
batches of ``--engine-events`` events (state read, fold, rank, feedback, fenced write), the exact scan and,
unless ``--no-candidates``, the candidate stage (``models.candidates``: its index searches on the host).
Medians of ``--reps``. Never fails on a timing; the device is in the report's ``machine.jax_devices``.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import orjson

from models.config import EngineConfig
from models.params import capacity_for
from tests.benchmarks.common import RESULTS, header, median, timed


def kernel_rows(n_items: int, args, log) -> list[dict]:
    from tests.benchmarks.bench_kernel import bench_params, jit_step, make_inputs, resident_step

    cfg = EngineConfig(k=args.k)
    params = bench_params(cfg, capacity_for(n_items, cfg.initial_capacity))
    rows = []
    for B in args.batches:
        inputs = make_inputs(cfg, B, n_items)
        host = timed(lambda: jit_step(params, inputs, cfg, 0), args.reps, warmup=2)
        device = timed(resident_step(params, inputs, cfg, 0), args.reps, warmup=2)
        rows.append({"items": n_items, "users": B, "host_ms": 1e3 * median(host),
                     "device_ms": 1e3 * median(device),
                     "host_us_per_user": 1e6 * median(host) / B, "host_s": host, "device_s": device})
        log(f"kernel {n_items:>9,} items, {B:>4} users: {rows[-1]['host_ms']:.2f} ms from the host, "
            f"{rows[-1]['device_ms']:.2f} ms on the device")
    return rows


def engine_rows(n_items: int, args, log) -> list[dict]:
    from models.engine import Engine, SourcedEvent
    from models.store import MemoryStore, RedisStore
    from streams.codec import decode_event
    from streams.settings import Settings
    from tests.benchmarks.bench_pipeline import Dataset

    settings = replace(Settings.from_env(), batch_size=args.engine_events, k=args.k,
                       initial_capacity=max(16384, 1 << (n_items - 1).bit_length()))
    dataset = Dataset(n_items=n_items, n_users=8000, seed=0)
    total = (args.engine_batches + 3) * args.engine_events
    events = [SourcedEvent(decode_event(value, settings.scenes), 0, offset)
              for offset, (_, value) in enumerate(dataset.events(total, ts0=time.time() - 3600))]
    modes = [("exact", 0)] + ([] if args.no_candidates else [("candidates", max(1, n_items - 1))])
    rows = []
    for mode, above in modes:
        if args.redis:
            store = RedisStore(settings.redis_url, f"bench-gpu-{mode}-{n_items}")
        else:
            store = MemoryStore()
        store.item_index(dataset.item_ids)  # the whole catalogue is known, as on a live system
        cfg = replace(settings.engine_config(), candidates_above=above)
        engine = Engine(cfg, store)
        warm_s = engine.warmup()
        batches = [events[i:i + args.engine_events] for i in range(0, total, args.engine_events)]
        for batch in batches[:3]:
            engine.commit(engine.process(batch))
        seconds = []
        for batch in batches[3:]:
            started = time.perf_counter()
            engine.commit(engine.process(batch))
            seconds.append(time.perf_counter() - started)
        if args.redis:
            store.clear()
            store.close()
        rows.append({"items": n_items, "mode": mode, "events_per_batch": args.engine_events,
                     "batch_ms": 1e3 * median(seconds), "events_per_s": args.engine_events / median(seconds),
                     "warmup_s": warm_s, "batch_s": seconds,
                     "index_builds": engine.candidates.builds if engine.candidates else None})
        log(f"engine {n_items:>9,} items, {mode}: {rows[-1]['events_per_s']:.0f} events/s "
            f"({rows[-1]['batch_ms']:.1f} ms per {args.engine_events}-event batch)")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 512], help="users per kernel call")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--engine-events", type=int, default=512, help="events per engine batch")
    parser.add_argument("--engine-batches", type=int, default=None,
                        help="timed engine batches (default --reps * 3)")
    parser.add_argument("--no-candidates", action="store_true", help="engine: the exact scan only")
    parser.add_argument("--redis", action="store_true",
                        help="engine on ATTNFLOW_REDIS_URL instead of in memory")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--suffix", default="_gpu",
                        help="files are kernel<suffix>.json and engine<suffix>.json")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    args.engine_batches = args.engine_batches or 3 * args.reps
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    log(f"devices: {jax.devices()}")
    out = {}
    for name, rows_of in (("kernel", kernel_rows), ("engine", engine_rows)):
        report = {**header(), "backend": jax.default_backend(),
                  "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "results": [row for n in args.items for row in rows_of(n, args, log)]}
        path = args.out_dir / f"{name}{args.suffix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        log(f"wrote {path}")
        out[name] = report
    return out


if __name__ == "__main__":
    main()
