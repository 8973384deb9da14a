"""A run's driver never imports the SDK, tenacity or the tokenizer: only its adapters use them,
and importing them cost every run's start 0.4 s (bench/startup.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.usefixtures("ray_session")

ROOT = Path(__file__).resolve().parent.parent
ADAPTER_ONLY = ("openai", "tenacity", "tiktoken")
"""Top-level packages a synchronous run's driver must not load."""
REPORT_LOADED = (
    "import sys\n"
    "loaded = sorted({name.split('.')[0] for name in sys.modules} & set(sys.argv[1].split(',')))\n"
    "print(json.dumps({'exit': code, 'loaded': loaded}))\n"
)


def _python(code: str, *args: str, cwd: Path) -> dict[str, object]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    env["PYTHONPATH"] = str(ROOT)
    completed = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    report: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return report


def test_the_command_line_imports_no_adapter_package_nor_aiohttp(tmp_path: Path) -> None:
    report = _python("import json\ncode = None\nimport drivers.cli\n" + REPORT_LOADED, ",".join((*ADAPTER_ONLY, "aiohttp")), cwd=tmp_path)
    assert report["loaded"] == []


def test_a_whole_run_leaves_its_driver_without_the_sdk(tmp_path: Path) -> None:
    """Through the command line, adapters, coordinator, results, the closing report and the
    summary: nothing the driver receives back makes it import the SDK either. (The mock
    server the run starts for ``--mock`` is an aiohttp server, so aiohttp is not checked.)"""
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"custom_id": f"c{i}", "prompt": f"hello {i}"}) + "\n" for i in range(5)))
    run = (
        "import json, sys\n"
        "from drivers.cli import main\n"
        "code = main(['run', 'in.jsonl', '-o', 'out.jsonl', '--mock', '--no-progress', '--address', sys.argv[2], '-v'])\n"
    )
    report = _python(run + REPORT_LOADED, ",".join(ADAPTER_ONLY), ray.get_runtime_context().gcs_address, cwd=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert report["exit"] == 0 and sorted(r["custom_id"] for r in records) == [f"c{i}" for i in range(5)]
    assert all(r["error"] is None and r["rayfan"]["cost_usd"] > 0 for r in records)
    assert report["loaded"] == []
