"""``rayfan run INPUT.jsonl -o OUTPUT.jsonl``: the batch driver's command line; ``rayfan report
OUTPUT.jsonl``: what an output file holds; ``rayfan status``: what runs on a cluster."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import ray
from pydantic import SecretStr

from actors.accounting.pricing import PriceTable
from actors.adapter.settings import EndpointSettings
from actors.errors import ConfigError
from actors.models import DEFAULT_MODEL
from drivers.batch import BatchOptions, run_batch
from drivers.batchapi.journal import open_batches, status_lines
from drivers.batchapi.options import DEFAULT_POLL_S, BatchApiOptions, BatchLimits
from drivers.endpoint import EndpointFlags, parse_headers, resolve_endpoint
from drivers.estimate import estimate_file
from drivers.inputs import InputProblem, RequestDefaults, count_requests, read_requests
from drivers.outputs import check_output, peek_resume_state
from drivers.progress import ProgressBar
from drivers.report import INSTALL_PLOT, run_report
from drivers.status import EXIT_CODES as STATUS_EXIT_CODES
from drivers.status import run_status
from drivers.summary import ExitCode, RunSummary

T = TypeVar("T", int, float)

BROKEN_PIPE_EXIT = 141
"""What a shell reports for a command whose reader went away (128 + SIGPIPE), as ``yes | head`` does."""
MOCK_API_KEY = "sk-mock-not-a-real-key"
MOCK_POLL_S = 0.5
"""The built-in mock answers a batch at once: looking every minute would only make a demo wait."""
MAX_BUDGET_USD = 1e9
"""Far above any batch; --budget-usd 1e300 would overflow the budget's count of picodollars."""
EXIT_CODES = "exit codes:\n" + "\n".join(f"  {code.value:<4}{code.meaning}" for code in ExitCode)
REPORT_EXIT_CODES = (
    f"exit codes:\n  {ExitCode.OK.value:<4}the report was printed (and the chart written), whatever the records say\n"
    f"  {ExitCode.USAGE.value:<4}bad flags, a file that cannot be read, or a chart that cannot be drawn (one line on stderr)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits with ExitCode.USAGE: 2 already means that some requests failed."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


def _positive(kind: Callable[[str], T], *, at_most: float = math.inf) -> Callable[[str], T]:
    """A number above 0 and finite: inf and nan would pass pydantic's ``gt=0`` and fail deep
    inside the run (a budget counted in picodollars, a response cap in bytes)."""

    def parse(text: str) -> T:
        value = kind(text)
        if not 0 < value < math.inf:  # rejects nan too
            raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
        if value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most:g}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _at_least_zero(text: str) -> float:
    """A CPU count: 0 or more, finite."""
    value = float(text)
    if not 0 <= value < math.inf:  # rejects nan too
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rayfan", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rayfan {_installed_version()}")
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
    endpoint = run.add_argument_group("endpoint (each flag wins over the SDK's environment variable; all read here, on the driver)")
    endpoint.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL, else OpenAI's)")
    endpoint.add_argument("--organization", help="OpenAI-Organization header (default: OPENAI_ORG_ID)")
    endpoint.add_argument("--project", help="OpenAI-Project header (default: OPENAI_PROJECT_ID)")
    endpoint.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra header on every request, repeatable (added to OPENAI_CUSTOM_HEADERS; values are kept secret)",
    )
    endpoint.add_argument("--timeout", type=_positive(float), default=None, metavar="S", help="seconds per attempt (default 600, as the SDK)")
    endpoint.add_argument("--azure-endpoint", help="Azure OpenAI, https://NAME.openai.azure.com (default: AZURE_OPENAI_ENDPOINT)")
    endpoint.add_argument("--azure-deployment", help="one Azure deployment for every request (default: each request's model names it)")
    endpoint.add_argument("--api-version", help="Azure OpenAI api-version (default: OPENAI_API_VERSION)")
    endpoint.add_argument(
        "--max-response-mb", type=_positive(float), default=None, metavar="MB", help="largest answer read, decompressed (default 32)"
    )
    endpoint.add_argument("--ca-file", type=Path, default=None, help="PEM CA certificates to trust (default: SSL_CERT_FILE, else the SDK's store)")
    run.add_argument("--model", default=None, help=f"model for lines that name none (default {DEFAULT_MODEL})")
    run.add_argument("--max-tokens", type=_positive(int), default=None, help="max_tokens for prompt-shorthand lines")
    run.add_argument("--adapters", type=_positive(int), default=2, help="adapter actors to spread the requests over")
    run.add_argument(
        "--adapter-cpus",
        type=_at_least_zero,
        default=0.0,
        metavar="N",
        help="CPUs each adapter holds (default 0: none once placed, and a head with 0 CPUs takes none); on an autoscaling"
        " cluster, 1 makes the autoscaler add workers until every adapter has its CPU",
    )
    run.add_argument(
        "--spares",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on a Ray that outlives the run, take spare adapters a run before left, and leave as many for the next"
        " (README: Spare adapters)",
    )
    run.add_argument("--max-in-flight", type=_positive(int), default=256, help="requests open at the endpoint at once, shared by the adapters")
    run.add_argument(
        "--address",
        default=None,
        help="Ray cluster address, or ray://HOST:10001 (default: RAY_ADDRESS, else a Ray started on this machine"
        " with `ray start --head` if it answers, else a new local one for this run)",
    )
    run.add_argument("--retry-failed", action="store_true", help="on resume, send failed requests again")
    run.add_argument(
        "--budget-usd",
        type=_positive(float, at_most=MAX_BUDGET_USD),
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
        "--price",
        action="append",
        default=[],
        metavar="MODEL=IN,OUT[,CACHED]",
        help="USD per 1M input, output (and cached input) tokens for a model the table lacks (a vLLM model id), repeatable",
    )
    run.add_argument(
        "--price-as",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="price NAME (an Azure deployment) as the priced MODEL, repeatable",
    )
    run.add_argument(
        "--rpm",
        type=_positive(int),
        default=None,
        help="requests per minute the key may send to this model (all adapters together; default: learned from the server)",
    )
    run.add_argument("--tpm", type=_positive(int), default=None, help="tokens per minute, likewise")
    run.add_argument(
        "--deadline",
        type=_positive(float),
        default=None,
        metavar="S",
        help="stop sending S seconds after sending began, as on Ctrl-C (a request answered 429 waits"
        " and goes again without end otherwise); the same command resumes",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: only when stderr is a terminal)",
    )
    batch_api = run.add_argument_group("Batch API (half price, answers within 24 hours; README: 'Batch API mode')")
    batch_api.add_argument(
        "--batch-api",
        action="store_true",
        help="send the requests as Batch API files (/v1/files, /v1/batches) at the batch price; the same output;"
        " a re-run collects the batches already submitted and submits nothing twice",
    )
    batch_api.add_argument(
        "--batch-unfinished",
        choices=("resubmit", "sync"),
        default=None,
        help="requests a batch left unfinished (it expired, failed or was cancelled): in a new batch, 3 batches at most"
        " (resubmit, the default), or through the synchronous API once every batch has ended (sync)",
    )
    batch_api.add_argument(
        "--batch-poll",
        type=_positive(float),
        default=None,
        metavar="S",
        help=f"longest wait between two looks at a batch (default {DEFAULT_POLL_S:g}; {MOCK_POLL_S:g} with --mock)",
    )
    batch_api.add_argument(
        "--batch-max-requests", type=_positive(int), default=None, metavar="N", help="requests per batch file (default 50000, OpenAI's limit)"
    )
    batch_api.add_argument(
        "--batch-max-mb", type=_positive(float), default=None, metavar="MB", help="MB (10^6 bytes) per batch file (default 200, OpenAI's limit)"
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print, on stderr, the endpoint and its TLS and proxy settings, the Ray joined, where each adapter runs,"
        " the rate-limit scope, each adapter lost or replaced, and each adapter's counters and the limits learned at the end",
    )
    report = commands.add_parser(
        "report",
        help="summarize an output file, finished or not, without Ray: counts, tokens, cost, latency, errors",
        epilog=REPORT_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("output", type=Path, help="a rayfan output JSONL, read only (a torn last line is reported, not repaired)")
    report.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help=f"also draw successful responses per minute (by the server's created time) as a PNG; needs {INSTALL_PLOT}",
    )
    report.add_argument("--rpm", type=_positive(int), default=None, help="a requests-per-minute limit to draw on the --plot chart")
    status = commands.add_parser(
        "status",
        help="every rate-limit scope and every run's adapters on a running Ray cluster, on one screen",
        epilog=STATUS_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--address", default=None, help="the cluster, as for run (default: RAY_ADDRESS, else a Ray started on this machine)")
    status.add_argument(
        "--batches",
        type=Path,
        default=None,
        metavar="OUT.jsonl",
        help="instead, the batches of a --batch-api run's output and their request counts (from its journal; no cluster needed)",
    )
    status.add_argument(
        "--watch", type=_positive(float), nargs="?", const=2.0, default=None, metavar="S", help="redraw every S seconds (default 2) until Ctrl-C"
    )
    return parser


def _installed_version() -> str:
    try:
        return importlib.metadata.version("rayfan")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: no package metadata; pip install -e .)"


