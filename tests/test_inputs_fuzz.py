"""The reader under random input: whatever the bytes, every line becomes exactly one item.

Lines are random bytes, JSON of any shape (NaN, huge numbers, lone surrogates, U+2028),
near-valid requests with wrong types, lines nested thousands deep and lines over the length
limit, joined by \\n or \\r\\n, with or without a BOM. Profiles are deterministic and keep no
example database, so CI sees the same examples on every run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from actors.accounting.pricing import PriceTable
from actors.adapter.endpoints import request_body
from drivers.estimate import estimate_request
from drivers.inputs import InputProblem, InputRequest, count_requests, read_requests
from drivers.outputs import OutputWriter, problem_record

MAX_LINE_BYTES = 300
"""Small, so that "huge" lines cost nothing to make."""
FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

EDGE_TEXT = ["", "\u2028", "\u2029", "\ufeff", "\x00", "\r", "\x85", "\ud800", "\udfff", "\U0001f600", "é", "\\", '"']
FIELDS = ["custom_id", "prompt", "url", "method", "body", "model", "messages", "role", "content", "text", "type", "input", "max_tokens"]
FIELDS += ["max_output_tokens", "temperature", "stream", "kind"]


def scalars() -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(EDGE_TEXT),
        st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "POST", "user", "gpt-4o-mini"]),
    )


def json_values() -> st.SearchStrategy[object]:
    """JSON-ish values whose keys are mostly the fields a request has, so wrong types reach deep."""
    keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=4))
    return st.recursive(scalars(), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4), max_leaves=12)


def request_lines() -> st.SearchStrategy[bytes]:
    """Batch lines of the right outline with any values inside: messages, content parts, input items."""
    parts = st.lists(st.dictionaries(st.sampled_from(["type", "text", "content", "role"]), json_values(), max_size=3), max_size=2)
    items = st.dictionaries(st.sampled_from(["role", "content", "text", "name"]), json_values() | parts, max_size=3)
    chat = st.fixed_dictionaries({"messages": st.lists(items, min_size=1, max_size=2)}, optional={"max_tokens": scalars(), "model": scalars()})
    responses = st.fixed_dictionaries({"input": scalars() | st.lists(items, max_size=2)}, optional={"max_output_tokens": scalars()})
    embeddings = st.fixed_dictionaries({"input": scalars() | st.lists(scalars(), max_size=3)})
    shapes = st.one_of(
        chat.map(lambda body: {"url": "/v1/chat/completions", "body": body}),
        responses.map(lambda body: {"url": "/v1/responses", "body": body}),
        embeddings.map(lambda body: {"url": "/v1/embeddings", "body": body}),
    )
    return st.builds(json_line, shapes, st.booleans())


def deep_line(depth: int, bracket: bytes) -> bytes:
    """Lists in lists, or objects in objects, ``depth`` deep: past Python's recursion limit at 1,000."""
    opening, closing = (b"[", b"]") if bracket == b"[" else (b'{"a":', b"}")
    return opening * depth + b"1" + closing * depth


def json_line(value: object, ascii_only: bool) -> bytes:
    """Without ``ascii_only`` a lone surrogate is written raw, as bytes that are not UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


lines = st.one_of(
    st.binary(max_size=40),
    st.builds(json_line, json_values(), st.booleans()),
    st.builds(lambda value, ascii_only: json_line({"prompt": value}, ascii_only), json_values(), st.booleans()),
    st.builds(lambda body, ascii_only: json_line({"url": "/v1/chat/completions", "body": body}, ascii_only), json_values(), st.booleans()),
    request_lines(),
    st.builds(deep_line, st.integers(min_value=1, max_value=5000), st.sampled_from([b"[", b"{"])),
    st.integers(min_value=MAX_LINE_BYTES - 2, max_value=3 * MAX_LINE_BYTES).map(lambda size: b'{"prompt":"' + b"x" * size + b'"}'),
    st.sampled_from([b"", b"   ", b"\r", b"\xef\xbb\xbf", b'{"prompt": NaN}', b'{"prompt": "a\xe2\x80\xa8b"}', b'{"prompt": "\xff"}']),
)


@st.composite
def files(draw: st.DrawFn) -> bytes:
    separator = draw(st.sampled_from([b"\n", b"\r\n"]))
    content = separator.join(draw(st.lists(lines, max_size=8)))
    if draw(st.booleans()):
        content += b"\n"
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + content


def expected_lines(content: bytes) -> list[int]:
    """An independent oracle: numbered as ``wc -l`` does, blank lines skipped, over-long ones kept."""
    segments = content.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    return [number for number, segment in enumerate(segments, start=1) if segment.strip() or len(segment) > MAX_LINE_BYTES]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(content=files())
def test_every_line_becomes_exactly_one_item_and_nothing_raises(scratch: Path, content: bytes) -> None:
    source = scratch / "in.jsonl"
    source.write_bytes(content)
    items = list(read_requests(source, max_line_bytes=MAX_LINE_BYTES))
    assert [item.line for item in items] == expected_lines(content)
    assert count_requests(source, max_line_bytes=MAX_LINE_BYTES) == len(items), "the progress bar's total matches"
    for item in items:
        assert isinstance(item, (InputRequest, InputProblem))
        if isinstance(item, InputProblem):
            assert item.message.startswith(f"line {item.line}:")


@FUZZ
@given(content=files())
@example(content=b'{"url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": [{"text": null}]}]}}')
@example(content=b'{"url": "/v1/responses", "body": {"input": [{"content": [{"type": "input_text", "text": 5}]}]}}')
def test_what_is_read_can_be_priced_sent_and_recorded(scratch: Path, content: bytes) -> None:
    """The steps after reading never meet a value they cannot handle: the budget's estimate,
    the JSON body the adapter posts, and the output record (one ASCII line each)."""
    source, out = scratch / "in.jsonl", scratch / "out.jsonl"
    source.write_bytes(content)
    out.unlink(missing_ok=True)
    prices = PriceTable.default()
    items = list(read_requests(source, max_line_bytes=MAX_LINE_BYTES))
    with OutputWriter(out) as writer:
        for item in items:
            if isinstance(item, InputRequest):
                estimate_request(item.task, prices)
                json.dumps(request_body(item.task), allow_nan=False).encode("utf-8")
                item = InputProblem(item.line, item.custom_id, "stand_in", f"line {item.line}: sent")
            writer.write(problem_record(item))
    written = out.read_bytes()
    assert written.isascii() and len(written.decode().splitlines()) == len(items)
