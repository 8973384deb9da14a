"""One global rate limit however many Ray nodes the adapters are spread over.

    python bench/scaling.py [--nodes 1,2,4] [--adapters 4,8,32] [--windows 60,1]
                            [--rpm 3000] [--seconds 30] [--repeat 1]

For each node count, runs ``bench/rate_limit.py --nodes N`` (a ``ray.cluster_utils.Cluster``
of N raylets on this machine, one CPU each; the limits learned from the server's headers,
no coordinator-less row) in a process of its own, and prints one table: the achieved rate
as a fraction of the limit and the 429s as a fraction of the answers, by nodes, adapters and
the server's enforcement window (60: per minute; 1: per second). Targets, every row:
>= 0.98 of the limit, <= 0.5 % 429s, 0 failed. ``bench/rate_limit.py`` says how each figure
is measured. Several raylets share this machine's cores, so many nodes and adapters slow
the box itself: a row the adapters could not push to the limit shows "-" (never at the
limit, nothing to measure), not a violation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RATE_LIMIT = Path(__file__).resolve().parent / "rate_limit.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,2,4", help="Ray node counts, comma-separated")
    parser.add_argument("--adapters", default="4,8,32", help="adapter counts, comma-separated")
    parser.add_argument("--windows", default="60,1", help="the server's enforcement windows in seconds, comma-separated")
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=30, help="seconds at the limit after the first window's burst")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; medians are printed")
    args = parser.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory(prefix="rayfan-scaling-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        for nodes in args.nodes.split(","):
            command = [sys.executable, str(RATE_LIMIT), "--nodes", nodes, "--adapters", args.adapters, "--windows", args.windows]
            command += ["--limits", "learned", "--no-alone", "--rpm", str(args.rpm), "--seconds", str(args.seconds)]
            command += ["--repeat", str(args.repeat), "--json-rows", str(rows_file)]
            print(f"{nodes} node(s): {' '.join(command[1:])}", flush=True)
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    print(f"\n{args.rpm:,} RPM limit learned from the server's headers, a window's worth + {args.seconds} s at the limit per run,"
          f" medians of {args.repeat}")
    print(f"{'server window':>13}{'nodes':>7}{'adapters':>9}{'of limit':>10}{'429s':>8}{'failed':>8}{'calls/req':>11}{'wall s':>8}")
    for row in sorted(rows, key=lambda r: (-r["window_s"], r["nodes"], r["adapters"])):
        window = "per minute" if row["window_s"] == 60 else f"per {row['window_s']:g} s"
        achieved = "-" if math.isnan(row["achieved"]) else f"{row['achieved']:.3f}"
        print(
            f"{window:>13}{row['nodes']:>7}{row['adapters']:>9}{achieved:>10}{row['rejected']:>8.2%}{row['failed']:>8}"
            f"{row['calls_per_request']:>11.3f}{row['wall_s']:>8.1f}"
        )
    held = all((math.isnan(r["achieved"]) or r["achieved"] >= 0.98) and r["rejected"] <= 0.005 and r["failed"] == 0 for r in rows)
    print(f"targets (>= 0.98 of the limit, <= 0.5% 429s, 0 failed): {'held on every row' if held else 'MISSED on some row'}")


if __name__ == "__main__":
    main()
