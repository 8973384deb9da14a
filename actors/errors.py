"""One exception tree for rayfan.

    RayfanError
     ├── ConfigError          bad settings: price file, limits, endpoint
     ├── InvalidTask          a request that fails validation (names the field)
     ├── TaskNotFound         unknown or already-collected task id
     ├── ResultTimeout        get_result(timeout=...) ran out; the task keeps running
     ├── RequestFailed        a request ended without a result (carries its TaskError)
     ├── ScopeStopped         the scope stopped (no credit, a rejected key, an unreachable
     │                        endpoint): nothing more is sent
     └── BatchApiError        a Batch API call (a file up or down, a batch created or read)
                              failed for good, retries spent (carries its TaskError)

SDK errors are translated in one place (``actors.adapter.retry.describe_error``) into a
``TaskError``, the record of why a task ended without a result; tasks that fail are reported
as a ``TaskResult`` with ``error`` set, so ``RequestFailed`` is only raised by callers that
ask for it (``TaskResult.raise_for_error``).
"""

from __future__ import annotations

from pydantic import BaseModel


class TaskError(BaseModel):
    """Why a task ended without a result. ``code`` is stable and machine-readable."""

    code: str
    message: str
    status_code: int | None = None


class RayfanError(Exception):
    """Base of every error rayfan raises on purpose."""


class ConfigError(RayfanError):
    """Settings that cannot work (a malformed price file, a negative limit)."""


class InvalidTask(RayfanError, ValueError):
    """A request rejected before it was sent; the message names the field."""


class TaskNotFound(RayfanError, KeyError):
    """No task with this id: never submitted, or its result was already collected."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id

    def __str__(self) -> str:
        return f"no task with id {self.task_id!r} (never submitted, or already collected)"


class ResultTimeout(RayfanError, TimeoutError):
    """The wait for a result timed out; the task itself was left running."""

    def __init__(self, task_id: str, timeout_s: float) -> None:
        super().__init__(f"task {task_id!r} not finished after {timeout_s:g}s; it is still running")
        self.task_id = task_id
        self.timeout_s = timeout_s

    def __reduce__(self) -> tuple[type, tuple[str, float]]:
        return type(self), (self.task_id, self.timeout_s)  # crosses Ray's process boundary intact


class RequestFailed(RayfanError):
    """A request that ended in an error, raised on demand from its TaskResult."""

    def __init__(self, custom_id: str, error: TaskError) -> None:
        super().__init__(f"{custom_id}: {error.code}: {error.message}")
        self.custom_id = custom_id
        self.error = error

    def __reduce__(self) -> tuple[type, tuple[str, TaskError]]:
        return type(self), (self.custom_id, self.error)


class ScopeStopped(RayfanError):
    """A rate-limit scope hit ``insufficient_quota``: its waiting requests fail with that error.

    Raised inside the adapter before a request is sent, and recorded as the task's error.
    """

    def __init__(self, error: TaskError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class BatchApiError(RayfanError):
    """A call to ``/v1/files`` or ``/v1/batches`` that failed after the retry policy gave up
    (or at once, when no retry can fix it), described as a TaskError."""

    def __init__(self, what: str, error: TaskError) -> None:
        super().__init__(f"{what}: {error.code}: {error.message}")
        self.what = what
        self.error = error

    def __reduce__(self) -> tuple[type, tuple[str, TaskError]]:
        return type(self), (self.what, self.error)  # crosses Ray's process boundary intact


class SpareNotTaken(RayfanError, LookupError):
    """A spare adapter has no run yet: nothing to report on."""
