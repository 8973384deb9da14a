"""cluster.yaml must stay a file `ray up` accepts, checked the way `ray up` checks it.

`ray up` (``ray.autoscaler._private.commands._bootstrap_config``) runs, in order:
``prepare_config`` (the provider's defaults.yaml merged in, setup commands merged, docker
checked, per-type worker bounds filled), the provider's ``fillout_available_node_types_resources``
(AWS: asks EC2 for the instance types' CPUs and memory), ``validate_config`` (Ray's
ray-schema.json plus its own consistency checks) and the provider's ``bootstrap_config`` (AWS:
IAM role, key pair, subnets, security group, AMI). The two AWS steps need boto3, credentials
and the network, so they are skipped here: a mistyped EC2 field inside ``node_config`` (which
the schema leaves free-form) or an instance type the region lacks is only caught by `ray up`
itself, before it launches anything. Everything else runs as `ray up` runs it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA: dict[str, Any] = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
AWS_PROVIDER_KEYS_NOT_IN_SCHEMA = {"aws_credentials", "key_pair", "use_external_head_ip"}
"""Provider keys Ray's AWS provider reads that ray-schema.json does not list (the schema lets
any key through under ``provider``, so a misspelled ``region`` would pass it silently)."""
RAY_DEFAULT_DEAD_NODE_S = 5 * (3 + 10)
"""Ray's defaults (5 failures of a 3 s period with a 10 s timeout): a silent node is declared dead after ~65 s."""

Config = dict[str, Any]


def load() -> Config:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    assert isinstance(config, dict)
    return config