def _endpoint_flags(args: argparse.Namespace) -> EndpointFlags:
    return EndpointFlags(
        base_url=args.base_url,
        organization=args.organization,
        project=args.project,
        headers=tuple(args.header),
        timeout_s=args.timeout,
        azure_endpoint=args.azure_endpoint,
        azure_deployment=args.azure_deployment,
        api_version=args.api_version,
        ca_file=args.ca_file,
        max_response_mb=args.max_response_mb,
    )


@contextlib.contextmanager
def _endpoint(args: argparse.Namespace, resolved: EndpointSettings | None) -> Iterator[EndpointSettings]:
    """The endpoint to use: what the flags and the environment said, or for ``--mock`` a
    fake server on this machine over plain HTTP (no proxy, no key, no CA store: one read
    from SSL_CERT_FILE is a few hundred KB that every adapter would carry for nothing)."""
    if resolved is not None:
        yield resolved
        return
    from drivers.mock import MockServer

    flags = _endpoint_flags(args)
    with MockServer() as server:
        mock_flags = flags.model_copy(update={"base_url": server.base_url, "api_key": SecretStr(MOCK_API_KEY), "azure_endpoint": None})
        yield resolve_endpoint(mock_flags).model_copy(update={"proxy_url": None, "ca_pem": None})


