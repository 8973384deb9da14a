"""``rayfan run INPUT.jsonl -o OUTPUT.jsonl``: the batch driver's command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from actors.errors import ConfigError
from actors.models import DEFAULT_MODEL
from actors.pricing import PriceTable
from drivers.batch import BatchOptions, run_batch
from drivers.estimate import estimate_file
from drivers.inputs import InputProblem, RequestDefaults, count_requests, read_requests
from drivers.progress import ProgressBar
from drivers.summary import ExitCode

T = TypeVar("T", int, float)

MOCK_API_KEY = "sk-mock-not-a-real-key"
EXIT_CODES = "exit codes:\n" + "\n".join(f"  {code.value:<4}{code.meaning}" for code in ExitCode)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits with ExitCode.USAGE: 2 already means that some requests failed."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(text: str) -> T:
        value = kind(text)
        if not value > 0:  # rejects nan too
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rayfan", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="send every request of a JSONL batch and write one record per request",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("input", type=Path, help='JSONL: Batch API lines or {"prompt": ...}')
    run.add_argument("-o", "--output", type=Path, required=True, help="JSONL output; re-running resumes it")
    run.add_argument("--mock", action="store_true", help="use a built-in fake OpenAI endpoint (no key, no network)")
    run.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL or OpenAI)")
    run.add_argument("--model", default=None, help=f"model for lines that name none (default {DEFAULT_MODEL})")
    run.add_argument("--max-tokens", type=_positive(int), default=None, help="max_tokens for prompt-shorthand lines")
    run.add_argument("--adapters", type=_positive(int), default=2, help="adapter actors to spread the requests over")
    run.add_argument("--max-in-flight", type=_positive(int), default=256, help="requests open at the endpoint at once, shared by the adapters")
    run.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    run.add_argument("--retry-failed", action="store_true", help="on resume, send failed requests again")
    run.add_argument(
        "--budget-usd",
        type=_positive(float),
        default=None,
        help="never spend more than this on the output file, earlier runs included: each request reserves"
        " its worst case before it is sent; what does not fit is recorded as not run",
    )
    run.add_argument("--dry-run", action="store_true", help="print the estimated cost range of the whole file; send nothing")
    run.add_argument(
        "--strict", action="store_true", help="validate the whole file first; if a line is bad, list every problem and send nothing"
    )
    run.add_argument("--sort", action="store_true", help="at the end, rewrite the output in input order")
    run.add_argument(
        "--prices",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON price table (the shape of actors/prices.json) whose models override or extend the shipped one",
    )
    run.add_argument(
        "--rpm",
        type=_positive(int),
        default=None,
        help="requests per minute the key may send to this model (all adapters together; default: learned from the server)",
    )
    run.add_argument("--tpm", type=_positive(int), default=None, help="tokens per minute, likewise")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: only when stderr is a terminal)",
    )
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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.input.is_file():
        parser.error(f"input file {args.input} does not exist")
    defaults = RequestDefaults(model=args.model, max_tokens=args.max_tokens)
    try:
        prices = PriceTable.with_overrides(args.prices)
    except ConfigError as err:
        parser.error(str(err))
    if args.strict and (problems := _list_problems(args.input, defaults)):
        print(f"{problems} bad lines in {args.input}; nothing was sent", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    if args.dry_run:
        print(estimate_file(args.input, defaults, prices).render())
        return ExitCode.OK
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    progress = ProgressBar(count_requests(args.input)) if show_progress else None
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
            budget_usd=args.budget_usd,
            sort=args.sort,
            defaults=defaults,
            rpm=args.rpm,
            tpm=args.tpm,
            prices=prices,
        )
        try:
            summary = run_batch(options, progress=progress)
        except ConfigError as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return ExitCode.USAGE
    if progress is not None:
        progress.close(summary)
    print(summary.render())
    return summary.exit_code


def _list_problems(path: Path, defaults: RequestDefaults) -> int:
    """``--strict``: print every bad line to stderr, as it is found; return how many."""
    problems = 0
    for item in read_requests(path, defaults):
        if isinstance(item, InputProblem):
            problems += 1
            print(item.message, file=sys.stderr)
    return problems


if __name__ == "__main__":
    sys.exit(main())
