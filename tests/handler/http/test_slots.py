"""handler.http.slots: at most N holders, at most Q waiters, BusyError beyond; counts stay exact."""

from __future__ import annotations

import anyio
import pytest

from handler.errors import BusyError, TransientError
from handler.http.slots import InferenceSlots


def test_one_slot_runs_callers_one_at_a_time_and_queues_the_rest():
    # GIVEN one slot and room for 4 waiters
    slots = InferenceSlots(max_concurrent=1, max_queued=4)
    running, peak, finished = 0, 0, []

    async def work(i: int) -> None:
        nonlocal running, peak
        async with slots.acquire():
            running += 1
            peak = max(peak, running)
            await anyio.sleep(0.01)
            running -= 1
            finished.append(i)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(work, i)

    # WHEN five callers arrive at once
    anyio.run(main)
    # THEN all five ran, never two at once, and nothing is left counted
    assert sorted(finished) == [0, 1, 2, 3, 4]
    assert peak == 1
    assert (slots.in_flight, slots.waiting) == (0, 0)


@pytest.mark.parametrize(("concurrent", "queued"), [(1, 0), (1, 2), (2, 0), (2, 3)])
def test_callers_beyond_slots_plus_queue_are_refused_at_once(concurrent, queued):
    slots = InferenceSlots(max_concurrent=concurrent, max_queued=queued, retry_after_s=7)
    release = anyio.Event()
    outcomes: list[str] = []

    async def hold() -> None:
        async with slots.acquire():
            await release.wait()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(concurrent + queued):
                tg.start_soon(hold)
            await anyio.wait_all_tasks_blocked()
            # GIVEN every slot held and the queue full
            assert (slots.in_flight, slots.waiting) == (concurrent, queued)
            assert not slots.has_room()
            # WHEN one more caller arrives THEN it is refused without waiting, with a retry hint
            with pytest.raises(BusyError, match="retry in 7 s") as info:
                async with slots.acquire():
                    outcomes.append("ran")  # pragma: no cover - must not happen
            assert isinstance(info.value, TransientError)
            with pytest.raises(BusyError):
                slots.check_room()
            release.set()

    anyio.run(main)
    assert outcomes == []
    assert (slots.in_flight, slots.waiting) == (0, 0)
    assert slots.has_room()


def test_a_caller_arriving_while_a_slot_is_handed_over_queues_behind_the_waiter():
    # GIVEN one slot, one queue place: a holder and a waiter
    slots = InferenceSlots(max_concurrent=1, max_queued=1)
    order: list[str] = []
    running = 0
    peak = 0

    go = anyio.Event()

    async def work(name: str, then: object = None) -> None:
        nonlocal running, peak
        async with slots.acquire():
            running += 1
            peak = max(peak, running)
            order.append(name)
            await go.wait()
            await anyio.sleep(0)
            running -= 1
        if callable(then):
            then()  # no await since the release: the slot is being handed to the waiter right now

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            # WHEN the holder finishes and a third caller arrives in that same instant
            tg.start_soon(work, "first", lambda: tg.start_soon(work, "third"))
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(work, "second")
            await anyio.wait_all_tasks_blocked()
            assert (slots.in_flight, slots.waiting) == (1, 1)
            go.set()

    anyio.run(main)
    # THEN the third one queued behind the second and never ran alongside it
    assert order == ["first", "second", "third"]
    assert peak == 1
    assert (slots.in_flight, slots.waiting) == (0, 0)


def test_an_error_inside_releases_the_slot():
    slots = InferenceSlots(max_concurrent=1, max_queued=0)

    async def main() -> None:
        with pytest.raises(RuntimeError):
            async with slots.acquire():
                raise RuntimeError("boom")
        async with slots.acquire():
            assert slots.in_flight == 1

    anyio.run(main)
    assert slots.in_flight == 0


def test_a_cancelled_waiter_leaves_the_queue():
    slots = InferenceSlots(max_concurrent=1, max_queued=1)
    release = anyio.Event()

    async def hold() -> None:
        async with slots.acquire():
            await release.wait()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await anyio.wait_all_tasks_blocked()
            with anyio.move_on_after(0.01):
                async with slots.acquire():
                    pass  # pragma: no cover - the slot is held throughout
            assert (slots.in_flight, slots.waiting) == (1, 0)
            assert slots.has_room()
            release.set()

    anyio.run(main)


@pytest.mark.parametrize(("concurrent", "queued"), [(0, 1), (1, -1)])
def test_invalid_bounds_are_refused(concurrent, queued):
    with pytest.raises(ValueError, match="max_concurrent"):
        InferenceSlots(concurrent, queued)
