"""`fedcloud-vm-inventory`: which VMs does my VO have running, on which FedCloud sites?

    from prefect_egi.flows import fedcloud_vm_inventory
    fedcloud_vm_inventory(vo="vo.access.egi.eu", status=["ACTIVE"])

Every configured site is asked at once (bounded); the UI gets one table of
VMs (artifact `vm-inventory`) and a markdown summary per site with the reason
for each site that could not answer (`vm-inventory-sites`). Deployed hourly.
"""

from typing import Annotated, Optional

from pydantic import Field

from prefect_egi.flows.base import egi_flow, load_block
from prefect_egi.tasks import FedCloud, Inventory, vm_inventory


@egi_flow(name="fedcloud-vm-inventory")
def fedcloud_vm_inventory(
    vo: Optional[str] = None,
    fedcloud_block: str = "fedcloud",
    sites: Optional[list[str]] = None,
    status: Optional[list[str]] = None,
    name_pattern: Annotated[Optional[str], Field(examples=["worker-*"])] = None,
) -> Inventory:
    """List the VO's VMs on FedCloud sites; sites that fail are reported, not fatal.

    Args:
        vo: The VO whose project to look into (default: the block's default_vo).
        fedcloud_block: Name of the FedCloud block (sites, Check-in credentials).
        sites: Only these sites (default: every configured site): a name means every endpoint
            of the site, NAME@KEYSTONE-HOST or a Keystone URL one endpoint.
        status: Only VMs in these states, e.g. ACTIVE, SHUTOFF, ERROR.
        name_pattern: Only VMs whose name matches this glob, e.g. worker-*.
    """
    block = load_block(FedCloud, fedcloud_block, "fedcloud_block")
    return vm_inventory(block, vo, sites, status, name_pattern)
