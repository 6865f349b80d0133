"""Run the fault suite and write ``docs/results/faults.json``.

    python -m tests.faults.run                       # every scenario, 100,000 events each
    python -m tests.faults.run --events 20000 --scenarios worker_kill,broker_kill --out /tmp/f.json

Starts the Redis Cluster and the 3-broker Kafka from deploy/ when they are down (and leaves them
running). Exit status 1 when any scenario lost an event, applied one twice or did not resume.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tests.benchmarks.common import RESULTS, header
from tests.faults.harness import SCENARIOS, passed, run_scenario


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events replayed per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated; default: all")
    parser.add_argument("--outage-s", type=float, default=10.0, help="how long a stopped service stays down")
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="worker logs (default: a temporary folder)")
    args = parser.parse_args(argv)
    names = [s for s in args.scenarios.split(",") if s]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="attnflow-faults-"))
    report = {**header(), "events_per_scenario": args.events, "outage_s": args.outage_s, "scenarios": []}
    for name in names:
        record = run_scenario(name, args.events, outage_s=args.outage_s, log_dir=log_dir,
                              say=lambda line: print(line, flush=True))
        record["passed"] = passed(record)
        report["scenarios"].append(record)
        print(json.dumps({k: record[k] for k in ("scenario", "events", "events_lost", "events_applied_twice",
                                                  "feedback_missing", "recovery_s", "passed")}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each: a cut-off run keeps its part
    print(f"wrote {args.out}; worker logs in {log_dir}")
    return 0 if all(r["passed"] for r in report["scenarios"]) else 1


if __name__ == "__main__":
    sys.exit(main())
