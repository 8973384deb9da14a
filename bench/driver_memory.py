"""Peak memory of the ``rayfan run`` driver for a short and a long input: it must not grow with the file.

    python bench/driver_memory.py [--sizes 10000 200000] [--max-in-flight 256]

Each size runs ``rayfan run`` in a subprocess of its own (with its own local Ray) against
the fake endpoint at zero latency, which serves from a third process. The figure is the
driver process's own peak RSS (``ru_maxrss``): Ray's workers, raylet and GCS are other
processes, and so is the server. Prints each peak and the ratio of the largest to the
smallest (target: under 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-not-a-key"
TARGET_RATIO = 1.3
# The driver, then its own peak RSS (KiB on Linux) on the last line of stdout.
DRIVER = """
import resource, sys
from drivers.cli import main
code = main(sys.argv[1:])
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def write_input(path: Path, lines: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(lines):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"memory benchmark prompt {i}"}], "max_tokens": 16}
            out.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")


def run_driver(source: Path, base_url: str, max_in_flight: int) -> tuple[int, float]:
    """(peak RSS in KiB, wall seconds) of one ``rayfan run`` into a fresh output file."""
    out = source.with_suffix(".out.jsonl")
    command = [sys.executable, "-c", DRIVER, "run", str(source), "-o", str(out), "--base-url", base_url]
    command += ["--max-in-flight", str(max_in_flight)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": KEY})
    wall = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"rayfan run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    label, peak = done.stdout.strip().splitlines()[-1].split()
    assert label == "peak_rss_kib"
    return int(peak), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--max-in-flight", type=int, default=256)
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "drivers.mock", "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert server.stdout is not None
    base_url = server.stdout.readline().strip()
    peaks: dict[int, int] = {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            print(f"{'lines':>8}  {'peak RSS':>10}  {'wall':>7}  {'req/s':>7}")
            for size in args.sizes:
                source = Path(scratch) / f"in-{size}.jsonl"
                write_input(source, size)
                peaks[size], wall = run_driver(source, base_url, args.max_in_flight)
                print(f"{size:>8}  {peaks[size] / 1024:>7.1f} MiB  {wall:>6.1f}s  {size / wall:>7.0f}", flush=True)
    finally:
        server.terminate()
        server.wait()
    ratio = peaks[max(peaks)] / peaks[min(peaks)]
    verdict = "ok" if ratio < TARGET_RATIO else "OVER TARGET"
    print(f"ratio {max(peaks)} / {min(peaks)} lines: {ratio:.3f}x (target < {TARGET_RATIO}x: {verdict})")


if __name__ == "__main__":
    main()
