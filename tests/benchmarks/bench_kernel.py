"""Kernel benchmark: the jitted ``models.kernels.step`` against NumPy on identical inputs.

    python -m tests.benchmarks.bench_kernel        # 10k and 100k items: docs/results/kernel_bench.json
    python -m tests.benchmarks.bench_kernel --items 1000 --batch 8 --reps 1 --out /tmp/k.json   # smoke size

Three implementations of one micro-batch (fold one new event per user into the scene interests,
attend over a 50-event history, score the whole catalogue, top-K):

- ``jit``: ``models.kernels.step`` exactly as ``models.engine`` calls it (NumPy inputs in, arrays out);
- ``numpy_vectorised``: the same maths written as batched NumPy in float32 (``np.add.at`` fold,
  einsum attention, one ``B x N`` matmul, ``argpartition`` top-K) -- the fair CPU baseline;
- ``reference_loop``: ``models.reference`` one event / one user at a time (float64, Python sort);
  it is timed on a subset of the users and reported per user, because a full batch takes minutes.

Also: the chunked running top-K (``chunk`` < table rows; whole chunks, then the default chunk with
its finer steps over the catalogue's last partial chunk) against one matmul, the jitted step at
several batch sizes, and one optimiser step of the online trainer (full against sampled softmax). Medians of
``--reps`` runs after warm-up; never fails on a timing.
"""
from __future__ import annotations

import argparse
import inspect
import sys
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orjson

from models import kernels, reference
from models.config import EngineConfig
from models.params import COUNTED, Params, capacity_for, init_params
from tests.benchmarks.common import RESULTS, header, median, ratio, timed


# ---- inputs --------------------------------------------------------------------------------

def bench_params(cfg: EngineConfig, capacity: int, seed: int = 1) -> Params:
    """Untrained parameters perturbed everywhere, so every term of the kernel matters (as in the tests)."""
    params = init_params(cfg, capacity)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 20))
    # the counted fields (popularity, neighbours) stay empty: the NumPy twins here do not score them, and
    # the kernel's cost does not depend on their values (every neighbour slot is gathered and scattered)
    return params._replace(**{name: value + 0.3 * jax.random.normal(next(keys), value.shape)
                              for name, value in params._asdict().items() if name != "item_emb"
                              and name not in COUNTED})


def make_inputs(cfg: EngineConfig, B: int, n_items: int, seed: int = 0) -> dict:
    """One Engine-like padded batch: ``B`` users, each with one new event and an L-event history."""
    rng = np.random.default_rng(seed)
    L, S, d = cfg.history, cfg.n_scenes, cfg.dim
    hist_item = rng.integers(0, n_items, (B, L)).astype(np.int32)
    empty = np.where(rng.random(B) < 0.3, rng.integers(0, L + 1, B), 0)  # 30% of users have short histories
    for b in range(B):
        hist_item[b, : empty[b]] = -1
    ranks = kernels.RankInputs(
        hist_item=hist_item, hist_type=rng.integers(0, 4, (B, L)).astype(np.int32),
        hist_age=rng.uniform(0, 5 * 86400, (B, L)).astype(np.float32),
        scene=rng.integers(0, S, B).astype(np.int32),
        exclude=np.where(rng.random((B, 3)) < 0.5, rng.integers(0, n_items, (B, 3)), -1).astype(np.int32))
    weight = np.where(rng.random((B, S)) < 0.6, rng.uniform(0.5, 3, (B, S)), 0).astype(np.float32)
    interest = (rng.normal(size=(B, S, d)) * (weight > 0)[..., None]).astype(np.float32)
    # one new event per user, in that user's request scene
    item = rng.integers(0, n_items, B).astype(np.int32)
    etype = rng.integers(0, 4, B).astype(np.int32)
    slot = np.arange(B) * S + ranks.scene
    slot_count = np.bincount(slot, minlength=B * S).reshape(B, S).astype(np.int32)
    fold = kernels.FoldInputs(item=item, type=etype, slot=slot.astype(np.int32), later=np.zeros(B, np.int32),
                              slot_count=slot_count)
    return {"interest": interest, "weight": weight, "fold": fold, "ranks": ranks, "n_items": n_items}


# ---- the three implementations -------------------------------------------------------------