def command() -> NoReturn:
    """The ``rayfan`` command: ``main``, then out at once. The interpreter's teardown of what
    a run imports took 0.45 s of a 3 s run (``bench/startup.py``); nothing is left for it to
    do: ``main`` closed the output files, and Ray is stopped and the streams flushed here.
    An exception, or a ``SystemExit`` (``--help``, a usage error), leaves the usual way."""
    code = main()
    if ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader stopped early (`rayfan report out.jsonl | head`): no traceback for it, and
        # stdout goes nowhere from here, so the interpreter's last flush fails quietly too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "status" and args.batches is not None:
        print("\n".join(status_lines(args.batches)))
        return ExitCode.OK
    if args.command == "status":
        return run_status(args.address, watch_s=args.watch)
    if args.command == "report":
        if args.rpm is not None and args.plot is None:
            parser.error("report --rpm is drawn on the chart: use it with --plot FILE.png")
        return run_report(args.output, plot=args.plot, rpm=args.rpm)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:  # rayfan's own detail; Ray's loggers keep their level
        for name in ("drivers", "actors"):
            logging.getLogger(name).setLevel(logging.INFO)
    if not args.input.is_file():
        parser.error(f"input file {args.input} does not exist")
    defaults = RequestDefaults(model=args.model, max_tokens=args.max_tokens)
    try:
        _check_readable(args.input)
        check_output(args.output, source=args.input)
        prices = PriceTable.with_overrides(args.prices).with_command_line(args.price, args.price_as)
        batch_api = _batch_api_options(args)
        if batch_api is None and (batches := open_batches(args.output)):
            raise ConfigError(
                f"{args.output} has {batches} Batch API batches not yet collected: run with --batch-api to collect them"
                " (without it, their requests would be sent, and paid, again)"
            )
    except ConfigError as err:
        parser.error(str(err))
    if args.strict and (problems := _list_problems(args.input, defaults)):
        print(f"{problems} bad lines in {args.input}; nothing was sent", file=sys.stderr)
        return ExitCode.INVALID_INPUT
    if args.dry_run:
        done = peek_resume_state(args.output, retry_failed=args.retry_failed)
        print(estimate_file(args.input, defaults, prices if batch_api is None else prices.for_batch(), done).render())
        return ExitCode.OK
    try:
        flags = _endpoint_flags(args)
        resolved = None if args.mock else resolve_endpoint(flags)  # before Ray starts
        if args.mock:
            parse_headers(flags.headers)  # the mock's settings are resolved once it runs: check what can fail now
    except ConfigError as err:
        parser.error(str(err))
    show_progress = sys.stderr.isatty() if args.progress is None else args.progress
    progress = ProgressBar(count_requests(args.input)) if show_progress else None
    with _endpoint(args, resolved) as endpoint:
        options = BatchOptions(
            input=args.input,
            output=args.output,
            endpoint=endpoint,
            model=args.model or DEFAULT_MODEL,
            adapters=args.adapters,
            adapter_cpus=args.adapter_cpus,
            spares=args.spares,
            max_in_flight=args.max_in_flight,
            address=args.address,
            retry_failed=args.retry_failed,
            budget_usd=args.budget_usd,
            sort=args.sort,
            defaults=defaults,
            rpm=args.rpm,
            tpm=args.tpm,
            prices=prices,
            deadline_s=args.deadline,
        )
        try:
            summary = run_batch(options, progress=progress) if batch_api is None else _run_batch_api(options, batch_api, progress)
        except ConfigError as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return ExitCode.USAGE
    if progress is not None:
        progress.close(summary)
    print(summary.render())
    return summary.exit_code


