"""``rayfan run`` end to end: real Ray, the built-in mock endpoint, real files."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.cli import main
from drivers.mock import MockServer
from drivers.summary import ExitCode
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.usefixtures("ray_session")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prompts.jsonl"


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mock_run_of_the_examples_writes_one_record_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["run", str(EXAMPLES), "-o", str(out), "--mock", "--adapters", "2"]) == 0
    records = read_records(out)
    inputs = [line for line in EXAMPLES.read_text().splitlines() if line.strip()]
    assert len(records) == len(inputs) == len({r["custom_id"] for r in records})
    assert all(r["error"] is None and r["response"]["status_code"] == 200 for r in records)
    chat = next(r for r in records if r["custom_id"] == "req-001")
    assert chat["response"]["body"]["choices"][0]["message"]["content"].startswith("Mock reply:")
    assert chat["rayfan"]["cost_usd"] > 0 and chat["rayfan"]["usage"]["prompt_tokens"] > 0
    printed = capsys.readouterr().out
    assert f"requests: {len(inputs)} succeeded, 0 failed, 0 invalid lines, 0 not run" in printed and "cost: $" in printed

    assert main(["run", str(EXAMPLES), "-o", str(out), "--mock"]) == 0
    assert len(read_records(out)) == len(inputs), "a re-run resumes: nothing is sent or written twice"
    assert f"({len(inputs)} already done" in capsys.readouterr().out


def test_bad_lines_become_error_records_and_the_rest_runs(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"custom_id": "good", "prompt": "hello"}),
                "{not json",
                json.dumps({"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"}),
                json.dumps({"custom_id": "badurl", "url": "/v1/images", "body": {}}),
                json.dumps({"custom_id": "bad-field", "body": {"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}}),
                json.dumps({"custom_id": "good", "prompt": "again"}),
                json.dumps({"prompt": "no id given"}),
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    assert main(["run", str(source), "-o", str(out), "--mock"]) == 2
    by_line = {r["rayfan"]["line"]: r for r in read_records(out)}
    assert sorted(by_line) == [1, 2, 3, 4, 5, 6, 7]
    assert by_line[1]["error"] is None and by_line[7]["error"] is None
    expected = {2: "invalid_json", 3: "missing_body", 4: "unknown_url", 5: "invalid_request", 6: "duplicate_custom_id"}
    for line, code in expected.items():
        assert by_line[line]["error"]["code"] == code
        assert by_line[line]["error"]["message"].startswith(f"line {line}:")
    assert "max_tokens" in by_line[5]["error"]["message"]
    assert by_line[7]["custom_id"].startswith("line7-")


# --- against the session's fake server over HTTP


@pytest.fixture
def rayfan(server: MockServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., int]:
    """``rayfan run IN -o OUT --base-url <fake server> ARGS...`` in-process, with a key set."""
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)

    def run(*args: str, source: Path = tmp_path / "in.jsonl", out: Path = tmp_path / "out.jsonl") -> int:
        return main(["run", str(source), "-o", str(out), "--base-url", server.base_url, *args])

    return run


def write_lines(path: Path, lines: list[dict | str]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def prompts_sent(server: MockServer) -> list[str]:
    return [entry.body["messages"][-1]["content"] for entry in server.requests() if entry.body]


def test_all_three_endpoints_and_both_shapes_over_http(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    chat = {"messages": [{"role": "user", "content": "a chat question"}], "max_tokens": 6}
    write_lines(
        tmp_path / "in.jsonl",
        [
            {"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions", "body": chat},
            {
                "custom_id": "resp",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"input": "a responses question", "max_output_tokens": 6},
            },
            {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"input": ["embed", "these"]}},
            {"custom_id": "short", "prompt": "a shorthand question"},
        ],
    )
    assert rayfan("--strict", "--max-tokens", "4") == 0
    records = {r["custom_id"]: r for r in read_records(tmp_path / "out.jsonl")}
    assert {name: r["response"]["body"]["object"] for name, r in records.items()} == {
        "chat": "chat.completion",
        "resp": "response",
        "emb": "list",
        "short": "chat.completion",
    }
    for record in records.values():
        assert record["error"] is None and record["response"]["status_code"] == 200
        assert record["rayfan"]["usage"]["prompt_tokens"] > 0 and record["rayfan"]["cost_usd"] > 0
    assert records["short"]["rayfan"]["usage"]["completion_tokens"] == 4, "--max-tokens fills the shorthand"
    assert sorted(entry.path for entry in server.requests()) == [
        "/v1/chat/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses",
    ]  # fmt: skip
    captured = capsys.readouterr()
    assert "req/s" not in captured.err, "no progress bar when stderr is not a terminal"
    assert "gpt-4o-mini: $" in captured.out and "text-embedding-3-small: $" in captured.out


def test_strict_lists_every_problem_and_sends_nothing(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    write_lines(
        tmp_path / "in.jsonl",
        [
            {"custom_id": "a", "prompt": "fine"},
            "{oops",
            {"custom_id": "a", "prompt": "again"},
            {"custom_id": "b", "url": "/v1/nope", "body": {}},
        ],
    )
    assert rayfan("--strict") == 3
    err = capsys.readouterr().err
    assert "line 2: not JSON" in err and "line 3: custom_id 'a' appeared" in err and "line 4: url '/v1/nope'" in err
    assert "3 bad lines" in err
    assert server.requests() == [] and not (tmp_path / "out.jsonl").exists()


def test_failed_requests_are_sent_again_only_with_retry_failed(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = [f"good {i}" for i in range(4)] + ["bad [[mock status=400 times=1]]"]
    write_lines(tmp_path / "in.jsonl", [{"custom_id": f"p{i}", "prompt": p} for i, p in enumerate(prompts)])
    out = tmp_path / "out.jsonl"

    assert rayfan() == 2
    failed = [r for r in read_records(out) if r["error"]]
    assert [(r["custom_id"], r["error"]["code"]) for r in failed] == [("p4", "bad_request")]
    assert rayfan() == 2, "the failed record is kept, and still counts as failed"
    assert "--retry-failed sends them again" in capsys.readouterr().out
    assert len(server.requests()) == 5, "a plain resume sends nothing"

    assert rayfan("--retry-failed") == 0
    records = read_records(out)
    assert len(records) == 5 and all(r["error"] is None for r in records)
    assert sorted(prompts_sent(server)) == sorted(prompts + [prompts[-1]]), "only the failed one was sent again"


def test_sort_rewrites_the_output_in_input_order(tmp_path: Path, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]) -> None:
    slow_first = [{"prompt": f"slow {i} [[mock latency=0.4]]"} for i in range(3)]
    write_lines(tmp_path / "in.jsonl", [*slow_first, "not json", *({"prompt": f"fast {i}"} for i in range(6))])
    out = tmp_path / "out.jsonl"
    assert rayfan() == 2
    lines = [r["rayfan"]["line"] for r in read_records(out)]
    assert sorted(lines) == list(range(1, 11)) and lines != sorted(lines), "written in completion order"
    before = sorted(out.read_text().splitlines())

    assert rayfan("--sort", "--progress") == 2
    assert [r["rayfan"]["line"] for r in read_records(out)] == list(range(1, 11))
    assert sorted(out.read_text().splitlines()) == before, "the same records, only moved"
    assert "10/10" in capsys.readouterr().err, "--progress draws even when stderr is not a terminal"


def test_no_api_key_on_the_driver_stops_the_run_before_anything_is_sent(
    tmp_path: Path, server: MockServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key is read on the driver only: without one, one clear error before Ray starts, not a failed record per line."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(EXAMPLES), "-o", str(out), "--base-url", server.base_url])
    assert stopped.value.code == ExitCode.USAGE
    assert "no API key: set OPENAI_API_KEY" in capsys.readouterr().err
    assert not out.exists() and server.requests() == []


@pytest.mark.parametrize(
    "args",
    [
        ["run", "missing.jsonl", "-o", "out.jsonl"],
        ["run", str(EXAMPLES), "-o", "out.jsonl", "--budget-usd", "-1"],
        ["run", str(EXAMPLES), "-o", "out.jsonl", "--max-in-flight", "0"],
        ["run", str(EXAMPLES), "-o", "out.jsonl", "--prices", "no-such-prices.json"],
        ["run", str(EXAMPLES), "--no-such-flag"],
        ["run", str(EXAMPLES)],
    ],
)
def test_usage_errors_exit_1_before_anything_starts(
    args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == ExitCode.USAGE == 1
    assert "error:" in capsys.readouterr().err


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``args``, expect a usage error, and return its one error line."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if "error:" in line]
    return line


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--budget-usd", "inf"], "finite number above 0"),
        (["--budget-usd", "nan"], "finite number above 0"),
        (["--budget-usd", "-0.5"], "finite number above 0"),
        (["--budget-usd", "1e300"], "at most 1e+09"),
        (["--timeout", "inf"], "finite number above 0"),
        (["--max-response-mb", "Infinity"], "finite number above 0"),
        (["--price", "my-model=1e999,1"], "finite number"),
        (["--adapters", "0"], "finite number above 0"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(
    flags: list[str], reason: str, tmp_path: Path, server: MockServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    out = tmp_path / "out.jsonl"
    assert reason in refused(["run", str(EXAMPLES), "-o", str(out), "--base-url", server.base_url, *flags], capsys)
    assert not out.exists() and server.requests() == []


@pytest.mark.parametrize("name", ["same", "dot", "symlink", "hard link"])
def test_an_output_that_is_the_input_is_refused_and_the_input_kept(
    name: str, tmp_path: Path, server: MockServer, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(tmp_path / "in.jsonl", [{"custom_id": "a", "prompt": "keep me"}])
    before = source.read_bytes()
    out = {"same": source, "dot": tmp_path / "." / "sub" / ".." / "in.jsonl", "symlink": tmp_path / "link", "hard link": tmp_path / "hard"}[name]
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(source)
    (tmp_path / "hard").hardlink_to(source)
    with pytest.raises(SystemExit) as exited:
        rayfan(out=out)
    assert exited.value.code == ExitCode.USAGE
    assert "names the input file" in capsys.readouterr().err
    assert source.read_bytes() == before and server.requests() == []
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("output", ["/proc/rayfan-out.jsonl", "no-such-dir/out.jsonl", "a-directory", "/dev/null"])
def test_an_output_that_cannot_be_written_is_refused_before_ray_starts(
    output: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    (tmp_path / "a-directory").mkdir()
    assert f"-o {output}" in refused(["run", str(EXAMPLES), "-o", output, "--base-url", server.base_url], capsys)
    assert server.requests() == [] and sorted(path.name for path in tmp_path.iterdir()) == ["a-directory"]


def test_hostile_lines_become_records_and_the_rerun_resumes(tmp_path: Path, server: MockServer, rayfan: Callable[..., int]) -> None:
    """The lines that used to crash every run (or be sent repaired) are records; the output is ASCII."""
    source = tmp_path / "in.jsonl"
    lines = [
        b'\xef\xbb\xbf{"custom_id": "bom", "prompt": "first line, after a BOM"}',
        b"[" * 2000 + b"]" * 2000,
        b'{"custom_id": "latin1", "prompt": "caf\xe9"}',
        b'{"custom_id": "nan", "prompt": "x", "temperature": NaN}',
        '{"custom_id": "sep\u2028", "prompt": "one\u2028line"}'.encode(),
    ]
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    assert rayfan() == ExitCode.SOME_FAILED
    written = out.read_bytes()
    assert written.isascii() and len(written.decode().splitlines()) == 5
    by_line = {r["rayfan"]["line"]: r for r in read_records(out)}
    assert {line: (r["error"] or {}).get("code") for line, r in by_line.items()} == {
        1: None, 2: "too_deep", 3: "invalid_utf8", 4: "invalid_json", 5: None,
    }  # fmt: skip
    assert by_line[5]["custom_id"] == "sep\u2028"
    assert sorted(prompts_sent(server)) == ["first line, after a BOM", "one\u2028line"], "nothing repaired is sent"

    assert rayfan() == ExitCode.SOME_FAILED, "the re-run does not crash at the same spot: it resumes"
    assert out.read_bytes() == written and len(server.requests()) == 2


def test_verbose_says_where_it_sends_what_ray_and_adapters_it_uses_and_what_they_did(
    tmp_path: Path, server: MockServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="drivers")  # restored after the test; -v raises it
    caplog.handler.setLevel(logging.NOTSET)  # the capture takes whatever the loggers let through
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxyuser:proxypass@proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the fake endpoint is reached directly all the same
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"verbose {i}"}) + "\n" for i in range(4)))
    assert main(["run", str(source), "-o", str(out), "--base-url", server.base_url, "--rpm", "6000", "--adapters", "2"]) == 0
    assert not [r for r in caplog.records if r.levelno == logging.INFO], "without -v, no detail"

    out.unlink()
    assert main(["run", str(source), "-o", str(out), "--base-url", server.base_url, "--rpm", "6000", "--adapters", "2", "-v"]) == 0
    details = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    said = "\n".join(details)
    assert f"endpoint: {server.base_url}; proxy: none (direct); TLS trusts the SDK's CA store" in said
    assert "Ray: the one this process has joined already, " in said and "rate limits: scope rayfan-limits-" in said and "given: RPM 6,000" in said
    assert said.count(" on node ") == 2 and "adapters: 2 to " in said
    assert "adapter 0: " in said and "adapter 1: " in said and "limits given 6,000 RPM" in said
    assert TEST_KEY not in caplog.text and "proxypass" not in caplog.text
