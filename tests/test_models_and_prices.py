"""Results that raise on demand, and price tables a user overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors import ConfigError, PriceTable, RequestFailed, TaskError, TaskResult, TaskStatus, Usage


def test_raise_for_error_raises_the_tasks_error_and_passes_successes() -> None:
    ok = TaskResult(custom_id="a", status=TaskStatus.COMPLETED, model="m", text="hi")
    assert ok.raise_for_error() is ok
    failed = TaskResult(
        custom_id="b", status=TaskStatus.FAILED, model="m", error=TaskError(code="bad_request", message="no", status_code=400)
    )
    with pytest.raises(RequestFailed, match="b: bad_request: no") as raised:
        failed.raise_for_error()
    assert raised.value.error.status_code == 400


def test_a_user_price_file_overrides_and_extends_the_shipped_table(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "as_of": "2026-11-01",
                "models": {
                    "gpt-4o-mini": {"input": 1.0, "cached_input": 0.5, "output": 2.0},
                    "my-llama": {"input": 0.0, "cached_input": 0.0, "output": 0.0},
                },
            }
        )
    )
    table = PriceTable.with_overrides(path)
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_tokens=500_000)
    assert table.cost("gpt-4o-mini", usage) == pytest.approx(0.5 + 0.25 + 2.0)
    assert table.cost("my-llama", usage) == 0.0
    assert table.lookup("gpt-4o") == PriceTable.default().lookup("gpt-4o"), "models it does not name are kept"
    assert table.as_of == "2026-11-01"


@pytest.mark.parametrize("text", ["{not json", json.dumps({"as_of": "x", "models": {"m": {"input": -1}}})])
def test_a_malformed_price_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="price file"):
        PriceTable.with_overrides(path)
    with pytest.raises(ConfigError, match="price file"):
        PriceTable.with_overrides(tmp_path / "missing.json")
