"""Request-time API benchmark: ``attnflow serve`` on the real Redis under real HTTP load, batched path on and
off.

    python -m tests.benchmarks.bench_serve                 # writes docs/results/serve.json (~6 minutes)
    python -m tests.benchmarks.bench_serve --duration 3 --reps 1 --users 200 --out /tmp/s.json   # smoke size

Seeds ``--users`` users (``--events-per-user`` events each, over ``--items`` items and every scene)
through the engine into Redis, so that their states, the catalogue and the scene popularity are what
a worker would have left; then starts two serve processes on the same data, one with the batched path
(``ATTNFLOW_SERVE_BATCHING=true``) and one without (one request per kernel call). Every round runs,
for each of the two: autocannon (npm; ``npm install --prefix .attnflow/tools autocannon@8``, which
this script does when it is missing) with 1 and 16 connections, each a closed loop (a client sends
its next request when the answer arrives; autocannon reports whole milliseconds); and
``tests.benchmarks.open_loop`` (aiohttp, its own process) at ``--rate`` requests/s, an open loop that
measures latency from each request's due time. (autocannon's own rate limit, ``-R``, is no open loop:
its connections send in bursts, which here gave a p99 ten times the open loop's at the same rate.) Requests
cycle through a fixed list: ``--unknown-share`` unknown users (cold starts), the rest known ones, every scene,
k=20, some with three excluded ids. The report holds every run and the median over rounds. Load generator and
server share this machine's cores. Never fails on a timing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import orjson

from streams.settings import Settings
from tests.benchmarks.common import REPO, RESULTS, header, median

TOOLS = REPO / ".attnflow" / "tools"
AUTOCANNON = TOOLS / "node_modules" / "autocannon"
MODES = {"batched": True, "unbatched": False}


def ensure_autocannon(log) -> str:
    """The autocannon version in .attnflow/tools (installed from npm when missing)."""
    if not AUTOCANNON.exists():
        if shutil.which("npm") is None:
            raise SystemExit("bench_serve needs node and npm for autocannon (apt-get install nodejs npm)")
        log("installing autocannon into .attnflow/tools (npm)")
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(TOOLS), "autocannon@8"],
                       check=True, capture_output=True)
    return orjson.loads((AUTOCANNON / "package.json").read_bytes())["version"]


def seed(settings: Settings, users: int, items: int, events_per_user: int, seed_: int, log) -> dict:
    """Histories for ``users`` users written by the engine (as a worker would), with scene popularity."""
    from models.engine import Engine, SourcedEvent
    from models.events import Event

    rng = np.random.default_rng(seed_)
    store = settings.store()
    item_ids = [f"item-{n:06d}" for n in range(items)]
    for start in range(0, items, 20000):
        store.item_index(item_ids[start:start + 20000])
    engine = Engine(settings.engine_config(), store)
    popular = rng.zipf(1.3, size=users * events_per_user) % items  # a skewed catalogue, as shops have
    started, n = time.perf_counter(), 0
    order = np.repeat(np.arange(users), events_per_user)
    rng.shuffle(order)
    events = [SourcedEvent(Event(f"user-{u}", item_ids[int(popular[j])], "view", 1_700_000_000.0 + j,
                                 settings.scenes[int(rng.integers(len(settings.scenes)))]), 0, j)
              for j, u in enumerate(order)]
    for start in range(0, len(events), settings.batch_size):
        engine.commit(engine.process(events[start:start + settings.batch_size]))
        n += len(events[start:start + settings.batch_size])
    log(f"seeded {users} users with {n} events over {items} items in {time.perf_counter() - started:.1f}s")
    store.close()
    return {"users": users, "items": items, "events": n}


def request_paths(settings: Settings, users: int, items: int, unknown_share: float, n: int,
                  seed_: int) -> list[str]:
    rng = np.random.default_rng(seed_ + 1)
    paths = []
    for i in range(n):
        user = f"stranger-{i}" if rng.random() < unknown_share else f"user-{int(rng.integers(users))}"
        query = {"user_id": user, "scene": settings.scenes[int(rng.integers(len(settings.scenes)))], "k": 20}
        if rng.random() < 0.2:
            query["exclude"] = ",".join(f"item-{int(x):06d}" for x in rng.integers(items, size=3))
        paths.append("/recommendations?" + urllib.parse.urlencode(query))
    return paths


def start_server(settings: Settings, port: int, batching: bool, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, **settings.as_env(), "ATTNFLOW_SERVE_PORT": str(port),
           "ATTNFLOW_SERVE_BATCHING": str(batching).lower()}
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "serve"], env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)


def get_json(port: int, path: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return orjson.loads(reply.read())


def autocannon(port: int, paths: list[str], connections: int, duration: float, rate: float,
               work: Path) -> dict:
    options = work / "autocannon.json"
    options.write_bytes(orjson.dumps({"url": f"http://127.0.0.1:{port}", "paths": paths,
                                      "connections": connections, "duration": duration, "rate": rate}))
    env = {**os.environ, "NODE_PATH": str(TOOLS / "node_modules")}
    out = subprocess.run(["node", str(Path(__file__).with_name("serve_load.js")), str(options)], env=env,
                         capture_output=True, text=True, check=True, timeout=duration + 60)
    result = orjson.loads(out.stdout.strip().splitlines()[-1])
    lat = result["latency"]
    return {"tool": "autocannon", "connections": connections, "rate_target": rate or None,
            "requests": result["requests"]["total"], "rps": result["requests"]["average"],
            "non_2xx": result["non2xx"], "errors": result["errors"], "timeouts": result["timeouts"],
            "latency_ms": {"p50": lat["p50"], "p90": lat["p90"], "p99": lat["p99"], "max": lat["max"],
                           "mean": lat["mean"]}}


def open_loop(port: int, paths: list[str], rate: float, duration: float, work: Path) -> dict:
    options = work / "open_loop.json"
    options.write_bytes(orjson.dumps({"url": f"http://127.0.0.1:{port}", "paths": paths, "rate": rate,
                                      "duration": duration}))
    out = subprocess.run([sys.executable, "-m", "tests.benchmarks.open_loop", str(options)], cwd=REPO,
                         capture_output=True, text=True, check=True, timeout=duration + 120)
    result = orjson.loads(out.stdout.strip().splitlines()[-1])
    return {"tool": "open_loop (aiohttp)", "rate_target": rate, "requests": result["requests"],
            "rps": result["rate_achieved"],
            "non_2xx": sum(v for k, v in result["status"].items() if k != "200"),
            "errors": result["errors"], "latency_ms": result["latency_ms"],
            "client_behind_ms": result["behind_ms"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--events-per-user", type=int, default=20)
    parser.add_argument("--unknown-share", type=float, default=0.1,
                        help="share of requests for unknown users")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--reps", type=int, default=3, help="rounds; the report's summary is the median")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s of the fixed-rate runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    parser.add_argument("--quiet", action="store_true")
    return parser


LOADS = ("closed_c1", "closed_c16", "rate_open_loop")


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    version = ensure_autocannon(log)
    from tests.conftest import _free_port

    tag = uuid.uuid4().hex[:8]
    settings = Settings.from_env(redis_prefix=f"attnflow-bench-serve-{tag}", train_enabled=False)
    report = {**header(),
              "parameters": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                             "redis_prefix": settings.redis_prefix, "autocannon": version,
                             "serve_batch_size": settings.serve_batch_size,
                             "serve_batch_window_s": settings.serve_batch_window_s,
                             "dim": settings.dim, "history": settings.history, "k": 20}}
    servers = {}
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        report["data"] = seed(settings, args.users, args.items, args.events_per_user, args.seed, log)
        paths = request_paths(settings, args.users, args.items, args.unknown_share, 20_000, args.seed)
        from streams.cli import stop_worker, wait_ready

        ports = {mode: _free_port() for mode in MODES}
        for mode, batching in MODES.items():
            servers[mode] = start_server(settings, ports[mode], batching, work / f"serve-{mode}.log")
        for mode in MODES:
            wait_ready(ports[mode], servers[mode])
            autocannon(ports[mode], paths, 4, 2, 0, work)  # warm: connections, caches, the popularity read
        runs = {mode: {load: [] for load in LOADS} for mode in MODES}
        for rep in range(args.reps):
            for mode in MODES:
                port = ports[mode]
                for load in LOADS:
                    before = get_json(port, "/stats")["batches"]
                    if load == "rate_open_loop":
                        result = open_loop(port, paths, args.rate, args.duration, work)
                    else:
                        connections = {"closed_c1": 1, "closed_c16": 16}[load]
                        result = autocannon(port, paths, connections, args.duration, 0, work)
                    stats = get_json(port, "/stats")
                    result["kernel_calls"] = stats["batches"] - before
                    per_call = result["requests"] / max(1, result["kernel_calls"])
                    result["requests_per_call"] = round(per_call, 2)
                    runs[mode][load].append(result)
                    log(f"round {rep + 1} {mode:9s} {load:15s} {result['rps']:8.0f} req/s  p50 "
                        f"{result['latency_ms']['p50']:.2f} ms  p99 {result['latency_ms']['p99']:.2f} ms  "
                        f"{result['requests_per_call']} requests per kernel call")
        report["runs"] = runs
        report["summary"] = {mode: {load: {
            "rps": median([r["rps"] for r in runs[mode][load]]),
            "p50_ms": median([r["latency_ms"]["p50"] for r in runs[mode][load]]),
            "p99_ms": median([r["latency_ms"]["p99"] for r in runs[mode][load]]),
            "mean_ms": median([r["latency_ms"].get("mean") for r in runs[mode][load]]),
            "requests_per_call": median([r["requests_per_call"] for r in runs[mode][load]]),
            "non_2xx": sum(r["non_2xx"] + r["errors"] for r in runs[mode][load])} for load in LOADS}
                             for mode in MODES}
        report["load_average_at_end"] = os.getloadavg()  # the machine is shared: how busy it was
        p99 = report["summary"]["batched"]["rate_open_loop"]["p99_ms"]
        report["goal"] = {"p99_ms_at_rate": p99, "rate": args.rate, "target_ms": 10.0,
                          "met": p99 is not None and p99 <= 10.0}
    finally:
        for process in servers.values():
            stop_worker(process)
        store = settings.store()
        store.clear()
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    log(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
