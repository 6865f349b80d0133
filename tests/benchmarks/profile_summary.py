"""Where a worker's time goes: a py-spy ``--format raw --threads --idle --full-filenames`` profile, in
categories.

Each sample is one thread's stack at one instant. Walking from the innermost frame outwards, the
first frame that belongs to a known category names the sample (so time in ``orjson`` called from
``streams/codec.py`` is JSON, time in redis-py called from ``models/store/`` is Redis). Idle
samples are kept: on the event-loop thread, ``select`` means waiting for the network or for the
engine thread; on the engine thread, waiting on its queue means no work. A jitted kernel runs in
XLA's own threads, which py-spy cannot see, so its time shows where the engine thread waits for
the result (``jax`` frames).

    python -m tests.benchmarks.profile_summary /tmp/attnflow-bench/profile-....txt 200 30
    python -m tests.benchmarks.profile_summary --update docs/results/bench.json   # re-summarise a report
"""
from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
ENGINE_PY = REPO / "models" / "engine.py"
# streams/agents.py and the worker modules its agents run (split out of it)
AGENT_GLUE = tuple(f"streams/{name}.py" for name in ("agents", "rank_worker", "train_worker", "lifecycle",
                                                      "timeshare", "deadletters"))

# (category, test on (function, file)); checked in this order on every frame.
CATEGORIES = [
    ("idle: event loop waiting (select, or in uvloop)",
     lambda fn, f: f.endswith("selectors.py") and "select" in fn),
    ("idle: executor thread waiting for work",
     lambda fn, f: f.endswith(("concurrent/futures/thread.py", "queue.py"))
     and fn.split(".")[-1] in ("_worker", "get")),
    ("idle: trainer waiting for a gap in ranking",
     lambda fn, f: f.endswith("streams/timeshare.py") and fn.endswith("wait_idle")),
    ("jax compile (a new shape at run time)", lambda fn, f: ("/jax/" in f or "/jaxlib/" in f)
     and any(w in fn for w in ("compile", "lower", "_cached_lowering", "trace_to_jaxpr"))),
    ("jax kernel (dispatch, transfer, XLA wait)",
     lambda fn, f: "/jax/" in f or "/jaxlib/" in f
     or f.endswith(("models/kernels.py", "models/counted_scores.py"))),
    ("redis (client, pipelining, round trips)", lambda fn, f: "/redis/" in f or "models/store/" in f),
    ("kafka client socket I/O (aiokafka connection)",
     lambda fn, f: f.endswith(("aiokafka/conn.py", "aiokafka/client.py"))),
    ("kafka send (faust topic.send, aiokafka producer)", lambda fn, f: "/aiokafka/producer/" in f
     or ("/faust/" in f and (f.endswith("faust/topics.py")
                            or "/faust/channels.py" in f and "send" in fn.lower()
                            or "transport/producer" in f
                            or ("drivers/aiokafka.py" in f and "send" in fn.lower())))),
    ("kafka consume (aiokafka fetcher, faust consumer)",
     lambda fn, f: "/aiokafka/" in f or "/faust/transport/" in f),
    ("faust streams/agents machinery", lambda fn, f: "/faust/" in f or "/mode/" in f),
    ("json encode/decode (streams/codec.py, orjson)",
     lambda fn, f: f.endswith("streams/codec.py") or "orjson" in f),
    ("engine host-side NumPy (batching, state codec, feedback, ids)",
     lambda fn, f: any(f.endswith(m) for m in ("models/engine.py", "models/batching.py", "models/state.py",
                                                 "models/params.py", "models/events.py"))),
    ("trainer step (optax, XLA wait)", lambda fn, f: f.endswith(("models/training.py", "models/train_step.py",
                                                                 "models/train_loss.py"))),
    ("agent glue (streams/agents.py)", lambda fn, f: f.endswith(AGENT_GLUE)),
    ("metrics + web views (/stats polling)",
     lambda fn, f: f.endswith(("streams/metrics.py", "streams/quantiles.py", "streams/market_metrics.py",
                               "streams/views.py", "tests/benchmarks/baseline_app.py"))
     or "/aiohttp/" in f),
    ("asyncio event loop", lambda fn, f: "/asyncio/" in f or f.endswith("selectors.py")),
    ("logging", lambda fn, f: "/logging/" in f),
]
KEY_FUNCTIONS = ["RankWorker.handle", "RankWorker._complete", "RankWorker._queue_outputs",
                 "RankWorker._deadletter_records", "RankWorker._run", "decode_event", "encode_recommendation",
                 "encode_feedback", "Engine.process", "Engine.commit", "Engine._fold_and_rank",
                 "Engine._feedback", "Engine._decode", "Engine.item_id", "Engine._learn_ids", "step",
                 "prepare", "rank_inputs", "StateCodec.decode", "StateCodec.encode", "RedisStore.read_batch",
                 "RedisStore.write_states", "PipelineMetrics.observe_feedbacks", "PipelineMetrics.snapshot",
                 "Topic.send", "Topic.publish_message", "Stream.take_events", "Stream.__aiter__",
                 "Stream._py_aiter"]
FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
KERNEL = "jax kernel (dispatch, transfer, XLA wait)"

def timed_kernel_lines(engine_py: Path) -> set[int]:
    """Lines of ``models/engine.py`` between ``started = time.perf_counter()`` and ``kernel_s = ...``: the
    jitted call and the wait for its result. A jitted call hits JAX's C++ fast path and the wait happens
    in C, so py-spy shows these samples on the engine's own line, not in a ``jax`` frame."""
    try:
        lines = engine_py.read_text().splitlines()
    except OSError:
        return set()
    out: set[int] = set()
    for i, line in enumerate(lines):
        if "started = time.perf_counter()" in line:
            for j in range(i + 1, min(i + 25, len(lines))):
                if "kernel_s = time.perf_counter() - started" in lines[j]:
                    out.update(range(i + 2, j + 1))  # 1-based numbers of the lines strictly between
                    break
    return out


def parse(text: str):
    """Yield (thread name, [(function, file, line), ...] outermost first, count) from py-spy raw output."""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        parts = stack.split(";")
        thread = "?"
        if parts and parts[0].startswith("thread ("):
            thread = parts[0].split(":", 1)[1].strip() if ":" in parts[0] else parts[0]
            parts = parts[1:]
        if parts and parts[0].startswith("process "):
            parts = parts[1:]
        frames = []
        for p in parts:
            m = FRAME.match(p)
            frames.append((m["fn"], m["file"], int(m["line"] or 0)) if m else (p, "", 0))
        yield thread, frames, n


ASYNCIO = "asyncio event loop"
# Under uvloop the loop (and its epoll wait) is C: an idle loop thread's innermost Python frame is the one
# that called ``run_until_complete``/``run_forever``.
UVLOOP_RUNNERS = ("Worker.execute_from_commandline", "ServiceThread._start_thread")
LOOP_BOUNDARY = ("Handle._run", "BaseEventLoop._run_once", "BaseEventLoop.run_forever",
                 "BaseEventLoop.run_until_complete")


def classify(frames, kernel_lines=frozenset()) -> str:
    """The category of the innermost frame that has one. asyncio frames (futures, transports, call_soon) are
    charged to the code that called them; only what the loop does between callbacks stays "asyncio"."""
    if frames and frames[-1][0] in UVLOOP_RUNNERS and "/mode/" in frames[-1][1]:
        return CATEGORIES[0][0]
    fallback = None
    for fn, f, line in reversed(frames):
        if line in kernel_lines and f.endswith("models/engine.py"):
            return KERNEL
        label = next((label for label, test in CATEGORIES if test(fn, f)), None)
        if label == ASYNCIO and fn not in LOOP_BOUNDARY:
            fallback = fallback or label
            continue
        if label is not None:
            return fallback if label == ASYNCIO and fallback else label
    return fallback or "other"


