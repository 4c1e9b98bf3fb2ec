"""A running method's stdout/stderr, followed while the engine waits for its job.

Where the server links a job's logs (OGC API – Processes' recommended `[ogc-rel:log]`
job links; the sandbox peer does, CCP's own REST API documents none — see the client's
docstring), each poll of a started job also reads what its logs gained since the last
one (`CCPClient.read_log`, a Range request from the last offset) and hands the complete
lines to a sink: the Prefect run's log, in the tasks. When the job ends the rest is read
at once. Where no log is linked nothing is read and nothing is sent.

Following a log never costs the wait: a read that fails is skipped (the next poll reads
from the same offset), and a job prints at most `max_lines` lines per stream into the
sink (the rest is counted, and stays on the server). The last lines of stderr are kept
for the failure's message.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prefect_egi.tasks.ccp.client import CCPClient, CCPError, JobInfo
from prefect_egi.tasks.faults import TransientServiceError
from prefect_egi.tasks.remote import JobState

logger = logging.getLogger("prefect_egi.ccp")

#: what receives each complete line: (job id, stream, line)
LogSink = Callable[[str, str, str], None]


@dataclass
class _Stream:
    offset: int = 0
    partial: str = ""
    forwarded: int = 0
    dropped: int = 0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=10))


class LogFollower:
    """Reads the new part of each job's logs and forwards complete lines to `sink`."""

    def __init__(self, client: CCPClient, sink: LogSink, max_lines: int = 2000):
        self.client, self.sink, self.max_lines = client, sink, max_lines
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._ended: set[str] = set()

    async def follow(self, job: JobInfo) -> None:
        """Read what `job`'s logs gained (all of it when the job has ended: once)."""
        if not job.logs or job.state in (JobState.QUEUED, JobState.SUBMITTED) or job.job_id in self._ended:
            return
        final = job.state.terminal
        for stream in job.logs:
            state = self._streams.setdefault((job.job_id, stream), _Stream())
            try:
                chunk = await self.client.read_log(job, stream, state.offset, final=final)
            except (CCPError, TransientServiceError) as exc:  # the next poll reads from the same offset
                logger.debug("could not read the %s log of job %s: %s", stream, job.job_id, exc)
                continue
            state.offset = chunk.next_offset
            self._forward(job.job_id, stream, state, state.partial + chunk.text, final)
        if final:
            self._ended.add(job.job_id)

    def _forward(self, job_id: str, stream: str, state: _Stream, text: str, final: bool) -> None:
        *lines, state.partial = text.split("\n")
        if final and state.partial:
            lines, state.partial = [*lines, state.partial], ""
        for line in lines:
            line = line.rstrip("\r")
            state.tail.append(line)
            if state.forwarded < self.max_lines:
                state.forwarded += 1
                self.sink(job_id, stream, line)
            else:
                state.dropped += 1
        if final and state.dropped:
            self.sink(job_id, stream, f"… {state.dropped} more line(s) not shown (at most {self.max_lines} per "
                                      "stream): read them from the job's log")

    def tail(self, job_id: str, stream: str = "stderr") -> list[str]:
        """The last lines of a job's stream seen so far (for a failure's message)."""
        state = self._streams.get((job_id, stream))
        return [line for line in state.tail if line.strip()] if state else []