def check_like_ray_up(config: Config) -> Config:
    """What `ray up` does to the file before any cloud call, then the checks it makes
    (jsonschema.ValidationError, ValueError; AssertionError from Ray's docker check), plus two
    of ours, as ValueError: the provider keys the schema lets through, the zones' region."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    provider = prepared["provider"]
    known = set(SCHEMA["properties"]["provider"]["properties"]) | AWS_PROVIDER_KEYS_NOT_IN_SCHEMA
    if unknown := set(provider) - known:
        raise ValueError(f"provider keys Ray does not know: {sorted(unknown)}")
    zones = [zone.strip() for zone in str(provider.get("availability_zone", "")).split(",") if zone.strip()]
    if provider["type"] == "aws" and not all(zone.startswith(provider["region"]) for zone in zones):
        raise ValueError(f"availability zones {zones} are not all in region {provider['region']}")
    return prepared


def commands(prepared: Config, key: str) -> list[str]:
    value = prepared[key]
    assert isinstance(value, list) and all(isinstance(command, str) for command in value)
    return value


def env_prefix(command: str) -> dict[str, str]:
    """The NAME=value words before the program on a shell command line."""
    env: dict[str, str] = {}
    for word in shlex.split(command):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
            break
        name, _, value = word.partition("=")
        env[name] = value
    return env


def ray_start(prepared: Config, key: str) -> str:
    starts = [command for command in commands(prepared, key) if "ray start" in command]
    assert len(starts) == 1, f"{key}: one `ray start`, found {starts}"
    return starts[0]


def test_cluster_yaml_is_what_ray_up_accepts() -> None:
    """The file passes Ray's own defaulting and validation, and is the AWS cluster we describe:
    a head type and an autoscaled CPU worker type starting from zero."""
    prepared = check_like_ray_up(load())
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"]
    node_types = prepared["available_node_types"]
    head = node_types[prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no adapters on the head: its CPUs are the driver's"
    (worker,) = (spec for name, spec in node_types.items() if name != prepared["head_node_type"])
    assert worker["min_workers"] == 0 < worker["max_workers"] <= prepared["max_workers"]
    assert prepared["docker"]["image"].endswith("-cpu"), "CPU-only nodes: Ray's CPU image"


def _rename(path: tuple[str, ...], new_key: str) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        *parents, key = path
        node = config
        for parent in parents:
            node = node[parent]
        node[new_key] = node.pop(key)

    return change


def _set(path: tuple[str, ...], value: Any) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        *parents, key = path
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value

    return change


@pytest.mark.parametrize(
    "typo",
    [
        _rename(("max_workers",), "max_worker"),
        _rename(("setup_commands",), "setup_command"),
        _rename(("available_node_types", "cpu_worker", "min_workers"), "min_worker"),
        _rename(("available_node_types", "head", "node_config"), "nodeconfig"),
        _rename(("docker", "image"), "imag"),
        _rename(("auth", "ssh_user"), "ssh_usr"),
        _rename(("provider", "region"), "regoin"),
        _set(("head_node_type",), "haed"),
        _set(("available_node_types", "cpu_worker", "min_workers"), "0"),
        _set(("provider", "availability_zone"), "eu-west-1a"),
    ],
    ids=[
        "top-level",
        "commands",
        "node-type",
        "node_config",
        "docker",
        "auth",
        "provider",
        "head_node_type",
        "string-for-integer",
        "zone-outside-region",
    ],
)
def test_a_misspelled_field_fails_validation(typo: Callable[[Config], None]) -> None:
    """The check above can fail: a misspelled field (or a wrong value) anywhere Ray knows the
    shape is rejected, so a typo fails CI instead of `ray up` (or worse, is ignored). Ray's
    docker check asserts; check_like_ray_up itself asserts nothing, so no assert of ours passes."""
    config = load()
    typo(config)
    with pytest.raises((jsonschema.ValidationError, ValueError, AssertionError)):
        check_like_ray_up(config)


def test_rayfan_is_installed_on_every_node() -> None:
    """Head and workers run the same setup (after Ray merges setup_commands in), which installs
    the checkout that file_mounts copies there; the head also keeps boto3, without which its
    autoscaler cannot launch a worker (`ray up` installs it by default, but only when the file
    does not set head_setup_commands)."""
    config = load()
    prepared = check_like_ray_up(config)
    mounted_checkout = [remote for remote, local in config["file_mounts"].items() if Path(local) == Path(".")]
    assert len(mounted_checkout) == 1, "the checkout ('.') is copied to the nodes once"
    remote = mounted_checkout[0]
    spellings = (remote, remote.replace("~", "$HOME", 1))
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [c for c in commands(prepared, key) if "pip install" in c and any(path in c for path in spellings)]
        assert installs, f"{key} must pip install {remote} (the copied checkout)"
    assert any("boto3" in command for command in commands(prepared, "head_setup_commands"))
    assert prepared["docker"]["image"].startswith("rayproject/ray:"), "Ray comes from Ray's image, pinned"


def test_every_node_starts_ray_with_token_authentication() -> None:
    """Head and workers use the same auth mode, else workers cannot join; the token they read
    is the one file_mounts copies to every node (`ray get-auth-token --generate` writes it)."""
    config = load()
    prepared = check_like_ray_up(config)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert env_prefix(ray_start(prepared, key)).get("RAY_AUTH_MODE") == "token", key
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_health_checks_notice_a_dead_node_in_seconds() -> None:
    """The head's `ray start` sets RAY_health_check_* variables that Ray really reads (checked in
    a fresh interpreter: a misspelled name is silently ignored by Ray, so it must fail here),
    and with them a node that stops answering is declared dead in seconds, not a minute."""
    prepared = check_like_ray_up(load())
    env = {name: value for name, value in env_prefix(ray_start(prepared, "head_start_ray_commands")).items() if name.startswith("RAY_health")}
    assert {"RAY_health_check_period_ms", "RAY_health_check_timeout_ms", "RAY_health_check_failure_threshold"} <= set(env)
    wanted = {name.removeprefix("RAY_"): int(value) for name, value in env.items()}
    probe = (
        "import json, sys\nfrom ray._raylet import Config\n"
        "names = json.loads(sys.argv[1])\n"
        "print(json.dumps({name: getattr(Config, name)() if hasattr(Config, name) else None for name in names}))"
    )
    seen = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(sorted(wanted))],
        env={**{name: value for name, value in os.environ.items() if not name.startswith("RAY_")}, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert json.loads(seen.stdout) == wanted, "Ray must read each variable, with the value the file sets"
    silent_node_s = wanted["health_check_failure_threshold"] * (wanted["health_check_period_ms"] + wanted["health_check_timeout_ms"]) / 1000
    assert silent_node_s <= 15 < RAY_DEFAULT_DEAD_NODE_S


def test_the_api_key_is_not_in_the_file() -> None:
    """rayfan reads the key on the driver only: no node command sets it, and no key-shaped
    string is anywhere in the file, comments included."""
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"\bsk-[A-Za-z0-9_-]{8,}", text)
    prepared = check_like_ray_up(load())
    for key, value in prepared.items():
        if key.endswith("_commands"):
            assert not any("OPENAI_API_KEY" in command for command in value), key
