"""Pydantic models at the boundaries: what goes into an adapter and what comes out.

Tasks follow the OpenAI request bodies, so a Batch API line's ``body`` validates as-is;
fields the models do not name are passed through to the server untouched.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from actors.errors import InvalidTask, RequestFailed, TaskError

DEFAULT_MODEL = "gpt-4o-mini"


class TaskStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


class _Task(BaseModel):
    """Fields every request kind shares; unknown fields are request params sent as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    custom_id: str = Field(min_length=1)
    model: str = Field(default=DEFAULT_MODEL, min_length=1)
    timeout_s: float | None = Field(default=None, gt=0, description="per attempt")
    metadata: dict[str, Any] = Field(default_factory=dict, exclude=True)


class ChatTask(_Task):
    """A ``/v1/chat/completions`` request."""

    kind: Literal["chat"] = "chat"
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: bool = False

    @property
    def output_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ResponsesTask(_Task):
    """A ``/v1/responses`` request."""

    kind: Literal["responses"] = "responses"
    input: str | list[dict[str, Any]]
    max_output_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)

    @property
    def output_cap(self) -> int | None:
        return self.max_output_tokens


class EmbeddingTask(_Task):
    """A ``/v1/embeddings`` request."""

    kind: Literal["embeddings"] = "embeddings"
    model: str = Field(default="text-embedding-3-small", min_length=1)
    input: str | list[str]

    @property
    def output_cap(self) -> int | None:
        return 0


AnyTask = ChatTask | ResponsesTask | EmbeddingTask
"""A validated task of any kind."""
Task = Annotated[Union[ChatTask, ResponsesTask, EmbeddingTask], Field(discriminator="kind")]
_TASK_ADAPTER: TypeAdapter[AnyTask] = TypeAdapter(Task)


def parse_task(data: Any) -> AnyTask:
    """Validate a task given as a model or a dict; errors name the offending field."""
    if isinstance(data, (ChatTask, ResponsesTask, EmbeddingTask)):
        return data
    if isinstance(data, dict) and "kind" not in data:
        data = {**data, "kind": "chat"}
    try:
        return _TASK_ADAPTER.validate_python(data)
    except ValidationError as err:
        raise InvalidTask(describe_validation_error(err)) from None


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming its field, without echoing the values."""
    problems = []
    for item in err.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        problems.append(f"{location}: {item['msg']}")
    return "; ".join(problems)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TaskResult(BaseModel):
    custom_id: str
    status: TaskStatus
    text: str | None = None
    body: dict[str, Any] | None = None  # the server's response body (None for streamed chat)
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    model: str
    attempts: int = 0
    latency_s: float = 0.0
    request_id: str | None = None
    error: TaskError | None = None

    @property
    def ok(self) -> bool:
        return self.status is TaskStatus.COMPLETED

    def raise_for_error(self) -> TaskResult:
        if self.error is not None:
            raise RequestFailed(self.custom_id, self.error)
        return self
