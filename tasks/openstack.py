"""FedCloud VM inventory as Prefect blocks and tasks.

    from tasks.openstack import FedCloud, vm_inventory
    FedCloud(checkin=CheckinCredentials.load("egi-checkin")).save("fedcloud")
    inventory = vm_inventory("fedcloud", vo="vo.access.egi.eu")      # every configured site

Sites come from the block (inline), from fedcloudclient's site-config folder
and any folder the block names (fedcloud-catchall-operations format). All
sites are asked at once, a bounded number at a time; a site that is down,
hangs, refuses the token or does not support the VO becomes a row of
`Inventory.failures`, never the end of the run.
"""

from __future__ import annotations

import asyncio
import fnmatch
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from typing import Any

from prefect import task
from pydantic import BaseModel, Field, PrivateAttr

from tasks.block_base import EgiBlock
from tasks.checkin import CheckinCredentials
from tasks.fedcloud import SITE_CONFIG_DIR, VM, Site, SiteFailure, SitePool, SiteServers, load_site_configs, site_servers
from tasks.http import tls_verify
from tasks.redaction import redact_errors
from tasks.remote import in_run, run_logger


class FedCloud(EgiBlock):
    """EGI FedCloud sites and the Check-in identity used on them."""

    _block_type_name = "EGI FedCloud"
    _block_type_slug = "egi-fedcloud"
    _logo_url = "https://www.egi.eu/wp-content/uploads/2021/06/EGI-Logo.png"  # type: ignore[assignment]
    _documentation_url = "https://docs.egi.eu/users/compute/cloud-compute/"  # type: ignore[assignment]

    checkin: CheckinCredentials = Field(default_factory=CheckinCredentials,
                                        description="Where the Check-in access token comes from.")
    default_vo: str | None = Field(default=None, description="VO used when a flow does not name one.")
    sites: list[Site] = Field(default_factory=list, description="Sites given here (added to the site-config folders').")
    site_config_dirs: list[str] = Field(
        default_factory=lambda: [SITE_CONFIG_DIR],
        description="Folders of fedcloud-catchall-operations site files (*.yaml).")
    concurrency: int = Field(default=32, ge=1, le=64, description="Sites asked at the same time (EGI has about 30).")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of each request to a site.")
    site_deadline_seconds: float = Field(default=120.0, gt=0, description="Give up on one site after this long.")
    verify_tls: bool = Field(default=True, description="Verify the sites' TLS certificates.")
    ca_bundle: str | None = Field(default=None, description="CA bundle for the sites (instead of the system one).")

    _pool: SitePool | None = PrivateAttr(default=None)

    def all_sites(self) -> list[Site]:
        """Inline sites first; a site-config file with the same name does not override them."""
        found = {site.name: site for site in load_site_configs(self.site_config_dirs)}
        found.update({site.name: site for site in self.sites})
        return sorted(found.values(), key=lambda s: s.name)

    def pool(self) -> SitePool:
        """Sessions shared by every call on this block object (tokens rotate in place)."""
        if self._pool is None:
            # keystoneauth takes a CA bundle path (not an SSLContext) or a bool
            self._pool = SitePool(self.checkin.get_access_token, self.timeout_seconds,
                                  self.ca_bundle or tls_verify(self.verify_tls, what="the FedCloud sites"))
        return self._pool


class Inventory(BaseModel):
    """Every VM of a VO over the sites asked, and the sites that could not answer."""

    vo: str
    vms: list[VM] = Field(default_factory=list)
    sites: list[SiteServers] = Field(default_factory=list)

    @property
    def failures(self) -> list[SiteFailure]:
        return [s.failure for s in self.sites if s.failure is not None]

    def table(self) -> list[dict[str, Any]]:
        return [{"site": v.site, "name": v.name, "status": v.status, "flavor": v.flavor, "image": v.image,
                 "addresses": ", ".join(v.addresses), "age": v.age, "id": v.id} for v in self.vms]

    def markdown(self) -> str:
        lines = [f"# FedCloud VMs of {self.vo}", "",
                 f"{len(self.vms)} VM(s) on {sum(1 for s in self.sites if s.failure is None)} of "
                 f"{len(self.sites)} site(s).", "", "| site | VMs | project | Nova API | problem |",
                 "|---|---|---|---|---|"]
        for s in self.sites:
            problem = f"{s.failure.kind}: {s.failure.message}" if s.failure else ""
            lines.append(f"| {s.site} | {len(s.vms)} | {s.project or ''} | {s.microversion or ''} | {problem} |")
        return "\n".join(lines)


