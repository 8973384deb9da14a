"""Adapters on a two-node ``ray.cluster_utils.Cluster``, with the worker node removed.

Run as ``python -m tests.adapters_on_lost_node`` by a test, in a process of its own (Ray
allows one cluster per driver, and only its owner removes a node). The endpoint settings
carry a CA bundle over Ray's 100 KB inline limit, as ``SSL_CERT_FILE`` gives on most
machines (a restart by Ray itself failed with those). After the loss, a fan-out over the
run's adapters must replace the lost one and finish every task. Prints one JSON line: the
nodes the adapters started on, the tasks' outcomes, and where the replacement runs.
"""

from __future__ import annotations

import json
import sys

import ray
from ray.cluster_utils import Cluster

from actors.adapter.settings import EndpointSettings
from actors.models import ChatTask
from drivers.cluster import start_adapters
from drivers.fanout import fan_out
from drivers.mock import MockServer
from tests.tls import make_server_tls

HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_timeout_ms": 1_000, "health_check_failure_threshold": 3}
TASKS = 40


def run() -> dict[str, object]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": HEALTH_CHECKS})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        with MockServer() as server:
            ca_pem = make_server_tls().ca_pem
            bundle = ca_pem * (200_000 // len(ca_pem) + 1)  # one CA, repeated past 200 KB: still a valid bundle
            endpoint = EndpointSettings(base_url=server.base_url, api_key="sk-lost-node", ca_pem=bundle)
            adapters = start_adapters(2, endpoint=endpoint, model="gpt-4o-mini", max_in_flight=4)
            nodes = [info.node for info in ray.get([adapter.status.remote() for adapter in adapters])]
            report: dict[str, object] = {"bundle_bytes": len(bundle), "nodes": nodes, "worker": worker.node_id, "head": cluster.head_node.node_id}
            if worker.node_id not in nodes:
                return report
            lost = nodes.index(worker.node_id)
            cluster.remove_node(worker)
            tasks = [ChatTask(custom_id=f"t{i}", messages=[{"role": "user", "content": f"after the loss {i}"}], max_tokens=4) for i in range(TASKS)]
            results = [result for _, result in fan_out(tasks, adapters, max_in_flight=4)]
            report["ok"] = sum(result.ok for result in results)
            report["errors"] = sorted({result.error.code for result in results if result.error is not None})
            report["replaced"] = adapters.replaced
            report["replacement_on"] = ray.get(adapters[lost].status.remote(), timeout=120).node if adapters.replaced[lost] else None
            return report
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(run()))
    sys.exit(0)