def thread_role(name: str) -> str:
    if name.startswith("attnflow-engine"):
        return "engine thread (Engine.process)"
    if name.startswith("attnflow-write"):
        return "writer thread (Engine.commit)"
    if name.startswith("attnflow-train"):
        return "trainer thread"
    if name == "MainThread":
        return "event loop (main thread)"
    return "other threads (faust's aiokafka thread)"


def summarise(text: str, rate: float, seconds: float | None, engine_py: Path = ENGINE_PY) -> dict:
    """Shares of samples by category, per thread role and overall; inclusive shares of key functions."""
    kernel_lines = timed_kernel_lines(engine_py)
    by_role: dict[str, Counter] = defaultdict(Counter)
    inclusive: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    leaves: dict[str, Counter] = defaultdict(Counter)
    for thread, frames, n in parse(text):
        role = thread_role(thread)
        totals[role] += n
        label = classify(frames, kernel_lines)
        by_role[role][label] += n
        if frames and not label.startswith("idle"):
            fn, f, _ = frames[-1]
            leaves[role][f"{fn} ({_short(f)})"] += n
        names = {fn for fn, _, _ in frames}
        for key in KEY_FUNCTIONS:
            if key in names:
                inclusive[role][key] += n
    out = {"samples": dict(totals), "rate_hz": rate, "categories": {}, "inclusive": {}}
    for role, counts in by_role.items():
        total = totals[role]
        out["categories"][role] = {k: round(100 * v / total, 1) for k, v in counts.most_common()}
        out["inclusive"][role] = {k: round(100 * v / total, 1) for k, v in inclusive[role].most_common()}
        out.setdefault("top_functions", {})[role] = {k: round(100 * v / total, 1)
                                                     for k, v in leaves[role].most_common(12)}
    busy = {role: {k: v for k, v in cats.items() if not k.startswith("idle")}
            for role, cats in out["categories"].items()}
    out["busy_share_pct"] = {role: round(sum(v.values()), 1) for role, v in busy.items()}
    if seconds:
        out["samples_expected_per_thread"] = rate * seconds
    return out


def _short(path: str) -> str:
    """``faust/streams.py`` rather than the whole site-packages path."""
    for marker in ("site-packages/", "/lib/python3.", f"{REPO}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            return path.split("/", 1)[1] if marker == "/lib/python3." else path
    return path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] if "/" in path else path


def format_summary(s: dict) -> str:
    lines = []
    for role, cats in (s.get("categories") or {}).items():
        lines.append(f"{role}: {s['samples'][role]} samples, busy {s['busy_share_pct'][role]}%")
        for k, v in cats.items():
            lines.append(f"  {v:5.1f}%  {k}")
        inc = s["inclusive"].get(role) or {}
        if inc:
            lines.append("  inclusive: " + ", ".join(f"{k} {v}%" for k, v in inc.items()))
        top = (s.get("top_functions") or {}).get(role) or {}
        if top:
            lines.append("  busiest functions (own time): " + ", ".join(f"{k} {v}%" for k, v in top.items()))
    return "\n".join(lines)


def update_report(report_path: Path) -> None:
    """Recompute every profile summary in a bench report from its raw py-spy file (after a classifier
    change)."""
    import datetime
    import orjson

    report = orjson.loads(report_path.read_bytes())

    def visit(node):
        if isinstance(node, dict):
            if "raw_profile" in node and Path(node["raw_profile"]).exists():
                fresh = summarise(Path(node["raw_profile"]).read_text(), node.get("rate_hz", 200),
                                  node.get("sampled_s"))
                node.update(fresh)
                now = datetime.datetime.now(datetime.timezone.utc)
                node["summarised"] = now.isoformat(timespec="seconds")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(report)
    report_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


if __name__ == "__main__":
    if sys.argv[1] == "--update":
        update_report(Path(sys.argv[2]))
    else:
        path, rate = sys.argv[1], float(sys.argv[2])
        seconds = float(sys.argv[3]) if len(sys.argv) > 3 else None
        print(format_summary(summarise(open(path).read(), rate, seconds)))
