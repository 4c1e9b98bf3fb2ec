"""Every VM of a VO over many FedCloud sites, asked at once; a failing site is a row, not the end.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, Field

from prefect_egi.tasks.fedcloud.client import (
    VM,
    Site,
    SiteFailure,
    SitePool,
    SiteServers,
    endpoint_label,
    site_servers,
)


class Inventory(BaseModel):
    """Every VM of a VO over the sites asked, and the sites that could not answer."""

    vo: str
    vms: list[VM] = Field(default_factory=list)
    sites: list[SiteServers] = Field(default_factory=list)

    @property
    def failures(self) -> list[SiteFailure]:
        return [s.failure for s in self.sites if s.failure is not None]

    def label(self, row: VM | SiteServers | SiteFailure) -> str:
        """The site's name — or `NAME@KEYSTONE-HOST` when this inventory asked several endpoints
        of that site (a site is not a name: each endpoint answers for itself)."""
        repeated = Counter(answer.site for answer in self.sites)
        return endpoint_label(row.site, row.endpoint) if repeated[row.site] > 1 and row.endpoint else row.site

    def table(self) -> list[dict[str, Any]]:
        return [{"site": self.label(v), "name": v.name, "status": v.status, "flavor": v.flavor, "image": v.image,
                 "addresses": ", ".join(v.addresses), "age": v.age, "id": v.id} for v in self.vms]

    def markdown(self) -> str:
        lines = [f"# FedCloud VMs of {self.vo}", "",
                 f"{len(self.vms)} VM(s) on {sum(1 for s in self.sites if s.failure is None)} of "
                 f"{len(self.sites)} site(s).", "", "| site | VMs | project | Nova API | problem |",
                 "|---|---|---|---|---|"]
        for s in self.sites:
            problem = f"{s.failure.kind}: {s.failure.message}" if s.failure else ""
            lines.append(f"| {self.label(s)} | {len(s.vms)} | {s.project or ''} | {s.microversion or ''} | {problem} |")
        return "\n".join(lines)

    def keep(self, status: Sequence[str] | None = None, name_pattern: str | None = None) -> "Inventory":
        """Only the VMs whose status is one of `status` (any case) and whose name matches the glob."""
        self.vms = keep(self.vms, status, name_pattern)
        for answer in self.sites:
            answer.vms = keep(answer.vms, status, name_pattern)
        return self


def keep(vms: Sequence[VM], status: Sequence[str] | None = None, name_pattern: str | None = None) -> list[VM]:
    """VMs whose status is one of `status` (any case) and whose name matches the glob."""
    wanted = {s.upper() for s in status or []}
    return [vm for vm in vms if (not wanted or vm.status.upper() in wanted)
            and (not name_pattern or fnmatch.fnmatch(vm.name, name_pattern))]


async def inventory(pool: SitePool, sites: Sequence[Site], vo: str, *, concurrency: int = 32,
                    site_deadline: float = 120.0) -> Inventory:
    """Ask every site at once (at most `concurrency` at a time); never fails for one site."""
    await asyncio.to_thread(pool.token)  # one token for all; a missing one fails here, once
    loop = asyncio.get_running_loop()
    # keystoneauth and novaclient block: each site gets a thread of a pool sized for the sites
    # (asyncio's default pool has only cores + 4 threads, which would queue the sites up)
    threads = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(sites))), thread_name_prefix="fedcloud")

    async def one(site: Site) -> SiteServers:
        try:
            return await asyncio.wait_for(loop.run_in_executor(threads, site_servers, pool, site, vo), site_deadline)
        except asyncio.TimeoutError:
            return SiteServers(site=site.name, endpoint=site.endpoint, failure=SiteFailure(
                site=site.name, endpoint=site.endpoint, kind="timeout", message=f"no answer within {site_deadline:.0f} s"))

    try:
        answers = await asyncio.gather(*(one(site) for site in sites))
    finally:
        threads.shutdown(wait=False)  # a hung site's thread ends with its request timeout
    return Inventory(vo=vo, sites=list(answers), vms=[vm for answer in answers for vm in answer.vms])
