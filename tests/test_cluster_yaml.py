"""cluster.yaml must stay a file `ray up` accepts: checked against Ray's own schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_cluster_yaml_matches_rays_schema() -> None:
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert not any("OPENAI_API_KEY=" in command and "sk-" in command for command in config.get("setup_commands", []))
