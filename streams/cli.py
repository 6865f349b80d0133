"""``attnflow``: the command line for operators and developers.

    attnflow up | down | status      local Kafka (KRaft) + Redis from deploy/
    attnflow topics [--delete]       create (or delete) the pipeline's topics
    attnflow worker                  run one rank worker (Faust); start more to scale out
    attnflow trainer                 a dedicated trainer process (workers then use ATTNFLOW_ROLE=rank)
    attnflow replay DATASET          push a real log into `events` with a progress bar
    attnflow catalogue FILE          push item add / update / hide changes (CSV or JSONL) to `catalogue`
    attnflow campaigns FILE          push sponsored-slot campaigns (CSV or JSONL) to `campaigns`
    attnflow market-sim DATASET      offline attention-market simulation on a real log (docs/market.md)
    attnflow tail TOPIC              print recommendations / feedback / deadletter readably
    attnflow serve                   GET /recommendations from Redis alone (stateless; scale freely)
    attnflow demo                    the main job end to end on a real log, with a summary
    attnflow bootstrap DATASET       train initial parameters offline, publish them to the workers
    attnflow eval ...                offline evaluation (see models.evaluate)
    attnflow reset                   drop this pipeline's topics and Redis keys

Every tunable comes from ``ATTNFLOW_*`` environment variables (``streams.settings``).
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

import orjson

from streams.settings import Settings
# re-exported: tests and benchmarks start their workers through streams.cli
from streams.worker_process import REPO, lower_priority, start_worker, stop_worker, wait_ready, worker_stats
log = logging.getLogger("attnflow")


def _deploy(script: str, action: str) -> None:
    path = REPO / "deploy" / script
    if not path.exists():
        sys.exit(f"{path} not found: `attnflow up` runs from a source checkout "
                 "(use docker-compose otherwise)")
    subprocess.run(["bash", str(path), action], check=True)


def cmd_up(args, settings):
    _deploy("redis.sh", "start")
    _deploy("kafka.sh", "start")


def cmd_down(args, settings):
    _deploy("kafka.sh", "stop")
    _deploy("redis.sh", "stop")


def cmd_status(args, settings):
    for script in ("redis.sh", "kafka.sh"):
        subprocess.run(["bash", str(REPO / "deploy" / script), "status"])


def cmd_topics(args, settings):
    """Create missing topics; ``--check`` only compares partition counts with the settings (exit 1 if they
    differ or a topic is missing). Both refuse an existing topic whose partition count differs."""
    from streams.topics import PartitionMismatch, check_topics, delete_topics, ensure_topics

    if args.delete:
        delete_topics(settings)
        print("deleted topics")
        return
    try:
        have, problems = check_topics(settings) if args.check else (ensure_topics(settings), [])
    except PartitionMismatch as exc:
        have, problems = {}, str(exc).split("; ")
    for name, n in sorted(have.items()):
        print(f"{name}: {n} partitions")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(1)


def cmd_worker(args, settings):
    if settings.role == "train" and settings.train_nice:
        # a dedicated trainer yields the CPU to rank workers on its machine (ATTNFLOW_TRAIN_NICE)
        print(f"dedicated trainer: {lower_priority(settings.train_nice)}", file=sys.stderr)
    from streams.topics import ensure_topics

    ensure_topics(settings)
    if args.loglevel:  # the app reads its settings from the environment: let it see this level too
        os.environ["ATTNFLOW_LOG_LEVEL"] = args.loglevel
    from streams.app import app

    port = args.web_port or settings.web_port
    sys.argv = ["attnflow", "worker", "--loglevel", args.loglevel or settings.log_level,
                "--web-port", str(port), "--web-host", settings.web_host, "--web-bind", settings.web_host]
    app.main()


def cmd_trainer(args, settings):
    """A dedicated trainer process: only the train agent (rank workers then run ATTNFLOW_ROLE=rank)."""
    os.environ["ATTNFLOW_ROLE"] = "train"
    if args.web_port is None:
        args.web_port = settings.web_port + 100
    cmd_worker(args, Settings.from_env())


def _load_log(args):
    from models import loaders

    return loaders.load(args.dataset, data_dir=args.data_dir or None)


def cmd_replay(args, settings):
    from streams.replay import log_events, replay
    from streams.topics import ensure_topics

    ensure_topics(settings)
    events_log = _load_log(args)
    total = len(events_log) if args.limit is None else min(args.limit, len(events_log))
    print(f"{events_log.name}: {total} events, {events_log.n_users} users, {events_log.n_items} items"
          f"{' — ' + events_log.notes if events_log.notes else ''}")
    stats = replay(settings, log_events(events_log, total), total=total, rate=args.rate,
                   batch_events=1 if args.single else args.batch_events)
    print(f"sent {stats['sent']} events in {stats['messages']} messages to {stats['topic']} in "
          f"{stats['seconds']:.1f}s ({stats['rate']:.0f}/s)")


def cmd_tail(args, settings):
    from streams.replay import format_message, read_topic

    for doc in read_topic(settings, args.topic, from_beginning=args.from_beginning, timeout_s=args.timeout,
                          max_messages=args.max):
        print(format_message(args.topic, doc) if not args.json else orjson.dumps(doc).decode(), flush=True)


def cmd_redis_acl(args, settings):
    """Print the ``ACL SETUSER`` line for a worker user (pipe it to redis-cli as an admin), password
    read from the environment so that it never lands in shell history."""
    from models.store import worker_acl

    password = os.environ.get(args.password_env)
    if not password:
        raise SystemExit(f"set {args.password_env} to the password the worker user gets")
    print("ACL SETUSER " + " ".join(worker_acl(args.user, password, settings.redis_prefix)))


def cmd_reset(args, settings):
    from streams.topics import delete_topics

    delete_topics(settings)
    n = settings.store().clear()
    print(f"deleted topics with prefix {settings.topic_prefix!r} and {n} Redis keys under "
          f"{settings.redis_prefix!r}")


def cmd_demo(args, settings):
    """Start the stack, a worker, replay a real log, show recommendations flowing and online hit rate."""
    from streams.replay import format_message, log_events, read_topic, replay
    from streams.topics import ensure_topics

    if not args.no_up:
        cmd_up(args, settings)
    settings = Settings.from_env(topic_prefix=args.prefix, redis_prefix=f"attnflow-{args.prefix.strip('.')}",
                                 app_id=f"attnflow-{args.prefix.strip('.')}")
    cmd_reset(args, settings)
    ensure_topics(settings)
    events_log = _load_log(args)
    total = len(events_log) if args.limit is None else min(args.limit, len(events_log))
    print(f"\n== {events_log.name}: replaying {total} of {len(events_log)} events "
          f"({events_log.n_users} users, {events_log.n_items} items) ==")
    print("   note: unless `attnflow bootstrap` published parameters, item vectors start untrained "
          "(index-seeded) and are learned online during the replay; the hit rate below measures the "
          "pipeline, not a tuned model.\n")
    log_path = REPO / ".attnflow" / "demo-worker.log"
    worker = start_worker(settings, log_path)
    try:
        wait_ready(settings.web_port, worker)
        print(f"worker ready (log: {log_path}, metrics: http://127.0.0.1:{settings.web_port}/metrics)")
        stats = replay(settings, log_events(events_log, total), total=total, rate=args.rate,
                       batch_events=1 if args.single else args.batch_events)
        print(f"sent {stats['sent']} events in {stats['messages']} messages in {stats['seconds']:.1f}s "
              f"({stats['rate']:.0f}/s)\n")
        print("-- a few recommendations as they came out --")
        for doc in read_topic(settings, "recommendations", timeout_s=5, max_messages=5):
            print("  " + format_message("recommendations", doc))
        deadline = time.time() + args.timeout
        snapshot = worker_stats(settings.web_port)
        while snapshot["events"] < total and time.time() < deadline:
            time.sleep(1)
            snapshot = worker_stats(settings.web_port)
        online = snapshot["online"]
        print("\n-- summary (worker /stats) --")
        print(f"  events processed   {snapshot['events']}  in {snapshot['batches']} batches")
        print(f"  recommendations    {snapshot['recommendations']}")
        print(f"  feedback messages  {snapshot['feedback']}")
        print(f"  dead letters       {sum(snapshot['deadletters'].values())} {snapshot['deadletters'] or ''}")
        if online["hr"] is not None:
            print(f"  online HR@{online['k']}        {online['hr']:.4f}  over "
                  f"{online['events_with_list']} events that had a list  (NDCG@{online['k']} "
                  f"{online['ndcg']:.4f})")
        lat = snapshot["latency_seconds"]
        if lat["p50"] is not None:
            print(f"  produce→emit       p50 {lat['p50'] * 1000:.0f} ms, p99 {lat['p99'] * 1000:.0f} ms")
        if snapshot["events"] < total:
            print(f"  WARNING: only {snapshot['events']} of {total} events processed after {args.timeout}s")
            return 1
    finally:
        stop_worker(worker)
    print("\nservices keep running; `attnflow tail recommendations` to read more, `attnflow down` to stop.")
    return 0


def cmd_bootstrap(args, settings):
    """Train initial parameters offline on a historical log and publish them as a snapshot."""
    from models.attention import AttentionRecommender, publish_bootstrap

    events_log = _load_log(args)
    if args.limit:
        from models.loaders import head
        events_log = head(events_log, args.limit)
    cfg = settings.engine_config()
    if max(events_log.scene) >= cfg.n_scenes:
        sys.exit(f"{events_log.name} uses {len(events_log.scene_names)} scenes, settings have {cfg.n_scenes}")
    model = AttentionRecommender(cfg, settings.train_config(), epochs=args.epochs)
    print(f"training on {len(events_log)} events of {events_log.name} for {args.epochs} epochs ...")
    started = time.time()
    model.fit(events_log, progress=True)
    store = settings.store()
    version = publish_bootstrap(model, events_log, store)
    print(f"published snapshot {version} (loss {model.trainer.last_loss:.3f}, {model.trainer.steps} steps, "
          f"{time.time() - started:.0f}s); running workers load it with their next batch")


def cmd_serve(args, settings):
    """The stateless request-time API: answers GET /recommendations from Redis
    (states, catalogue, snapshots)."""
    from streams.serving import serve

    serve(settings, port=args.port)


def cmd_report(args, settings):
    from streams.report import update_readme

    update_readme()
    print("README results block rewritten from docs/results/*.json")


def _push_file(args, settings, read_file, topic: str, what: str) -> int:
    """Send the messages of a catalogue or campaigns file; a file with bad lines sends nothing unless
    ``--skip-bad`` (the first 20 reasons are printed either way)."""
    from streams.replay import replay
    from streams.topics import ensure_topics

    messages, errors = read_file(args.file, settings.scenes)
    for error in errors[:20]:
        print(error, file=sys.stderr)
    if errors and not args.skip_bad:
        print(f"{len(errors)} bad line(s), nothing sent (--skip-bad sends the {len(messages)} good ones)",
              file=sys.stderr)
        return 1
    ensure_topics(settings)
    result = replay(settings, messages, total=len(messages), raw=True, topic=topic)
    print(f"sent {result['sent']} {what} to {result['topic']}"
          + (f"; skipped {len(errors)} bad line(s)" if errors else ""))
    return 0


def cmd_catalogue(args, settings):
    from streams.catalogue import read_catalogue_file
    from streams.topics import TopicNames

    return _push_file(args, settings, read_catalogue_file, TopicNames.of(settings).catalogue,
                      "catalogue changes")


def cmd_campaigns(args, settings):
    from streams.market import read_campaigns_file
    from streams.topics import TopicNames

    return _push_file(args, settings, read_campaigns_file, TopicNames.of(settings).campaigns,
                      "campaign messages")


def cmd_market_sim(args, settings):
    from models.market.simulate import main as simulate
    return simulate(args.rest[1:] if args.rest[:1] == ["--"] else args.rest)


def cmd_eval(args, settings):
    from models import evaluate

    return evaluate.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start local Kafka + Redis").set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop local Kafka + Redis").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="are the local services running").set_defaults(fn=cmd_status)
    p = sub.add_parser("topics", help="create the pipeline's topics")
    p.add_argument("--delete", action="store_true")
    p.add_argument("--check", action="store_true",
                   help="create nothing; exit 1 if a topic is missing or its partition count differs "
                        "from the settings")
    p.set_defaults(fn=cmd_topics)
    p = sub.add_parser("worker", help="run a rank worker")
    p.add_argument("--web-port", type=int, default=None, help="default ATTNFLOW_WEB_PORT (6066)")
    p.add_argument("--loglevel", default=None)
    p.set_defaults(fn=cmd_worker)
    p = sub.add_parser("trainer", help="run a dedicated trainer (then start workers with ATTNFLOW_ROLE=rank)")
    p.add_argument("--web-port", type=int, default=None, help="default ATTNFLOW_WEB_PORT + 100")
    p.add_argument("--loglevel", default=None)
    p.set_defaults(fn=cmd_trainer)
    for name, fn, helptext in (("replay", cmd_replay, "replay a dataset into the events topic"),
                               ("demo", cmd_demo, "run the whole pipeline on a real log and summarise")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("dataset", nargs="?", default="taobao-userbehavior-43users",
                       help="dataset folder name or alias "
                            "(tmall, taobao, otto, yoochoose, movielens, beauty)")
        p.add_argument("--data-dir", default="", help="folder laid out like ../shared/data (default: that)")
        p.add_argument("--limit", type=int, default=None, help="replay only the first N events")
        p.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
        p.add_argument("--single", action="store_true", help="one Kafka message per event (default: batched)")
        p.add_argument("--batch-events", type=int, default=None,
                       help="events per batched message (default ATTNFLOW_REPLAY_BATCH_EVENTS)")
        p.set_defaults(fn=fn)
    demo = sub.choices["demo"]
    demo.add_argument("--prefix", default="demo.", help="topic prefix of the demo's own namespace")
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the worker to finish")
    demo.add_argument("--no-up", action="store_true", help="services are already running")
    p = sub.add_parser("bootstrap", help="train initial parameters offline on a log; publish a snapshot")
    p.add_argument("dataset", help="dataset folder name or alias")
    p.add_argument("--data-dir", default="")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(fn=cmd_bootstrap)
    p = sub.add_parser("catalogue", help="push item add / update / hide changes from a CSV or JSONL file")
    p.add_argument("file",
                   help="JSONL: one {item_id, action, scenes} object a line; CSV: item_id,action,scenes "
                        "(scenes separated by ';')")
    p.add_argument("--skip-bad", action="store_true", help="send the valid lines even if some are bad")
    p.set_defaults(fn=cmd_catalogue)
    p = sub.add_parser("campaigns", help="push sponsored-slot campaigns from a CSV or JSONL file")
    p.add_argument("file",
                   help="JSONL: one campaign message a line (docs/market.md); CSV: campaign_id,advertiser,"
                        "items,bid,daily_budget[,start_ts,end_ts,scenes,status,action] (lists with ';')")
    p.add_argument("--skip-bad", action="store_true", help="send the valid lines even if some are bad")
    p.set_defaults(fn=cmd_campaigns)
    p = sub.add_parser("market-sim", help="offline market simulation; arguments go to models.market.simulate",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_market_sim)
    p = sub.add_parser("tail", help="print an output topic")
    p.add_argument("topic", choices=["recommendations", "feedback", "deadletter", "ledger"])
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max", type=int, default=None)
    p.add_argument("--timeout", type=float, default=10.0, help="stop after this many idle seconds")
    p.add_argument("--json", action="store_true", help="raw JSON instead of readable lines")
    p.set_defaults(fn=cmd_tail)
    p = sub.add_parser("eval", help="offline evaluation; arguments go to models.evaluate", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_eval)
    sub.add_parser("report", help="rewrite the README results from docs/results").set_defaults(fn=cmd_report)
    p = sub.add_parser("serve", help="serve GET /recommendations from Redis (no Kafka)")
    p.add_argument("--port", type=int, default=None, help="default ATTNFLOW_SERVE_PORT (6070)")
    p.set_defaults(fn=cmd_serve)
    sub.add_parser("reset", help="delete topics and Redis keys of this pipeline").set_defaults(fn=cmd_reset)
    p = sub.add_parser("redis-acl", help="print the ACL SETUSER line of a least-privilege worker user")
    p.add_argument("--user", default="attnflow-worker")
    p.add_argument("--password-env", default="ATTNFLOW_REDIS_WORKER_PASSWORD",
                   help="environment variable holding the user's password")
    p.set_defaults(fn=cmd_redis_acl)
    return parser


def main(argv=None) -> int:
    args, extra = (parser := build_parser()).parse_known_args(argv)
    if extra and getattr(args, "fn", None) is not cmd_market_sim:  # market-sim's options are the simulator's
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.rest = extra + getattr(args, "rest", [])
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):  # client chatter drowns the tool's own output
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from streams.topics import PartitionMismatch

    try:
        return args.fn(args, settings) or 0
    except KeyboardInterrupt:
        return 130
    except PartitionMismatch as exc:  # a worker, replay or catalogue refused to use topics of another layout
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
