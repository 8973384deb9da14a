"""A driver on a two-node ``ray.cluster_utils.Cluster`` whose nodes know none of the endpoint settings.

Run as ``python -m tests.driver_on_cluster INPUT OUTPUT BASE_URL`` by a test, in a process
of its own (Ray allows one cluster per driver process). The nodes start with no
``OPENAI_*`` variable; only then are the settings set, on the driver alone, as a user
would export them before ``rayfan run --address``. Prints the exit code and the nodes the
adapters ran on.
"""

from __future__ import annotations

import os
import sys

from ray.cluster_utils import Cluster

from drivers.cli import main

DRIVER_ONLY = {
    "OPENAI_API_KEY": "sk-driver-only",
    "OPENAI_ORG_ID": "org-driver-only",
    "OPENAI_PROJECT_ID": "proj-driver-only",
    "OPENAI_CUSTOM_HEADERS": "X-Gateway-Token: gw-driver-only",
}


def run(input_path: str, output_path: str, base_url: str) -> int:
    for name in [name for name in os.environ if name.startswith(("OPENAI_", "AZURE_OPENAI_"))]:
        del os.environ[name]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        os.environ.update(DRIVER_ONLY, OPENAI_BASE_URL=base_url)
        return main(["run", input_path, "-o", output_path, "--adapters", "2", "--address", cluster.address, "--rpm", "6000", "--tpm", "1000000"])
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(run(*sys.argv[1:4]))
