"""FedCloud VM inventory: ours (concurrent) vs a sequential loop vs a process per
site (fedcloudclient's approach), in one run.

    python tests/benchmarks/bench_inventory.py [--sites 30] [--repeat 3] [--json PATH]

Against the local Check-in peer and `--sites` OpenStack stand-in sites, each
answering every request 50–200 ms late (a fixed, seeded latency per site):
- ours: `prefect_egi.tasks.fedcloud.inventory.inventory` (threads, bounded by the block's concurrency);
- sequential: the same per-site listing, one site after the other;
- process per site: one Python process per site doing the listing (what
  fedcloudclient does by shelling out to the `openstack` CLI), 30 at a time;
- the slowest single site alone (the floor for any concurrent approach).
Targets: ours within 1.5× of the slowest single site, ≥ 10× faster than sequential.
`--json PATH` also writes the measured numbers there (for `run_all.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pydantic import SecretStr  # noqa: E402

from prefect_egi.sandbox.peers import start_peer
from prefect_egi.tasks import CheckinCredentials, FedCloud, Site
from prefect_egi.tasks.fedcloud.client import SitePool, site_servers
from prefect_egi.tasks.fedcloud.inventory import inventory

VO = "vo.access.egi.eu"
ONE_SITE = """
from prefect_egi.tasks.fedcloud.client import Site, SitePool, site_servers
site = Site(name={name!r}, endpoint={endpoint!r})
answer = site_servers(SitePool(lambda: {token!r}, timeout=30), site, {vo!r})
assert answer.failure is None, answer.failure
print(len(answer.vms))
"""


def latencies(names: list[str], seed: int = 7) -> dict[str, float]:
    rng = random.Random(seed)
    return {name: rng.uniform(0.05, 0.2) for name in names}


def slow_down(peer, delays: dict[str, float]) -> None:
    peer.control("reset")
    for name, delay in delays.items():
        peer.control("fault", site=name, status=0, delay=delay, count=100_000)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the measured numbers to this file")
    args = parser.parse_args()
    checkin = start_peer("checkin", "checkin_peer.py")
    names = [f"SITE-{i:02d}" for i in range(args.sites)]
    specs = [a for name in names for a in ("--site", f"{name}:healthy:{VO}")]
    openstack = start_peer("openstack", "openstack_peer.py", "--issuer", checkin.info["issuer"], *specs,
                           "--servers", "20")
    try:
        token = checkin.control("login", user="alice")["access_token"]
        sites = [Site(name=n, endpoint=openstack.info["sites"][n]["auth_url"]) for n in names]
        delays = latencies(names)
        slowest = max(sites, key=lambda s: delays[s.name])
        credentials = CheckinCredentials(issuer=checkin.info["issuer"], access_token=SecretStr(token),
                                         use_environment=False, token_files=[])

        def ours() -> None:
            block = FedCloud(checkin=credentials, sites=sites, site_config_dirs=[])
            result = asyncio.run(inventory(block.client(), block.choose(), VO, concurrency=block.concurrency,
                                           site_deadline=block.site_deadline_seconds))
            assert not result.failures and len(result.vms) == 20 * len(sites), result.failures

        def sequential() -> None:
            pool = SitePool(lambda: token)
            assert all(site_servers(pool, site, VO).failure is None for site in sites)

        def one_slowest() -> None:
            assert site_servers(SitePool(lambda: token), slowest, VO).failure is None

        def process_per_site() -> None:
            def run(site: Site) -> None:
                code = ONE_SITE.format(name=site.name, endpoint=site.endpoint, token=token, vo=VO)
                subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)

            with ThreadPoolExecutor(30) as threads:  # fedcloudclient's pool size
                list(threads.map(run, sites))

        slow_down(openstack, delays)
        rows, runs_of = {}, {}
        for label, action in [("slowest single site", one_slowest), ("ours (concurrent)", ours),
                              ("sequential loop", sequential), ("process per site", process_per_site)]:
            runs = [timed(action) for _ in range(args.repeat if label != "process per site" else 1)]
            rows[label] = sorted(runs)[len(runs) // 2]
            runs_of[label] = runs
        floor, mine = rows["slowest single site"], rows["ours (concurrent)"]
        print(f"{args.sites} sites, 50–200 ms per request, 20 VMs each; medians of {args.repeat} (process per site: 1 run)")
        print(f"{'approach':<22} {'wall s':>7} {'ours / it':>10}")
        for label, seconds in rows.items():
            print(f"{label:<22} {seconds:>7.2f} {mine / seconds:>10.2f}")
        print(f"ours is {mine / floor:.2f}x the slowest site (target <= 1.5), "
              f"{rows['sequential loop'] / mine:.1f}x faster than sequential (target >= 10), "
              f"{rows['process per site'] / mine:.1f}x faster than a process per site")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "sites": args.sites, "repeat": args.repeat, "vms_per_site": 20,
                "slowest_site_s": floor, "ours_s": mine, "sequential_s": rows["sequential loop"],
                "process_per_site_s": rows["process per site"], "runs": runs_of}, indent=2))
    finally:
        openstack.stop()
        checkin.stop()


if __name__ == "__main__":
    main()
