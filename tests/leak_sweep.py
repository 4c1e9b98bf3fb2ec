"""Where secrets must never end up, and a sweep that looks there.

Stores a run leaves behind: the Prefect database (flow/task runs, parameters, logs,
artifacts, events, block documents), result storage and everything else under a
PREFECT_HOME, the session's own log file, and — for tests that run a real Prefect
server with workers (`tests/prefect_stack.py`) — each stack's database, result
storage and process logs.

What to look for: every token the session's peers minted (Check-in access, refresh
and id tokens; Keystone tokens), the secrets our code registered for redaction in
this process, and the fixed credentials of the peers (gCube token, DiracX
credential files). Values are searched as raw bytes, so a secret inside JSON,
a log line or a pickled result is found alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import httpx

# Roots of the real Prefect stacks this session started (tests/prefect_stack.py appends).
STACK_ROOTS: list[Path] = []


def capture_session_logs(path: Path) -> None:
    """Write every log record this process emits — root and Prefect's own (non-propagating)
    loggers — to `path`, as handlers see them, so the sweep can read what was really logged."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("", "prefect"):
        logging.getLogger(name).addHandler(handler)


def minted_by_peer(control_url: str) -> list[str]:
    """The tokens a peer minted over the session (`GET /_peer/issued`)."""
    response = httpx.get(f"{control_url}/_peer/issued", timeout=10)
    response.raise_for_status()
    return list(response.json())


def credential_file_tokens(paths: Iterable[str | Path]) -> list[str]:
    """Access and refresh tokens of DiracX credential files (`dirac login`'s JSON)."""
    found: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        found += [data[k] for k in ("access_token", "refresh_token") if data.get(k)]
    return found


def stored_files(roots: Iterable[Path]) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def sweep(secrets: Iterable[str], roots: Iterable[Path]) -> list[str]:
    """Every (file, secret) pair where a secret is stored; secrets are named by length and
    prefix only, so the failure message itself leaks nothing usable."""
    needles = {s.encode() for s in secrets if s and len(s) >= 8}
    leaks = []
    for path in stored_files(roots):
        content = path.read_bytes()
        leaks += [f"{path}: a secret of length {len(n)} starting {n[:4]!r}…" for n in needles if n in content]
    return leaks
