"""`SendWindow`: how many DIRAC submit calls are in flight adapts to the server.

Two stand-in servers, driven through the window exactly as `submit_exactly_once`
drives it (`async with window.slot()` around each call, all calls gathered): one
that works on one call at a time (every call in flight waits for those ahead —
DiracX on SQLite), one that works on calls in parallel (a call takes the same time
however many are in flight — a remote server behind several workers).
"""

from __future__ import annotations

import asyncio

import pytest

from prefect_egi.tasks.dirac.submission import SendWindow

CALL = 0.04  # seconds of server work per call (large against a busy machine's timer jitter)


class SerialServer:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.in_flight = self.most_in_flight = 0

    async def call(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            async with self.lock:
                await asyncio.sleep(CALL)
        finally:
            self.in_flight -= 1


class ParallelServer(SerialServer):
    async def call(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(CALL)
        finally:
            self.in_flight -= 1


async def drive(window: SendWindow, server: SerialServer, calls: int) -> list[int]:
    sizes: list[int] = []

    async def one() -> None:
        async with window.slot():
            await server.call()
        sizes.append(window.size)

    await asyncio.gather(*(one() for _ in range(calls)))
    return sizes


def test_a_server_that_serialises_calls_is_sent_about_one_at_a_time():
    window, server = SendWindow(4), SerialServer()
    sizes = asyncio.run(drive(window, server, 60))
    # it tries two in flight now and then (the server's load may have changed), never four
    assert server.most_in_flight <= 3
    assert sum(size == 1 for size in sizes) >= len(sizes) * 0.6


def test_a_server_that_works_in_parallel_gets_the_whole_window():
    window, server = SendWindow(4), ParallelServer()
    sizes = asyncio.run(drive(window, server, 60))
    assert server.most_in_flight == 4
    assert sum(size >= 3 for size in sizes) >= len(sizes) / 2


@pytest.mark.parametrize("maximum", [1, 2])
def test_never_more_in_flight_than_allowed(maximum):
    server = ParallelServer()
    asyncio.run(drive(SendWindow(maximum), server, 30))
    assert server.most_in_flight == maximum


def test_failed_calls_free_their_slot_and_teach_nothing():
    window = SendWindow(4)

    async def failing() -> None:
        with pytest.raises(ConnectionResetError):
            async with window.slot():
                await asyncio.sleep(CALL * 5)  # slow: counted, it would narrow the window
                raise ConnectionResetError

    async def scenario() -> None:
        await drive(window, ParallelServer(), 20)
        before = window.size
        await asyncio.gather(*(failing() for _ in range(8)))
        assert window.in_flight == 0 and window.size == before

    asyncio.run(scenario())
