"""The adapters, as a Batch API run calls them from the driver's event loop.

Short calls (submit, look) go round robin; a file's upload or download goes to the adapter
with the fewest transfers under way, so several files move at once across adapters. A file
travels in parts of at most ``PART_BYTES``, either way, in plain calls (Ray Client has no
streaming generators): the driver never holds a whole file. A call whose adapter dies
(RayActorError) goes again to the next one, since each may be repeated: an upload makes one
more file, a submission finds its batch; a download cut short raises, and starts over. A
dead adapter is replaced (``AdapterGroup.replace``).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, RayActorError

from actors.adapter.batch_info import PART_BYTES, BatchInfo
from drivers.adapter_group import REPLACEMENTS, AdapterGroup


class AdapterPool:
    def __init__(self, adapters: Sequence[ActorHandle[Any]]) -> None:
        if not adapters:
            raise ValueError("at least one adapter is needed")
        self._group = adapters if isinstance(adapters, AdapterGroup) else None
        self._adapters = list(adapters)
        self._transfers = [0] * len(adapters)
        self._turn = itertools.count()
        self._tries = REPLACEMENTS + len(adapters)
        """Calls that lose their adapter before one gives up."""

    async def upload(self, path: Path, filename: str) -> str:
        """Upload the batch file at ``path``; its file id."""
        for tries_left in reversed(range(self._tries)):
            index = self._transfers.index(min(self._transfers))
            adapter = self._adapters[index]
            upload = uuid.uuid4().hex
            self._transfers[index] += 1
            try:
                with open(path, "rb") as source:
                    while part := source.read(PART_BYTES):
                        await adapter.batch_upload_part.remote(upload, part)
                file_id: str = await adapter.batch_upload.remote(upload, filename)
                return file_id
            except RayActorError as error:
                self._lost(index, adapter, error)
                if not tries_left:
                    raise
            finally:
                self._transfers[index] -= 1
        raise AssertionError("the loop returns or raises")

    async def submit(self, input_file_id: str, endpoint: str, metadata: dict[str, str], since: int) -> BatchInfo:
        info: BatchInfo = await self._call("batch_submit", input_file_id, endpoint, metadata, since)
        return info

    async def retrieve(self, batch_id: str) -> BatchInfo:
        info: BatchInfo = await self._call("batch_retrieve", batch_id)
        return info

    async def download(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's content in parts, as they arrive at the adapter; a download cut short
        (BatchApiError, or RayActorError when the adapter died) raises, and the caller reads
        the file again from the start."""
        index = self._transfers.index(min(self._transfers))
        adapter = self._adapters[index]
        download = uuid.uuid4().hex
        self._transfers[index] += 1
        try:
            await adapter.batch_download.remote(download, file_id)
            offset = 0
            while part := await adapter.batch_download_part.remote(download, offset):
                offset += len(part)
                yield part
        except RayActorError as error:
            self._lost(index, adapter, error)
            raise
        finally:
            self._transfers[index] -= 1
            adapter.batch_download_end.remote(download)  # the scratch copy goes; nothing to wait for

    async def _call(self, method: str, *args: Any) -> Any:
        for tries_left in reversed(range(self._tries)):
            index = next(self._turn) % len(self._adapters)
            adapter = self._adapters[index]
            try:
                return await getattr(adapter, method).remote(*args)
            except RayActorError as error:
                self._lost(index, adapter, error)
                if not tries_left:
                    raise
        raise AssertionError("the loop returns or raises")

    def _lost(self, index: int, adapter: ActorHandle[Any], error: RayActorError) -> None:
        """A dead adapter (not one Ray only could not reach) is replaced while its group
        allows, once: calls that failed on it together find it replaced already."""
        if isinstance(error, ActorDiedError) and self._group is not None and self._group[index] is adapter:
            if (replacement := self._group.replace(index)) is not None:
                self._adapters[index] = replacement
