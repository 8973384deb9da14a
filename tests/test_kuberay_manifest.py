"""examples/kuberay-rayjob.yaml must stay a RayJob KubeRay accepts, running a `rayfan run` that
rayfan accepts. No Kubernetes here: the fields KubeRay's CRD requires (ray.io/v1, checked by
hand against the v1.7.0 CRD and its validation code) and what the example promises (the key from
a Secret only, the data on a volume, token authentication) are checked on the parsed YAML, and
the entrypoint is parsed by rayfan's own argument parser, so a renamed flag fails here."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from ray._raylet import Config as RayConfig

from drivers.cli import build_parser

MANIFEST = Path(__file__).resolve().parent.parent / "examples" / "kuberay-rayjob.yaml"
KEY_VARIABLE = "OPENAI_API_KEY"
Doc = dict[str, Any]


def documents() -> list[Doc]:
    docs = [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc is not None]
    assert all(isinstance(doc, dict) for doc in docs)
    return docs


def rayjob() -> Doc:
    (job,) = (doc for doc in documents() if doc.get("kind") == "RayJob")
    return job


def cluster_spec() -> Doc:
    spec = rayjob()["spec"]["rayClusterSpec"]
    assert isinstance(spec, dict)
    return spec


def head_container() -> Doc:
    containers = cluster_spec()["headGroupSpec"]["template"]["spec"]["containers"]
    assert isinstance(containers, list) and containers, "KubeRay: headGroupSpec should have at least one container"
    head: Doc = containers[0]  # KubeRay runs Ray in the first container
    return head


def env_of(container: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def all_containers(node: Any) -> list[Doc]:
    """Every container (and init container) anywhere in a document."""
    found: list[Doc] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found.extend(value)
            found.extend(all_containers(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(all_containers(value))
    return found


def run_parser() -> argparse.ArgumentParser:
    """The `rayfan run` subcommand's parser, from the one the command line builds."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            run: argparse.ArgumentParser = action.choices["run"]
            return run
    raise AssertionError("rayfan's parser has no subcommands")


def entrypoint_argv() -> list[str]:
    """The words after `rayfan` in the entrypoint, e.g. ["run", "/data/in.jsonl", ...]."""
    entrypoint = rayjob()["spec"]["entrypoint"]
    assert isinstance(entrypoint, str) and entrypoint.strip()
    words = shlex.split(entrypoint)
    assert words[:2] == ["rayfan", "run"], f"the entrypoint is a `rayfan run`, not {entrypoint!r}"
    return words[1:]


def test_it_is_a_rayjob_with_the_fields_kuberay_requires() -> None:
    """KubeRay's CRD requires headGroupSpec.template, and for each worker group groupName,
    minReplicas, maxReplicas and template; its validation wants containers in both, and
    0 <= minReplicas <= maxReplicas (replicas between them), and Ray >= 2.52 for token auth."""
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,45}[a-z0-9])?", job["metadata"]["name"]), "a DNS-1035 name of 47 characters at most"
    assert job["spec"]["entrypoint"]
    spec = cluster_spec()
    assert all(container.get("name") and container.get("image") for container in spec["headGroupSpec"]["template"]["spec"]["containers"])
    head_container()
    groups = spec["workerGroupSpecs"]
    assert isinstance(groups, list) and groups
    for group in groups:
        assert isinstance(group["groupName"], str) and group["groupName"]
        assert all(isinstance(group[field], int) for field in ("replicas", "minReplicas", "maxReplicas"))
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        containers = group["template"]["spec"]["containers"]
        assert containers and all(container.get("name") and container.get("image") for container in containers)
    assert spec["authOptions"]["mode"] == "token", "only holders of the cluster's token reach it"
    major, minor = (int(part) for part in spec["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52), "KubeRay refuses token auth below Ray 2.52"


def test_the_key_comes_from_a_secret_and_only_to_the_head() -> None:
    """The head (where the driver runs) gets OPENAI_API_KEY from a Secret; no container anywhere
    in the file has a literal value for it, workers have none at all (rayfan reads the key on
    the driver only), and no key-shaped string is in the file, comments included."""
    reference = env_of(head_container())[KEY_VARIABLE]
    assert "value" not in reference
    secret = reference["valueFrom"]["secretKeyRef"]
    assert secret["name"] and secret["key"]
    for doc in documents():
        for container in all_containers(doc):
            entry = env_of(container).get(KEY_VARIABLE)
            assert entry is None or "value" not in entry, f"a literal {KEY_VARIABLE} in {container.get('name')}"
    for group in cluster_spec()["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            assert KEY_VARIABLE not in env_of(container), f"worker group {group['groupName']} needs no key"
    assert not re.search(r"\bsk-[A-Za-z0-9_-]{8,}", MANIFEST.read_text())


def test_the_entrypoint_is_a_rayfan_run_that_rayfan_accepts() -> None:
    """Every flag is one `rayfan run` defines, spelled out (argparse would take an abbreviation,
    which a renamed flag could leave pointing elsewhere), and the whole command parses, values
    included; the driver joins the job's own cluster."""
    argv = entrypoint_argv()
    defined = set(run_parser()._option_string_actions)
    used = {word.split("=", 1)[0] for word in argv[1:] if word.startswith("-")}
    assert used <= defined, f"flags rayfan run does not define: {sorted(used - defined)}"
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:
        pytest.fail(f"rayfan rejects the entrypoint {argv} (exit {exit.code})")
    assert args.command == "run"
    assert args.address in (None, "auto"), "the job's driver runs on the job's cluster"
    assert not args.mock


def test_the_input_and_output_are_on_the_heads_volume() -> None:
    """The driver runs on the head, so the input it reads and the output it writes must be on a
    volume mounted there, backed by a PersistentVolumeClaim (outliving the cluster, which the
    job deletes), the claim this file defines."""
    args = build_parser().parse_args(entrypoint_argv())
    pod = cluster_spec()["headGroupSpec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    claims = {doc["metadata"]["name"] for doc in documents() if doc.get("kind") == "PersistentVolumeClaim"}
    for path in (PurePosixPath(str(args.input)), PurePosixPath(str(args.output))):
        mounts = [m for m in head_container()["volumeMounts"] if path.is_relative_to(PurePosixPath(m["mountPath"]))]
        assert mounts, f"{path} is on no volume of the head"
        claim = volumes[mounts[0]["name"]]["persistentVolumeClaim"]["claimName"]
        assert claim in claims, f"{path}: claim {claim} is not defined in the file"
    assert pod.get("securityContext", {}).get("fsGroup") == 100, "writable by the ray user (gid 100) of Ray's images"


def test_the_head_notices_a_lost_worker_in_seconds() -> None:
    """The head's RAY_health_check_* variables are settings Ray has (RAY_<name> is how Ray reads
    them; tests/test_cluster_yaml.py proves that in a fresh interpreter), with a short failure
    detection; the head takes no adapters (num-cpus 0) so they run on the workers."""
    env = {name: entry["value"] for name, entry in env_of(head_container()).items() if name.startswith("RAY_health_check_")}
    assert {"RAY_health_check_period_ms", "RAY_health_check_timeout_ms", "RAY_health_check_failure_threshold"} <= set(env)
    for name in env:
        assert hasattr(RayConfig, name.removeprefix("RAY_")), f"Ray has no setting {name}"
    settings = {name.removeprefix("RAY_health_check_"): int(value) for name, value in env.items()}
    assert settings["failure_threshold"] * (settings["period_ms"] + settings["timeout_ms"]) <= 15_000
    assert cluster_spec()["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
