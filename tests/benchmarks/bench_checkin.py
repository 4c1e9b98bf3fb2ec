"""Check-in token layer: ours vs the obvious baselines, side by side in one run.

    python tests/benchmarks/bench_checkin.py

Rows (ratio = ours / baseline, lower is better):
- import overhead: `import prefect, tasks` vs `import prefect` (target: +0.2 s at most);
- cached token: `provider.get_access_token()` vs reading the variable and decoding
  the JWT on every call (what scripts do);
- 50 concurrent callers needing a refresh: token-endpoint requests and wall time,
  ours (one shared refresh) vs each caller redeeming the refresh token itself.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pydantic import SecretStr  # noqa: E402

from prefect_egi.sandbox.peers import start_peer
from prefect_egi.tasks import OidcClient, TokenProvider, parse_token
from prefect_egi.tasks.checkin.sources import EnvironmentToken, RefreshTokenSource


def import_seconds(code: str, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def per_call(fn, calls: int = 20_000) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls


def concurrent(fn, callers: int = 50) -> float:
    barrier = threading.Barrier(callers)

    def run() -> None:
        barrier.wait()
        fn()

    threads = [threading.Thread(target=run) for _ in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def main() -> None:
    rows: list[tuple[str, float, float, str]] = []
    prefect_only = import_seconds("import prefect")
    with_tasks = import_seconds("import prefect, prefect_egi.tasks")
    rows.append(("import prefect_egi.tasks (s, on top of prefect)", with_tasks - prefect_only, prefect_only, "vs import prefect"))

    peer = start_peer("checkin", "checkin_peer.py")
    try:
        login = peer.control("login")
        issuer, secret = peer.info["issuer"], peer.info["clients"]["prefect-egi"]
        os.environ["OIDC_ACCESS_TOKEN"] = login["access_token"]
        provider = TokenProvider([EnvironmentToken()])
        ours = per_call(provider.get_access_token)
        baseline = per_call(lambda: parse_token(os.environ["OIDC_ACCESS_TOKEN"]).value)
        rows.append(("cached token (µs per call)", ours * 1e6, baseline * 1e6, "vs decode on every call"))

        def token_requests() -> int:
            return peer.stats().get("grant refresh_token", 0)

        client = OidcClient(issuer, "prefect-egi", SecretStr(secret))
        client.discovery()
        refresh = SecretStr(login["refresh_token"])
        shared = TokenProvider([RefreshTokenSource(client, refresh)])
        before = token_requests()
        ours_wall = concurrent(shared.get_access_token)
        ours_requests = token_requests() - before
        before = token_requests()
        naive_wall = concurrent(lambda: client.refresh(refresh))
        naive_requests = token_requests() - before
        rows.append(("50 callers: token requests", ours_requests, naive_requests, "vs each caller refreshing"))
        rows.append(("50 callers: wall time (s)", ours_wall, naive_wall, "vs each caller refreshing"))
    finally:
        peer.stop()

    print(f"{'measure':40} {'ours':>12} {'baseline':>12} {'ratio':>8}  baseline")
    for name, ours_value, base_value, what in rows:
        ratio = ours_value / base_value if base_value else float("nan")
        print(f"{name:40} {ours_value:12.4f} {base_value:12.4f} {ratio:8.3f}  {what}")


if __name__ == "__main__":
    main()
