"""Group commit: batches that arrive while a write is in flight go out together in the next one."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence

from prewarm.service.store import errors
from prewarm.service.store.protocol import BatchRejected, IngestResult, Intent, StateUnavailable

log = logging.getLogger(__name__)

MAX_GROUP_INTENTS = 512

WriteGroup = Callable[[Sequence[Sequence[Intent]]], Awaitable[list[tuple[bool, ...]]]]
_Pending = tuple[Sequence[Intent], asyncio.Future[IngestResult]]


def _settle(done: asyncio.Future[IngestResult], result: IngestResult | BaseException) -> None:
    """Answer one waiting request, unless it stopped waiting."""
    if done.done():
        return
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)


class GroupCommit:
    """Queues batches and writes them with `write` (their new-or-duplicate flags), several per call.

    Every caller gets its own answer: when a group write fails for another reason than the
    store's availability, each batch is written alone and only the one at fault is refused.
    """

    def __init__(self, write: WriteGroup) -> None:
        self._write = write
        self._pending: collections.deque[_Pending] = collections.deque()
        self._committing: asyncio.Task[None] | None = None

    async def submit(self, intents: Sequence[Intent]) -> IngestResult:
        """Write `intents` with whatever else is waiting; raises StateUnavailable or BatchRejected."""
        done: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._pending.append((intents, done))
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit_pending(), name="redis-group-commit")
        return await done

    def cancel(self) -> asyncio.Task[None] | None:
        """Cancel the write in flight; the task to wait for, if one was running."""
        task, self._committing = self._committing, None
        if task is None or task.done():
            return None
        task.cancel()
        return task

    def fail_pending(self, reason: str) -> None:
        """Answer every waiting batch with StateUnavailable(reason)."""
        for _, done in self._pending:
            _settle(done, StateUnavailable(reason))
        self._pending.clear()

    async def _commit_pending(self) -> None:
        group: list[_Pending] = []
        try:
            while self._pending:
                group = self._take_group()
                if group:
                    await self._commit(group)
                group = []
        finally:  # cancelled (the store closes) or a bug: nobody may be left waiting
            stranded = group + list(self._pending)
            self._pending.clear()
            for _, done in stranded:
                _settle(done, StateUnavailable("the store is closing"))

    def _take_group(self) -> list[_Pending]:
        group: list[_Pending] = []
        size = 0
        while self._pending and (not group or size + len(self._pending[0][0]) <= MAX_GROUP_INTENTS):
            batch, done = self._pending.popleft()
            if done.done():
                continue  # the request stopped waiting (it was answered 503): write nothing for it
            group.append((batch, done))
            size += len(batch)
        return group

    async def _commit(self, group: list[_Pending]) -> None:
        try:
            results = await self._write([batch for batch, _ in group])
        except StateUnavailable as e:
            for _, done in group:
                _settle(done, e)
        except Exception as e:
            if len(group) > 1:
                log.warning("a group commit of %d batches failed (%s); writing each alone", len(group), errors.short(e))
                for entry in group:
                    await self._commit([entry])
            elif errors.is_refusal(e):
                log.warning("redis refused a batch of %d intents: %s", len(group[0][0]), errors.short(e))
                _settle(group[0][1], BatchRejected(f"the store refused the batch: {errors.short(e)}"))
            else:
                log.warning("a batch of %d intents failed: %r", len(group[0][0]), e, exc_info=True)
                _settle(group[0][1], StateUnavailable(f"redis: {errors.short(e)}"))
        else:
            for (_, done), new in zip(group, results, strict=True):
                _settle(done, IngestResult(new=new))
