"""``rayfan run INPUT.jsonl -o OUTPUT.jsonl``: the batch driver's command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from actors.models import DEFAULT_MODEL
from drivers.batch import BatchOptions, run_batch
from drivers.inputs import RequestDefaults

MOCK_API_KEY = "sk-mock-not-a-real-key"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayfan", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="send every request of a JSONL batch and write one record per request")
    run.add_argument("input", type=Path, help="JSONL: Batch API lines or {\"prompt\": ...}")
    run.add_argument("-o", "--output", type=Path, required=True, help="JSONL output; re-running resumes it")
    run.add_argument("--mock", action="store_true", help="use a built-in fake OpenAI endpoint (no key, no network)")
    run.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL or OpenAI)")
    run.add_argument("--model", default=None, help=f"model for lines that name none (default {DEFAULT_MODEL})")
    run.add_argument("--max-tokens", type=int, default=None, help="max_tokens for prompt-shorthand lines")
    run.add_argument("--adapters", type=int, default=2, help="adapter actors to spread the requests over")
    run.add_argument("--max-in-flight", type=int, default=256, help="requests outstanding at once")
    run.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    run.add_argument("--retry-failed", action="store_true", help="on resume, send failed requests again")
    run.add_argument("-v", "--verbose", action="store_true")
    return parser


@contextlib.contextmanager
def _endpoint(args: argparse.Namespace) -> Iterator[tuple[str | None, str | None]]:
    """The base URL and key to use: a fake server for ``--mock``, else what the user gave."""
    if not args.mock:
        yield args.base_url, None
        return
    from drivers.mock_server import MockServer

    with MockServer() as server:
        yield server.base_url, MOCK_API_KEY


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with _endpoint(args) as (base_url, api_key):
        options = BatchOptions(
            input=args.input,
            output=args.output,
            base_url=base_url,
            api_key=api_key,
            model=args.model or DEFAULT_MODEL,
            adapters=args.adapters,
            max_in_flight=args.max_in_flight,
            address=args.address,
            retry_failed=args.retry_failed,
            defaults=RequestDefaults(model=args.model, max_tokens=args.max_tokens),
        )
        summary = run_batch(options)
    print(summary.render())
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