def jit_step(params: Params, inputs: dict, cfg: EngineConfig, chunk: int, tail: int | None = None):
    """``kernels.step`` as the engine calls it (``tail``: the backend's default when None); returns NumPy
    (top_items, top_scores)."""
    out = kernels.step(params, inputs["interest"], inputs["weight"], inputs["fold"], inputs["ranks"],
                       jnp.int32(inputs["n_items"]), k=cfg.k, chunk=chunk, gamma=cfg.interest_decay,
                       tail=tail)
    _, _, items, scores = out
    return np.asarray(items), np.asarray(scores)


def resident_step(params: Params, inputs: dict, cfg: EngineConfig, chunk: int):
    """``jit_step`` with the inputs already on the device and the outputs left there: the kernel alone,
    without the host-to-device and device-to-host copies a worker pays (they matter on a GPU). The
    kernel donates the interest and weight buffers, so each call gets a device-side copy of those two."""
    on_device = jax.device_put({key: inputs[key] for key in ("interest", "weight", "fold", "ranks")})
    n_items = jnp.int32(inputs["n_items"])

    def run():
        out = kernels.step(params, jnp.copy(on_device["interest"]), jnp.copy(on_device["weight"]),
                           on_device["fold"], on_device["ranks"], n_items, k=cfg.k, chunk=chunk,
                           gamma=cfg.interest_decay)
        return jax.block_until_ready(out)
    return run


def numpy_params(params: Params) -> dict:
    return {name: np.asarray(value, np.float32) for name, value in params._asdict().items()}


def _softplus(x):
    return np.log1p(np.exp(-abs(x))) + max(x, 0)


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def numpy_step(p: dict, inputs: dict, cfg: EngineConfig):
    """The whole step as batched float32 NumPy: the baseline a careful NumPy engineer would write."""
    interest, weight, fold, ranks = inputs["interest"], inputs["weight"], inputs["fold"], inputs["ranks"]
    n_items, k, gamma = inputs["n_items"], cfg.k, cfg.interest_decay
    B, S, d = interest.shape
    # fold (same closed form as kernels.fold_interests)
    contrib = (gamma ** fold.later.astype(np.float32)) * np.exp(p["type_logit"])[fold.type]
    added = np.zeros((B * S + 1, d), np.float32)
    np.add.at(added, fold.slot, p["item_emb"][fold.item] * contrib[:, None])
    added_w = np.bincount(fold.slot, weights=contrib, minlength=B * S + 1).astype(np.float32)
    kept = weight * gamma ** fold.slot_count.astype(np.float32)
    new_w = kept + added_w[: B * S].reshape(B, S)
    summed = interest * kept[..., None] + added[: B * S].reshape(B, S, d)
    interest = summed / np.maximum(new_w, 1e-12)[..., None]
    # attention over the history + scene transfer (same as kernels.user_vectors)
    scale = np.float32(1.0 / np.sqrt(d))
    valid = ranks.hist_item >= 0
    h = p["item_emb"][np.where(valid, ranks.hist_item, 0)] + p["type_emb"][ranks.hist_type]
    h *= valid[..., None]
    newest = h[:, -1, :]
    q = (newest + p["scene_query"][ranks.scene]) @ p["w_query"]
    keys = (h + p["pos_emb"][None]) @ p["w_key"]
    values = h @ p["w_value"]
    softplus = _softplus(p["decay"])
    logits = (np.einsum("bd,bld->bl", q, keys) * scale + p["type_logit"][ranks.hist_type]
              - softplus * np.log1p(np.maximum(ranks.hist_age, 0) / 3600.0))
    logits = np.where(valid, logits, kernels.NEG_INF)
    attn = _softmax(logits) * valid
    pooled = np.einsum("bl,bld->bd", attn, values)
    has = new_w > 0
    scene_logits = np.where(has, np.einsum("bd,bsd->bs", q, interest) * scale, kernels.NEG_INF)
    beta = _softmax(scene_logits) * has
    user = newest + pooled + (1 / (1 + np.exp(-p["transfer"]))) * np.einsum("bs,bsd->bd", beta, interest)
    # score the catalogue, add the repeat (copy-from-history) score where the model has one, mask, top-k
    scores = user @ p["item_emb"][:n_items].T + p["item_bias"][:n_items]
    if "copy" in p:
        L = ranks.hist_item.shape[1]
        tau = 1.0 + _softplus(p["copy_tau"])
        steps_back = np.arange(L - 1, -1, -1, dtype=np.float32)
        gain = (p["copy"] + p.get("copy_offset", 0.0)) * np.exp(-steps_back / tau)  # signed repeat gain
        hb, hj = np.nonzero((ranks.hist_item >= 0) & (ranks.hist_item < n_items))
        np.add.at(scores, (hb, ranks.hist_item[hb, hj]), gain[hj].astype(np.float32))
    rows, cols = np.nonzero((ranks.exclude >= 0) & (ranks.exclude < n_items))
    scores[rows, ranks.exclude[rows, cols]] = -np.inf
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # by score desc, then lower index
    items = np.take_along_axis(part, order, axis=1)
    top = np.take_along_axis(part_scores, order, axis=1)
    return np.where(np.isfinite(top), items, -1).astype(np.int32), top


