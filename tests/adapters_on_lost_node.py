"""Adapters on a two-node ``ray.cluster_utils.Cluster``, with the worker node removed.

Run as ``python -m tests.adapters_on_lost_node`` by a test, in a process of its own (Ray
allows one cluster per driver, and only its owner removes a node). The endpoint settings
carry a CA bundle over Ray's 100 KB inline limit, as ``SSL_CERT_FILE`` gives on most
machines. Prints one JSON line: the nodes the adapters started on and, for the one on the
removed node, where it answered again or why it could not.
"""

from __future__ import annotations

import json
import sys
import time

import ray
from ray.cluster_utils import Cluster
from ray.exceptions import ActorDiedError, RayActorError

from actors.adapter.settings import EndpointSettings
from drivers.cluster import start_adapters
from tests.tls import make_server_tls

HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_timeout_ms": 1_000, "health_check_failure_threshold": 3}
RESTART_WAIT_S = 120.0
UP_BEFORE_LOSS_S = 3.0
"""How long the adapters are up before their node is lost, as in any real run. Not a wait
for a condition: Ray frees an argument it stored itself asynchronously, in batches (1 s
apart by default), and a node lost right after start-up would find it still there. Without
the driver's own reference 3 s lost the restart in 3 runs of 3; with it, the object stays."""


def run() -> dict[str, object]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "_system_config": HEALTH_CHECKS})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        ca_pem = make_server_tls().ca_pem
        bundle = ca_pem * (200_000 // len(ca_pem) + 1)  # one CA, repeated past 200 KB: still a valid bundle
        endpoint = EndpointSettings(base_url="http://127.0.0.1:9/v1", api_key="sk-lost-node", ca_pem=bundle)
        adapters = start_adapters(2, endpoint=endpoint, model="gpt-4o-mini", max_in_flight=4)
        nodes = [info.node for info in ray.get([adapter.status.remote() for adapter in adapters])]
        on_worker = [index for index, node in enumerate(nodes) if node == worker.node_id]
        report: dict[str, object] = {"bundle_bytes": len(bundle), "nodes": nodes, "worker": worker.node_id, "head": cluster.head_node.node_id}
        if not on_worker:
            return report
        time.sleep(UP_BEFORE_LOSS_S)
        cluster.remove_node(worker)
        victim = adapters[on_worker[0]]
        deadline = time.monotonic() + RESTART_WAIT_S
        while time.monotonic() < deadline:
            try:
                report["restarted_on"] = ray.get(victim.status.remote(), timeout=10).node
                return report
            except ActorDiedError as error:  # out of restarts, or a restart that failed
                report["died"] = str(error).strip().splitlines()[0]
                return report
            except (RayActorError, ray.exceptions.GetTimeoutError):
                continue  # still being restarted: ask again
        report["died"] = "not back in time"
        return report
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(run()))
    sys.exit(0)
