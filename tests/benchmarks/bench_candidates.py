"""Candidate stage benchmark: recall@K and ranking throughput of ``models.candidates`` against the exact scan.

    python -m tests.benchmarks.bench_candidates       # 100k and 1M items, writes docs/results/candidates.json
    python -m tests.benchmarks.bench_candidates --items 5000 --users 32 --reps 1 --out /tmp/c.json  # smoke

Item vectors are random but shaped like learned ones: a mixture of clusters of Zipf-distributed
sizes with per-item norms, Zipf popularity in the counted prior, random biases. Users are the model's
attention (``kernels.user_vectors``) over random histories (``bench_kernel.make_inputs``), so the
repeat and neighbour terms and the scene masks (2% of items hidden, the rest in one or several of the
scenes) are all in play. Per size: recall@K of the candidate lists against ``kernels.rank`` (the exact
scan the engine runs below the threshold) and the time per user of each (medians of ``--reps`` calls of
``--users`` users, interleaved, ratios within this process) for each ``--nprobe``; the index build time
and its bytes per item.
Never fails on a timing.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orjson

from models import kernels
from models.candidates import CandidateConfig, CandidateRanker, _user_vectors
from models.config import EngineConfig
from models.params import capacity_for
from tests.benchmarks.bench_kernel import bench_params, make_inputs
from tests.benchmarks.common import RESULTS, header, median, ratio, timed


def realistic_params(cfg: EngineConfig, n_items: int, seed: int = 0):
    """``bench_params`` with clustered item vectors and a Zipf popularity prior over ``n_items`` items."""
    capacity = capacity_for(n_items, cfg.initial_capacity)
    params = bench_params(cfg, capacity, seed)
    rng = np.random.default_rng(seed)
    clusters = max(16, int(np.sqrt(n_items)))
    sizes = 1.0 / np.arange(1, clusters + 1) ** 0.8
    centre_of = rng.choice(clusters, size=capacity, p=sizes / sizes.sum())
    centres = rng.normal(size=(clusters, cfg.dim)).astype(np.float32)
    emb = centres[centre_of] + 0.7 * rng.normal(size=(capacity, cfg.dim)).astype(np.float32)
    emb *= rng.lognormal(0.0, 0.25, size=(capacity, 1)).astype(np.float32) * (0.4 / np.sqrt(cfg.dim))
    pop = np.zeros(params.pop.shape, np.float32)
    pop[:, 0] = 1000.0 / rng.permutation(np.arange(1, capacity + 1)) ** 1.1
    return params._replace(item_emb=jnp.asarray(emb), pop=jnp.asarray(pop),
                           item_bias=jnp.asarray(0.1 * rng.normal(size=capacity), jnp.float32))


def scene_masks(capacity: int, n_scenes: int, seed: int = 0) -> np.ndarray:
    """2% hidden, the rest in one random scene (60%) or every scene (38%)."""
    rng = np.random.default_rng(seed)
    one = (1 << rng.integers(0, n_scenes, capacity)).astype(np.uint32)
    draw = rng.random(capacity)
    return np.where(draw < 0.02, 0, np.where(draw < 0.62, one, (1 << n_scenes) - 1)).astype(np.uint32)


def index_bytes(ranker: CandidateRanker) -> int:
    import faiss

    return int(faiss.serialize_index(ranker.index.index).size)


def bench_size(n_items: int, args, cfg: EngineConfig) -> list[dict]:
    params = realistic_params(cfg, n_items, args.seed)
    masks = scene_masks(params.item_emb.shape[0], cfg.n_scenes, args.seed)
    inputs = make_inputs(cfg, args.users, n_items, args.seed)
    interest, weight, ranks = inputs["interest"], inputs["weight"], inputs["ranks"]
    candidate_cfg = CandidateConfig(candidates=args.candidates, nprobe=args.nprobe[0], lists=args.lists,
                                    threads=args.threads, seed=args.seed)
    ranker = CandidateRanker(candidate_cfg)

    builds = []
    for _ in range(args.builds):
        started = time.perf_counter()
        ranker.index.build(params, n_items)
        builds.append(time.perf_counter() - started)
    ranker.refresh(params, n_items)  # the ranker now owns the last build

    def exact():
        return jax.block_until_ready(kernels.rank(params, interest, weight, ranks, jnp.int32(n_items), masks,
                                                  k=cfg.k, chunk=0))

    def staged():
        user, _ = _user_vectors(params, interest, weight, ranks)
        return jax.block_until_ready(ranker.rank_users(params, user, ranks, n_items, masks, k=cfg.k))

    want = np.asarray(exact()[0])
    size = index_bytes(ranker)
    common = {"items": n_items, "users_per_call": args.users, "k": cfg.k, "dim": cfg.dim,
              "candidates": args.candidates, "lists": ranker.index.index.nlist, "faiss_threads": args.threads,
              "build_s": median(builds), "builds": builds, "index_bytes_per_item": size / n_items,
              "params_bytes_per_item": int(sum(np.asarray(v).nbytes for v in params)
                                           / params.item_emb.shape[0])}
    rows = []
    for nprobe in args.nprobe:
        ranker.index.set_nprobe(nprobe)
        got = np.asarray(staged()[0])  # also the warm-up of this setting
        recalls = [len(set(g[g >= 0]) & set(w[w >= 0])) / max(1, (w >= 0).sum()) for g, w in zip(got, want)]
        exact_s, staged_s, search_s = [], [], []
        for _ in range(args.reps):  # interleaved, so that a load spike on the shared machine hits both
            exact_s += timed(exact, 1, warmup=0)
            before = ranker.search_s
            staged_s += timed(staged, 1, warmup=0)
            search_s.append(ranker.search_s - before)
        row = {**common, "nprobe": nprobe, "default": nprobe == settings_default("candidates_nprobe"),
               f"recall_at_{cfg.k}": float(np.mean(recalls)), "recall_min_user": float(np.min(recalls)),
               "exact_ms_per_user": 1e3 * median(exact_s) / args.users,
               "candidates_ms_per_user": 1e3 * median(staged_s) / args.users,
               "speedup": ratio(median(exact_s), median(staged_s)),
               "index_search_share": ratio(median(search_s), median(staged_s)),
               "exact_s": exact_s, "candidates_s": staged_s, "load_average_after": os.getloadavg()}
        rows.append(row)
        if not args.quiet:
            print(f"{n_items:>9,} items, nprobe {nprobe:>3}: recall@{cfg.k} "
                  f"{row[f'recall_at_{cfg.k}']:.3f}  exact {row['exact_ms_per_user']:.2f} ms/user  "
                  f"candidates {row['candidates_ms_per_user']:.3f} ms/user ({row['speedup']:.1f}x; index "
                  f"{row['index_search_share']:.0%})  build {row['build_s']:.1f}s  index "
                  f"{row['index_bytes_per_item']:.0f} B/item", flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=256, help="users per ranking call")
    parser.add_argument("--candidates", type=int, default=settings_default("candidates"))
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128],
                        help="cells searched per user, each measured (the deployed default is marked)")
    parser.add_argument("--lists", type=int, default=settings_default("candidates_lists"))
    parser.add_argument("--threads", type=int, default=settings_default("candidates_threads"))
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5, help="timed calls of each, interleaved")
    parser.add_argument("--builds", type=int, default=1, help="index builds timed per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "candidates.json")
    parser.add_argument("--quiet", action="store_true")
    return parser


def settings_default(name: str):
    """The deployed default of a candidate setting (``streams.settings``), so the benchmark measures it."""
    from streams.settings import Settings

    return getattr(Settings(), name)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = EngineConfig(k=args.k)
    report = {**header(), "what": "candidate stage (models.candidates) against the exact scan (kernels.rank)",
              "engine": {"dim": cfg.dim, "history": cfg.history, "scenes": len(cfg.scenes), "k": cfg.k},
              "sizes": [row for n in args.items for row in bench_size(n, args, cfg)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    if not args.quiet:
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