def reference_step(params: Params, inputs: dict, cfg: EngineConfig, users: int):
    """``models.reference`` for the first ``users`` users: per-event fold, per-user attention and sort."""
    interest, weight, fold, ranks = inputs["interest"], inputs["weight"], inputs["fold"], inputs["ranks"]
    S = cfg.n_scenes
    events = [(int(s) // S, int(s) % S, int(i), int(t))
              for s, i, t in zip(fold.slot[:users], fold.item[:users], fold.type[:users])]
    new_i, new_w = reference.fold_interests(params, interest[:users], weight[:users], events,
                                            cfg.interest_decay)
    out_items, out_scores = [], []
    with_history = "hist_item" in inspect.signature(reference.top_k).parameters  # repeat score in the model
    for b in range(users):
        user = reference.user_vector(params, new_i[b], new_w[b], ranks.hist_item[b], ranks.hist_type[b],
                                     ranks.hist_age[b], int(ranks.scene[b]))
        user = user[0] if isinstance(user, tuple) else user  # (vector, attention) in newer models
        extra = {"hist_item": ranks.hist_item[b]} if with_history else {}
        items, scores = reference.top_k(params, user, inputs["n_items"], ranks.exclude[b], cfg.k, **extra)
        out_items.append(items)
        out_scores.append(scores)
    return np.array(out_items), out_scores


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of users whose top-K item lists are identical (order included)."""
    n = min(len(a), len(b))
    return float(np.mean([np.array_equal(a[i], b[i]) for i in range(n)])) if n else None


# ---- measurements --------------------------------------------------------------------------

def summary(seconds: list[float], users: int) -> dict:
    med = median(seconds)
    return {"median_ms": med * 1e3, "min_ms": min(seconds) * 1e3, "reps": len(seconds),
            "runs_ms": [round(s * 1e3, 3) for s in seconds], "users": users, "per_user_us": med / users * 1e6}


def bench_catalogue(n_items: int, args, log) -> dict:
    capacity = capacity_for(n_items, 16384 if n_items > 1024 else 1024)
    cfg = EngineConfig(dim=args.dim, history=args.history, k=args.k, initial_capacity=capacity,
                       max_batch=max(args.batch, 8))
    # the chunk a worker here runs, by number
    cfg = replace(cfg, item_chunk=kernels.resolve_chunk(cfg.item_chunk))
    params = bench_params(cfg, capacity)
    inputs = make_inputs(cfg, args.batch, n_items)
    p_np = numpy_params(params)
    B = args.batch
    out = {"n_items": n_items, "table_rows": capacity, "default_chunk": cfg.item_chunk,
           "default_tail": kernels.resolve_tail(cfg.item_chunk),
           "items_scored": kernels.items_scored(n_items, capacity, cfg.k, cfg.item_chunk), "batch": B,
           "history": cfg.history, "dim": cfg.dim, "k": cfg.k, "scenes": cfg.n_scenes}

    log(f"[{n_items} items] jit step (chunk {cfg.item_chunk}) ...")
    jit_items, _ = jit_step(params, inputs, cfg, cfg.item_chunk)
    jit_t = timed(lambda: jit_step(params, inputs, cfg, cfg.item_chunk), args.reps, warmup=2)
    resident = resident_step(params, inputs, cfg, cfg.item_chunk)
    resident_t = timed(resident, args.reps, warmup=2)
    log(f"[{n_items} items] numpy vectorised ...")
    np_items, _ = numpy_step(p_np, inputs, cfg)
    np_t = timed(lambda: numpy_step(p_np, inputs, cfg), args.reps, warmup=1)
    ref_users = min(B, args.reference_users if n_items <= 20000 else max(1, args.reference_users // 4))
    log(f"[{n_items} items] reference loop on {ref_users} users ...")
    ref_items, _ = reference_step(params, inputs, cfg, ref_users)
    ref_t = timed(lambda: reference_step(params, inputs, cfg, ref_users), max(1, min(args.reps, 3)), warmup=0)

    out["step"] = {"jit": summary(jit_t, B), "jit_device_resident": summary(resident_t, B),
                   "numpy_vectorised": summary(np_t, B),
                   "reference_loop": {**summary(ref_t, ref_users),
                                      "note": f"timed on {ref_users} of {B} users; per-batch "
                                              "figure extrapolated"}}
    reference_loop = out["step"]["reference_loop"]
    reference_loop["batch_ms_extrapolated"] = reference_loop["per_user_us"] * B / 1e3
    out["agreement"] = {"jit_vs_reference": agreement(jit_items, ref_items),
                        "numpy_vs_reference": agreement(np_items, ref_items),
                        "jit_vs_numpy": agreement(jit_items, np_items),
                        "users_compared_with_reference": ref_users}
    jit_us = out["step"]["jit"]["per_user_us"]
    out["speedup"] = {"jit_over_numpy_vectorised": ratio(out["step"]["numpy_vectorised"]["per_user_us"],
                                                         jit_us),
                      "jit_over_reference_loop": ratio(out["step"]["reference_loop"]["per_user_us"], jit_us),
                      "numpy_vectorised_over_reference_loop": ratio(
                          out["step"]["reference_loop"]["per_user_us"],
                          out["step"]["numpy_vectorised"]["per_user_us"])}

    # Chunked running top-K vs one matmul over the whole table, at a large and a small batch: whole
    # chunks alone (tail = chunk), then the default chunk with its default tail steps where they differ.
    candidates = sorted({c for c in (capacity, 262144, 65536, 32768, 16384, 8192, 4096, 2048)
                         if c <= capacity and capacity % c == 0}, reverse=True)
    default = min(cfg.item_chunk, capacity)  # what the default chunk scores per step on this table
    # always the default
    chunks = sorted(set(candidates[: args.max_chunks]) | {default} & set(candidates), reverse=True)
    plans = [(chunk, chunk) for chunk in chunks]
    if kernels.resolve_tail(cfg.item_chunk) < default:
        plans.append((default, kernels.resolve_tail(cfg.item_chunk)))
    out["chunking"] = []
    for b in sorted({B, min(B, 32)}, reverse=True):
        sub = make_inputs(cfg, b, n_items, seed=1)
        baseline = None
        for chunk, tail in plans:
            log(f"[{n_items} items] chunk {chunk}, tail {tail}, batch {b} ...")
            items, _ = jit_step(params, sub, cfg, chunk, tail)
            seconds = timed(lambda: jit_step(params, sub, cfg, chunk, tail), args.reps, warmup=1)
            row = {"batch": b, "chunk": chunk, "tail": tail, "n_chunks": capacity // chunk,
                   "single_matmul": chunk >= capacity and tail == chunk,
                   "items_scored": kernels.items_scored(n_items, capacity, cfg.k, chunk, tail),
                   **summary(seconds, b)}
            if baseline is None:
                baseline, base_items = row["median_ms"], items
            row["speedup_vs_single_matmul"] = ratio(baseline, row["median_ms"])
            row["same_items_as_single_matmul"] = agreement(items, base_items)
            out["chunking"].append(row)

    out["train_step"] = train_steps(cfg, n_items, args, log)

    # Batch size: what one kernel call costs per user when batches are small (low rates).
    out["batch_sizes"] = []
    for b in sorted({s for s in (8, 32, 128, 512) if s <= B} | {B}):
        sub = make_inputs(cfg, b, n_items, seed=2)
        jit_step(params, sub, cfg, cfg.item_chunk)
        seconds = timed(lambda: jit_step(params, sub, cfg, cfg.item_chunk), args.reps, warmup=1)
        out["batch_sizes"].append({"batch": b, **summary(seconds, b)})
    return out


def train_steps(cfg: EngineConfig, n_items: int, args, log) -> dict:
    """One optimiser step of the online trainer (64 examples), full softmax against the sampled,
    row-sparse step it takes on tables of 8 rows per negative and more (``models.training.sampled``)."""
    from models.training import TrainConfig, Trainer, toy_examples

    out = {"examples": 64}
    for name, negatives in (("full_softmax", 0), ("sampled", 1024)):
        trainer = Trainer(cfg, TrainConfig(replay_steps=0, negatives=negatives))
        examples = toy_examples(cfg, n=64, n_items=n_items)

        def step():
            trainer.learn(examples, n_items)
            jax.block_until_ready(trainer.params)

        log(f"[{n_items} items] train step, {name} ...")
        out[name] = {**summary(timed(step, args.reps * 3, warmup=2), 64), "negatives": negatives,
                     "path": trainer._step_fn()[0].__name__}
    out["sampled_over_full"] = ratio(out["full_softmax"]["median_ms"], out["sampled"]["median_ms"])
    return out


def table(results: dict) -> str:
    lines = [f"{'items':>8} {'impl':<18} {'ms/batch':>10} {'us/user':>10} {'speedup(jit)':>13}  agreement"]
    for r in results.values():
        jit = r["step"]["jit"]["per_user_us"]
        for name, row in r["step"].items():
            batch_ms = row.get("batch_ms_extrapolated", row["median_ms"])
            agree = {"jit": r["agreement"]["jit_vs_reference"],
                     "numpy_vectorised": r["agreement"]["numpy_vs_reference"]}
            lines.append(f"{r['n_items']:>8} {name:<18} {batch_ms:>10.2f} {row['per_user_us']:>10.2f} "
                         f"{row['per_user_us'] / jit:>12.1f}x  "
                         f"{'' if agree.get(name) is None else f'{agree[name]:.3f} vs reference'}")
    lines.append("")
    lines.append(f"{'items':>8} {'batch':>6} {'chunk':>7} {'tail':>6} {'n_chunks':>8} {'scored':>8} "
                 f"{'ms/batch':>10} {'vs single':>10}")
    for r in results.values():
        for row in r["chunking"]:
            lines.append(f"{r['n_items']:>8} {row['batch']:>6} {row['chunk']:>7} "
                         f"{row.get('tail', row['chunk']):>6} {row['n_chunks']:>8} "
                         f"{row.get('items_scored', ''):>8} {row['median_ms']:>10.2f} "
                         f"{row['speedup_vs_single_matmul']:>9.2f}x")
    lines.append("")
    lines.append(f"{'items':>8} {'train step full ms':>19} {'sampled ms':>11} {'full/sampled':>13}")
    for r in results.values():
        t = r.get("train_step") or {}
        if t:
            lines.append(f"{r['n_items']:>8} {t['full_softmax']['median_ms']:>19.2f} "
                         f"{t['sampled']['median_ms']:>11.2f} {t['sampled_over_full']:>12.1f}x")
    lines.append("")
    lines.append(f"{'items':>8} {'batch':>6} {'ms/batch':>10} {'us/user':>10}   (jit step, default chunk)")
    for r in results.values():
        for row in r["batch_sizes"]:
            lines.append(f"{r['n_items']:>8} {row['batch']:>6} {row['median_ms']:>10.2f} "
                         f"{row['per_user_us']:>10.2f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=None,
                        help="catalogue sizes (default 10000 100000, plus 1000000 when a GPU is visible)")
    parser.add_argument("--batch", type=int, default=512, help="users per batch (B)")
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--reps", type=int, default=7,
                        help="timed repetitions after warm-up (median reported)")
    parser.add_argument("--reference-users", type=int, default=32,
                        help="users timed with the per-user reference (a quarter of that above 20k items)")
    parser.add_argument("--max-chunks", type=int, default=5, help="how many chunk sizes to try per catalogue")
    parser.add_argument("--out", type=Path, default=RESULTS / "kernel_bench.json")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    gpu = any(d.platform == "gpu" for d in jax.devices())
    sizes = args.items or ([10_000, 100_000] + ([1_000_000] if gpu else []))
    report = header()
    report["parameters"] = {"batch": args.batch, "history": args.history, "dim": args.dim, "k": args.k,
                            "scenes": 4, "reps": args.reps, "items": sizes, "backend": jax.default_backend()}
    report["results"] = {str(n): bench_catalogue(n, args, log) for n in sizes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    if not args.quiet:
        print(table(report["results"]))
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
