"""Drivers of rayfan: the batch command line and a small library API.

    from drivers import fan_out, start_adapters
    from drivers.endpoint import EndpointFlags, resolve_endpoint
    adapters = start_adapters(4, endpoint=resolve_endpoint(EndpointFlags()), model="gpt-4o-mini", max_in_flight=512)
    for task, result in fan_out(tasks, adapters, max_in_flight=512):
        print(result.custom_id, result.text, result.cost_usd)
"""

from drivers.batch import BatchOptions, run_batch
from drivers.cluster import connect, start_adapters
from drivers.fanout import Dispatcher, fan_out
from drivers.summary import ExitCode, RunSummary

__all__ = ["BatchOptions", "Dispatcher", "ExitCode", "RunSummary", "connect", "fan_out", "run_batch", "start_adapters"]
