"""A user's own ``actors/`` and ``drivers/`` folders where rayfan runs do not replace rayfan's
packages in the adapters (Ray puts the driver's working directory first on its workers' path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.usefixtures("ray_session")

RAYFAN = Path(sys.executable).parent / "rayfan"  # the installed command: `python -m` would shadow the driver too


@pytest.mark.skipif(not RAYFAN.exists(), reason="needs the installed rayfan command (pip install -e .)")
def test_a_run_from_a_folder_with_its_own_actors_and_drivers_packages(tmp_path: Path) -> None:
    for package in ("actors", "drivers"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f'raise ImportError("the user\'s own {package} package")\n')
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"custom_id": f"c{i}", "prompt": f"hello {i}"}) + "\n" for i in range(3)))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    command = [str(RAYFAN), "run", "in.jsonl", "-o", "out.jsonl", "--mock", "--adapters", "1", "--address", ray.get_runtime_context().gcs_address]
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["custom_id"] for r in records) == ["c0", "c1", "c2"] and all(r["error"] is None for r in records)
    assert "the user's own" not in completed.stderr
