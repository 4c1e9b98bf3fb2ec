"""FedCloud tasks: one site's VMs, or every VM of a VO over every configured site."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prefect_egi.tasks.fedcloud.block import FedCloud
from prefect_egi.tasks.fedcloud.client import SiteServers, site_servers
from prefect_egi.tasks.fedcloud.inventory import Inventory, inventory
from prefect_egi.tasks.reporting import in_run, publish, run_logger
from prefect_egi.tasks.task_base import egi_task

FedCloudArg = FedCloud | str


@egi_task(name="fedcloud-list-servers", retries=1, retry_delay_seconds=10)
async def list_servers(fedcloud: FedCloudArg, site: str, vo: str | None = None) -> SiteServers:
    """The VMs of one site; a failing site is reported in the result, not raised.

    Args:
        fedcloud: a `FedCloud` block or the name of a saved one.
        site: the site's name (as configured); for a site with several Keystone endpoints,
            `NAME@KEYSTONE-HOST` or the Keystone URL (a name alone picks the endpoint whose
            configuration lists the VO, when only one does).
        vo: the VO whose project to look into (default: the block's `default_vo`).

    Returns:
        `SiteServers`: the site's VMs, its project and Nova version — or its `failure`
        (kind and message: unreachable, timeout, tls, unauthorized — the token expired —,
        not-mapped — a valid token the site's federation does not map —, vo-not-supported,
        unsupported-auth, server-error, error).

    Raises:
        ValueError: the site is not configured, names several endpoints, or no VO is named.

    Example:
        answer = list_servers("fedcloud", "CESNET-MCC")
        answer.failure or [vm.name for vm in answer.vms]
    """
    block = FedCloud.resolve(fedcloud)
    vo = block.vo_or_default(vo)
    chosen = block.choose([site], vo=vo, single=True, field="site")[0]
    return await asyncio.to_thread(site_servers, block.client(), chosen, vo)


@egi_task(name="fedcloud-vm-inventory")
async def vm_inventory(fedcloud: FedCloudArg, vo: str | None = None, sites: Sequence[str] | None = None,
                       status: Sequence[str] | None = None, name_pattern: str | None = None) -> Inventory:
    """Every VM of the VO on many sites, all asked at once; a site that fails is a row, not the end.

    The UI gets a table of VMs (artifact `vm-inventory`) and a summary per site with the
    reason for each site that could not answer (`vm-inventory-sites`).

    Args:
        fedcloud: a `FedCloud` block or the name of a saved one.
        vo: the VO (default: the block's `default_vo`).
        sites: only these sites (default: every configured site): site names (every endpoint of
            the site), `NAME@KEYSTONE-HOST` (one endpoint) or Keystone URLs.
        status: only VMs in these states, e.g. `["ACTIVE"]`.
        name_pattern: only VMs whose name matches this glob, e.g. `worker-*`.

    Returns:
        An `Inventory`: `vms` (site, name, status, flavor, image, addresses, age), `sites`
        (one answer per site) and `failures`.

    Raises:
        ValueError: an unknown site, no site configured, or no VO named.

    Example:
        inventory = vm_inventory("fedcloud", status=["ACTIVE"])           # script or sync flow
        inventory = await vm_inventory("fedcloud", status=["ACTIVE"])     # async code
        for vm in inventory.vms:
            print(vm.site, vm.name, vm.status, vm.flavor)
    """
    block = FedCloud.resolve(fedcloud)
    vo = block.vo_or_default(vo)
    result = (await inventory(block.client(), block.choose(sites), vo, concurrency=block.concurrency,
                              site_deadline=block.site_deadline_seconds)).keep(status, name_pattern)
    log = run_logger()
    for failure in result.failures:
        log.warning("FedCloud site %s: %s — %s", result.label(failure), failure.kind, failure.message)
    log.info("%d VM(s) of %s on %d site(s), %d site(s) without an answer", len(result.vms), vo,
             len(result.sites) - len(result.failures), len(result.failures))
    await _show(result)
    return result


async def _show(result: Inventory) -> None:
    """The UI's view: a table of VMs (`vm-inventory`) and a summary per site (`vm-inventory-sites`)."""
    if not in_run():
        return
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    await publish("VM table", acreate_table_artifact, result.table(), key="vm-inventory",
                  description=f"FedCloud VMs of {result.vo}")
    await publish("site summary", acreate_markdown_artifact, result.markdown(), key="vm-inventory-sites",
                  description=f"FedCloud sites asked for {result.vo}")
