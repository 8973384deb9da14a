"""The Batch API's calls, made by an adapter with its SDK client: a batch input file up
(``POST /v1/files``, purpose ``batch``), a file's content down, and a batch submitted
(``POST /v1/batches``) and read.

The adapter makes them because it owns the client built from the driver's settings: the key
never leaves it, and what goes on the wire is what the SDK sends. It may run on a node that
cannot see the driver's disk, so files travel in parts, through a scratch file on the
adapter's node: an upload's parts are appended to it, then streamed from it to the endpoint;
a download is streamed into it as it arrives, while the driver reads it back part by part
(plain calls, so Ray Client, which has no streaming generators, carries them too). No file
is ever whole in memory.

Each call goes through the adapter's one retry policy. Submitting is idempotent per input
file: before every attempt to create a batch, the batches created since the driver first
tried are searched for one on the same file. So a create whose answer was lost (a timeout,
or a driver killed after the server said yes) is found, never made, and paid, twice.
"""

from __future__ import annotations

import contextlib
import re
import os
import tempfile
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx2
import openai

from actors.adapter.batch_info import PART_BYTES, BatchInfo
from actors.adapter.retry import RetryPolicy, describe_error
from actors.errors import BatchApiError, TaskError

T = TypeVar("T")

_FOUND_SINCE_SLACK_S = 600
"""A batch created up to this long before the driver's clock says it first tried is still
looked at: the server's clock may differ from the driver's."""
_SCRATCH_NAME = re.compile(r"[0-9a-f]{32}")
@dataclass
class _Download:
    """A file's content coming into a scratch file; ``grown`` is set whenever it grew or ended."""

    path: Path
    size: int = 0
    grown: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class BatchFiles:
    """The Batch API calls of one adapter. Each file in transit has a scratch file of its own,
    removed once sent or read (an adapter killed mid-way leaves it in the temporary directory)."""

    def __init__(self, client: openai.AsyncOpenAI, retry: RetryPolicy) -> None:
        self._client = client
        self._retry = retry
        self._scratch: dict[str, Path] = {}
        self._downloads: dict[str, _Download] = {}

    async def add_part(self, upload: str, data: bytes) -> None:
        """Append ``data`` to the scratch copy of the file ``upload`` names."""
        with open(self._scratch_path(upload), "ab") as scratch:
            scratch.write(data)

    async def upload(self, upload: str, filename: str) -> str:
        """Send the parts received for ``upload`` as one file, streamed from the scratch copy
        (the SDK reads a file object in chunks); its file id. The copy is removed either way."""
        path = self._scratch_path(upload)

        async def once() -> str:
            with open(path, "rb") as content:
                file = await self._client.files.create(file=(filename, content, "application/jsonl"), purpose="batch")
            return file.id

        try:
            return await self._call(f"upload of {filename}", once)
        finally:
            self._forget(upload)

    async def submit(self, input_file_id: str, endpoint: str, metadata: dict[str, str], since: int) -> BatchInfo:
        """The batch of ``input_file_id``: the one created since ``since`` (Unix seconds, when
        the driver first tried) if there is one, else a new one."""

        async def once() -> BatchInfo:
            found = await self._find(input_file_id, since - _FOUND_SINCE_SLACK_S)
            if found is not None:
                return found
            batch = await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=endpoint,  # type: ignore[arg-type]  # a Literal of the SDK's; the driver sends only the input's URLs
                completion_window="24h",  # the only window the Batch API offers
                metadata=metadata,
            )
            return BatchInfo.of(batch)

        return await self._call(f"submission of {input_file_id}", once)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return await self._call(f"status of {batch_id}", lambda: self._info(batch_id))

    async def start_download(self, download: str, file_id: str) -> None:
        """Start streaming the content of ``file_id`` into the scratch file ``download`` names."""
        self._downloads[download] = entry = _Download(self._scratch_path(download))
        entry.task = asyncio.get_running_loop().create_task(self._fetch(file_id, entry))

    async def read_download(self, download: str, offset: int) -> bytes:
        """The content from ``offset``, as much as has come (``PART_BYTES`` at most), waiting
        for more if none has; b"" once the file is whole and read. A download that failed
        (retries spent, or cut in the middle) raises BatchApiError: the driver starts over."""
        entry = self._downloads[download]
        assert entry.task is not None
        while entry.size <= offset and not entry.task.done():
            entry.grown.clear()
            await entry.grown.wait()
        if entry.size <= offset:
            entry.task.result()  # raises what ended it early
            return b""
        with open(entry.path, "rb") as scratch:
            scratch.seek(offset)
            return scratch.read(min(PART_BYTES, entry.size - offset))

    async def end_download(self, download: str) -> None:
        entry = self._downloads.pop(download, None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()
            await asyncio.gather(entry.task, return_exceptions=True)
        self._forget(download)

    def close(self) -> None:
        for entry in self._downloads.values():
            if entry.task is not None:
                entry.task.cancel()
        self._downloads.clear()
        for name in list(self._scratch):
            self._forget(name)

    async def _fetch(self, file_id: str, entry: _Download) -> None:
        """Write the content to the scratch file as it arrives. Opening it is retried; a
        stream cut in the middle is a BatchApiError, for the driver to start over."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                response = await self._call(
                    f"download of {file_id}",
                    lambda: stack.enter_async_context(self._client.files.with_streaming_response.content(file_id)),
                )
                with open(entry.path, "ab") as scratch:
                    async for chunk in response.iter_bytes():
                        scratch.write(chunk)
                        scratch.flush()
                        entry.size += len(chunk)
                        entry.grown.set()
        except (openai.APIError, httpx2.HTTPError) as error:
            reason = TaskError(code="connection_error", message=f"{type(error).__name__}: {error}")
            raise BatchApiError(f"download of {file_id}", reason) from None
        finally:
            entry.grown.set()

    async def _info(self, batch_id: str) -> BatchInfo:
        return BatchInfo.of(await self._client.batches.retrieve(batch_id))

    async def _find(self, input_file_id: str, since: int) -> BatchInfo | None:
        """The batch on ``input_file_id`` among those created since ``since``; the list is
        newest first, so the walk stops at the first older one."""
        async for batch in self._client.batches.list(limit=100):
            if batch.created_at < since:
                return None
            if batch.input_file_id == input_file_id:
                return BatchInfo.of(batch)
        return None

    async def _call(self, what: str, once: Callable[[], Awaitable[T]]) -> T:
        """``once()`` under the retry policy; a failure it gives up on as BatchApiError."""
        try:
            async for attempt in self._retry.retrying(what):
                with attempt:
                    return await once()
        except openai.APIError as error:
            raise BatchApiError(what, describe_error(error)) from None
        raise AssertionError("tenacity either returns, or re-raises the last error")

    def _scratch_path(self, name: str) -> Path:
        if name not in self._scratch:
            if not _SCRATCH_NAME.fullmatch(name):
                raise ValueError("a file in transit is named by 32 hex digits")
            handle, path = tempfile.mkstemp(prefix=f"rayfan-batch-{name[:8]}-", suffix=".jsonl")
            os.close(handle)
            self._scratch[name] = Path(path)
        return self._scratch[name]

    def _forget(self, name: str) -> None:
        path = self._scratch.pop(name, None)
        if path is not None:
            path.unlink(missing_ok=True)