def _run_batch_api(options: BatchOptions, batch_api: BatchApiOptions, progress: ProgressBar | None) -> RunSummary:
    """Imported here: the Batch API's parts import the SDK, which a synchronous run's driver
    never needs (it cost the start of every run 0.4 s)."""
    from drivers.batchapi.run import run_batch_api

    return run_batch_api(options, batch_api, progress=progress)


def _batch_api_options(args: argparse.Namespace) -> BatchApiOptions | None:
    """``--batch-api``'s settings, or None for a synchronous run (which takes none of them)."""
    flags = {"--batch-unfinished": args.batch_unfinished, "--batch-poll": args.batch_poll}
    flags |= {"--batch-max-requests": args.batch_max_requests, "--batch-max-mb": args.batch_max_mb}
    given = [flag for flag, value in flags.items() if value is not None]
    if not args.batch_api:
        if given:
            raise ConfigError(f"{', '.join(given)} need --batch-api")
        return None
    limits = BatchLimits()
    if args.batch_max_requests is not None:
        limits = limits.model_copy(update={"max_requests": args.batch_max_requests})
    if args.batch_max_mb is not None:
        limits = limits.model_copy(update={"max_bytes": max(int(args.batch_max_mb * 1e6), 1)})
    poll_s = args.batch_poll or (MOCK_POLL_S if args.mock else DEFAULT_POLL_S)
    return BatchApiOptions(limits=limits, poll_s=poll_s, unfinished=args.batch_unfinished or "resubmit")


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ConfigError(f"input file {path}: cannot read it ({err.strerror or err})") from None


def _list_problems(path: Path, defaults: RequestDefaults) -> int:
    """``--strict``: print every bad line to stderr, as it is found; return how many."""
    problems = 0
    for item in read_requests(path, defaults):
        if isinstance(item, InputProblem):
            problems += 1
            print(item.message, file=sys.stderr)
    return problems


if __name__ == "__main__":
    command()
