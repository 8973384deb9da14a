"""``--budget-usd`` at batch prices: a request holds its worst case from the moment it is put
in a batch file until its batch ends, when the batch's real cost replaces what it held.

A batch is spent for good once submitted, so one an earlier run made holds its worst case
again on resume, and if that no longer fits (a smaller budget this time) it closes the budget
rather than vanish from it. What does not fit is a not-run record at once: a batch cannot be
waited on to make room the way a request in flight can.
"""

from __future__ import annotations

from actors.accounting.pricing import PriceTable
from drivers.batchapi.journal import BatchEntry
from drivers.batchapi.records import Records
from drivers.budget import Budget
from drivers.estimate import estimate_request
from drivers.inputs import InputRequest
from drivers.outputs import BUDGET_EXHAUSTED, UNPRICED


class BatchLedger:
    def __init__(self, budget: Budget | None, prices: PriceTable, records: Records) -> None:
        self._budget = budget
        self._prices = prices
        """Batch prices (``PriceTable.for_batch``)."""
        self._records = records
        self._held: dict[str, int] = {}
        """Budget units each batch holds until it ends."""

    def reserve(self, request: InputRequest) -> tuple[float, int] | None:
        """The request's worst case and the units holding it; None (and a not-run record) if it cannot be held."""
        if self._budget is None:
            return 0.0, 0
        if self._budget.closed:
            self._records.not_run(request, BUDGET_EXHAUSTED, "--budget-usd was used up before it")
            return None
        worst = estimate_request(request.task, self._prices).high_usd
        if worst is None:
            self._records.not_run(request, UNPRICED, f"no price for model {request.task.model!r}, so --budget-usd cannot bound it")
            return None
        units = self._budget.try_reserve(worst)
        if units is None:
            self._budget.close()
            self._records.not_run(request, BUDGET_EXHAUSTED, f"its worst case ${worst:.6f} at batch prices does not fit in the budget left")
            return None
        return worst, units

    def hold(self, entry: BatchEntry, units: int) -> None:
        """A new batch holds what its requests reserved."""
        self._held[entry.name] = units

    def hold_again(self, entry: BatchEntry) -> None:
        """A batch an earlier run made holds its worst case again."""
        if self._budget is None:
            return
        units = self._budget.try_reserve(entry.reserved_usd)
        if units is None:
            self._budget.close()
        self._held[entry.name] = units or 0

    def release(self, units: int, cost_usd: float = 0.0) -> None:
        if self._budget is not None:
            self._budget.settle(units, cost_usd)

    def settle(self, entry: BatchEntry, cost_usd: float = 0.0) -> None:
        """The batch has ended: what it held is released and ``cost_usd`` spent."""
        self.release(self._held.pop(entry.name, 0), cost_usd)
