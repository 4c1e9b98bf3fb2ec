"""`SendWindow`: how many DIRAC submit calls are in flight adapts to the server.

Two stand-in servers, driven through the window exactly as `submit_exactly_once`
drives it (`async with window.slot()` around each call, all calls gathered): one
that works on one call at a time (every call in flight waits for those ahead —
DiracX on SQLite), one that works on calls in parallel (a call takes the same time
however many are in flight — a remote server behind several workers).

They run on a virtual clock (the event loop's time jumps to the next timer; the window
reads that clock): the latencies the window learns from are then the servers' own,
not a busy machine's scheduling delays, which the estimate would read as queueing.
"""

from __future__ import annotations

import asyncio
import selectors
import types

import pytest

from prefect_egi.tasks.dirac import submission
from prefect_egi.tasks.dirac.submission import SendWindow

CALL = 0.04  # seconds of server work per call (virtual: they cost no real time)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose time stands still while callbacks run and, when it would wait
    for the next timer, jumps to it."""

    def __init__(self) -> None:
        self.now = 0.0
        loop = self

        class Jump(selectors.DefaultSelector):
            def select(self, timeout=None):
                if timeout is None:  # nothing scheduled: no timer to jump to
                    return super().select(timeout)
                ready = super().select(0)
                if not ready:
                    loop.now += timeout
                return ready

        super().__init__(Jump())

    def time(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def virtual_clock(monkeypatch):
    # the window times its calls with the running loop's (virtual) clock
    monkeypatch.setattr(submission, "time", types.SimpleNamespace(
        monotonic=lambda: asyncio.get_running_loop().time()))


def run(coro):
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coro)


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
    sizes = run(drive(window, server, 60))
    # it tries two in flight now and then (the server's load may have changed), never four
    assert server.most_in_flight <= 3
    assert sum(size == 1 for size in sizes) >= len(sizes) * 0.6


def test_a_server_that_works_in_parallel_gets_the_whole_window():
    window, server = SendWindow(4), ParallelServer()
    sizes = run(drive(window, server, 60))
    assert server.most_in_flight == 4
    assert sum(size >= 3 for size in sizes) >= len(sizes) / 2


@pytest.mark.parametrize("maximum", [1, 2])
def test_never_more_in_flight_than_allowed(maximum):
    server = ParallelServer()
    run(drive(SendWindow(maximum), server, 30))
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

    run(scenario())