def _choose(block: FedCloud, names: Sequence[str] | None) -> list[Site]:
    sites = block.all_sites()
    if not names:
        if not sites:
            raise ValueError("sites: no FedCloud site is configured — add sites to the block, or site files "
                             f"to {', '.join(block.site_config_dirs)}")
        return sites
    known = {s.name: s for s in sites}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"sites: unknown site(s) {', '.join(unknown)}; configured: {', '.join(known) or 'none'}")
    return [known[n] for n in names]


async def inventory(block: FedCloud, vo: str, site_names: Sequence[str] | None = None) -> Inventory:
    """Ask every chosen site at once (at most `concurrency` at a time); never fails for one site."""
    sites = _choose(block, site_names)
    pool = block.pool()
    await asyncio.to_thread(block.checkin.get_access_token)  # one token for all; a missing one fails here, once
    loop = asyncio.get_running_loop()
    # keystoneauth and novaclient block: each site gets a thread of a pool sized for the sites
    # (asyncio's default pool has only cores + 4 threads, which would queue the sites up)
    threads = ThreadPoolExecutor(max_workers=min(block.concurrency, len(sites)), thread_name_prefix="fedcloud")

    async def one(site: Site) -> SiteServers:
        try:
            return await asyncio.wait_for(loop.run_in_executor(threads, site_servers, pool, site, vo),
                                          block.site_deadline_seconds)
        except asyncio.TimeoutError:
            return SiteServers(site=site.name, failure=SiteFailure(
                site=site.name, kind="timeout", message=f"no answer within {block.site_deadline_seconds:.0f} s"))

    try:
        answers = await asyncio.gather(*(one(site) for site in sites))
    finally:
        threads.shutdown(wait=False)  # a hung site's thread ends with its request timeout
    return Inventory(vo=vo, sites=list(answers), vms=[vm for answer in answers for vm in answer.vms])


def keep(vms: Sequence[VM], status: Sequence[str] | None = None, name_pattern: str | None = None) -> list[VM]:
    """VMs whose status is one of `status` (any case) and whose name matches the glob."""
    wanted = {s.upper() for s in status or []}
    return [vm for vm in vms if (not wanted or vm.status.upper() in wanted)
            and (not name_pattern or fnmatch.fnmatch(vm.name, name_pattern))]


@task(name="fedcloud-list-servers", retries=1, retry_delay_seconds=10)
@redact_errors
async def list_servers(fedcloud: FedCloud | str, site: str, vo: str | None = None) -> SiteServers:
    """The VMs of one site (a failing site is reported in the result, not raised)."""
    block = FedCloud.resolve(fedcloud)
    chosen = _choose(block, [site])[0]
    vo = vo or block.default_vo
    if not vo:
        raise ValueError("vo: name a VO (or set default_vo on the FedCloud block)")
    return await asyncio.to_thread(site_servers, block.pool(), chosen, vo)


@task(name="fedcloud-vm-inventory")
@redact_errors
async def vm_inventory(fedcloud: FedCloud | str, vo: str | None = None, sites: Sequence[str] | None = None,
                       status: Sequence[str] | None = None, name_pattern: str | None = None) -> Inventory:
    """Every VM of the VO on many sites, concurrently; per-site failures recorded, not raised."""
    block = FedCloud.resolve(fedcloud)
    vo = vo or block.default_vo
    if not vo:
        raise ValueError("vo: name a VO (or set default_vo on the FedCloud block)")
    result = await inventory(block, vo, sites)
    for answer in result.sites:
        answer.vms = keep(answer.vms, status, name_pattern)
    result.vms = keep(result.vms, status, name_pattern)
    log = run_logger()
    for failure in result.failures:
        log.warning("FedCloud site %s: %s — %s", failure.site, failure.kind, failure.message)
    log.info("%d VM(s) of %s on %d site(s), %d site(s) without an answer", len(result.vms), vo,
             len(result.sites) - len(result.failures), len(result.failures))
    await _publish(result)
    return result


async def _publish(result: Inventory) -> None:
    """The UI's view: a table of VMs (`vm-inventory`) and a summary per site (`vm-inventory-sites`)."""
    if not in_run():
        return
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    from tasks.artifacts import publish

    await publish("VM table", acreate_table_artifact, result.table(), key="vm-inventory",
                  description=f"FedCloud VMs of {result.vo}")
    await publish("site summary", acreate_markdown_artifact, result.markdown(), key="vm-inventory-sites",
                  description=f"FedCloud sites asked for {result.vo}")
