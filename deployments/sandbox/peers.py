"""Start and stop the sandbox's peers as real processes on 127.0.0.1.

Each peer is a module of `prefect_egi.sandbox`, run as `python -m prefect_egi.sandbox.<peer>`
(named here by its file, e.g. `checkin_peer.py`), that binds a free port and prints one JSON line (its
URLs and whatever a client needs) on stdout, then serves until terminated.
Peers run in their own process group so that stopping one stops everything it
started. Used by the tests' fixtures and by `egi-flows sandbox`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Exit status of a peer whose port, chosen free, was taken before it could bind it.
PORT_TAKEN = 75


@dataclass
class PeerProcess:
    """A running peer: its process and the JSON it announced."""

    name: str
    process: subprocess.Popen[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.info["url"])

    def control(self, action: str, **payload: Any) -> dict[str, Any]:
        """POST to the peer's `/_peer/<action>` test control endpoint."""
        response = httpx.post(f"{self.url}/_peer/{action}", json=payload, timeout=10)
        response.raise_for_status()
        return response.json() if response.content else {}

    def stats(self) -> dict[str, int]:
        response = httpx.get(f"{self.url}/_peer/stats", timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=timeout)
        finally:
            if self.process.stdout:
                self.process.stdout.close()


def start_peer(name: str, script: str, *args: str, timeout: float = 30.0, env: dict[str, str] | None = None,
               attempts: int = 3) -> PeerProcess:
    """Run the peer module `script` names (`checkin_peer.py` → `python -m prefect_egi.sandbox.checkin_peer`)
    with `args`; wait for its JSON announcement line. A peer
    that lost its port to another process (exit status PORT_TAKEN) is started again."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_peer(name, script, *args, timeout=timeout, env=env)
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    pass


def _start_peer(name: str, script: str, *args: str, timeout: float, env: dict[str, str] | None) -> PeerProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", f"{__package__}.{Path(script).stem}", *args],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    peer = PeerProcess(name, process)
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if process.returncode == PORT_TAKEN:
                raise PortTaken(f"peer {name}: its port was taken before it could bind it")
            raise RuntimeError(f"peer {name} exited with code {process.returncode} before announcing itself")
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if line.strip().startswith("{"):
                peer.info = json.loads(line)
                return peer
    peer.stop()
    raise RuntimeError(f"peer {name} did not announce itself within {timeout:.0f} s")
