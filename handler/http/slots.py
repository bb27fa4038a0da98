"""Bounded inference slots with a bounded wait queue, for the Knative HTTP function.

One inference saturates the container's CPUs (torch already uses every core), so running two at once only
makes both slower and doubles peak memory. :class:`InferenceSlots` lets ``max_concurrent`` inferences run,
parks at most ``max_queued`` more (a request receiving its upload counts as parked: :meth:`InferenceSlots.admit`
comes before the body is read), and turns anything beyond that into :class:`~model.errors.BusyError`
(HTTP 503 with ``Retry-After``) at once instead of an unbounded pile of waiting uploads. It lives on one
event loop: the check-and-count in :meth:`InferenceSlots.acquire` has no ``await`` in between, so it needs
no lock.

Example:
    >>> slots = InferenceSlots(max_concurrent=1, max_queued=0)
    >>> async def run():
    ...     async with slots.acquire():
    ...         return slots.in_flight
    >>> import anyio; anyio.run(run)
    1
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from handler.errors import BusyError

# Seconds a rejected client is told to wait: roughly one small raster's inference.
DEFAULT_RETRY_AFTER_S = 5


class InferenceSlots:
    """At most ``max_concurrent`` holders, ``max_queued`` waiters; beyond that, :class:`BusyError`."""

    def __init__(self, max_concurrent: int = 1, max_queued: int = 8, retry_after_s: int = DEFAULT_RETRY_AFTER_S):
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError(f"need max_concurrent >= 1 and max_queued >= 0, got {max_concurrent}, {max_queued}")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.retry_after_s = retry_after_s
        self._semaphore = anyio.Semaphore(max_concurrent)
        # Admitted callers, running or queued: the only number admission looks at, so a slot being handed from
        # a finishing holder to a waiter never lets an extra caller slip in.
        self._admitted = 0
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Holders now running."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Callers parked in the queue."""
        return self._admitted - self._in_flight

    def has_room(self) -> bool:
        """Whether :meth:`acquire` would run or queue now rather than refuse."""
        return self._admitted < self.max_concurrent + self.max_queued

    def check_room(self) -> None:
        """Refuse early (before reading a large upload) when :meth:`acquire` would refuse now."""
        if not self.has_room():
            raise self._busy()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[None]:
        """Hold a slot for the ``async with`` body; wait in the queue if it has room, else raise BusyError."""
        async with self.admit(), self.run():
            yield

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Count the caller from now on (an upload being received counts), or raise BusyError at once.

        Inside, :meth:`run` waits for and holds the slot itself.
        """
        self.check_room()
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Hold one of the ``max_concurrent`` slots (an admitted caller waits here for its turn)."""
        async with self._semaphore:
            self._in_flight += 1
            try:
                yield
            finally:
                self._in_flight -= 1

    def _busy(self) -> BusyError:
        return BusyError(
            f"busy: {self.in_flight} inference(s) running and {self.waiting} queued "
            f"(MAX_CONCURRENT_INFERENCES={self.max_concurrent}, MAX_QUEUED_REQUESTS={self.max_queued}); "
            f"retry in {self.retry_after_s} s"
        )
