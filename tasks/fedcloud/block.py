"""The `FedCloud` block: EGI FedCloud sites and the Check-in identity used on them."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, PrivateAttr

from prefect_egi.tasks.block_base import EgiBlock
from prefect_egi.tasks.checkin.block import CheckinCredentials
from prefect_egi.tasks.fedcloud.client import (
    SITE_CONFIG_DIR,
    Site,
    SitePool,
    load_site_configs,
    merge_sites,
    select_sites,
)
from prefect_egi.tasks.http import tls_verify


class FedCloud(EgiBlock):
    """EGI FedCloud sites and the Check-in identity used on them.

    Sites come from fedcloudclient's folder `~/.config/fedcloud/site-config/` (the
    `sites/*.yaml` files of fedcloud-catchall-operations), from `sites` given here, or
    both. Each Keystone endpoint federates your Check-in token once and is asked on its
    own: a site with several endpoints (several files with one `gocdb`) is several
    `Site`s, named `NAME@KEYSTONE-HOST` where the name alone is not enough.

    Args:
        checkin: where the Check-in access token comes from.
        default_vo: the VO used when a flow does not name one.
        sites: sites given here (`Site(name=…, endpoint=…, projects={vo: project_id})`); one
            replaces a site file's entry for the same name and endpoint.
        site_config_dirs: folders of site files (*.yaml).
        concurrency: sites asked at the same time.
        timeout_seconds / site_deadline_seconds: per request, and per site in all.
        verify_tls / ca_bundle: certificate verification (on by default) and the CA to trust.

    Example:
        FedCloud(checkin=CheckinCredentials.load("egi-checkin"), default_vo="vo.access.egi.eu").save("fedcloud")
        inventory = vm_inventory("fedcloud", status=["ACTIVE"])
    """

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

    def client(self) -> SitePool:
        """The block's site pool: keystoneauth sessions shared by every call on this block
        object (the Check-in token rotates in place)."""
        if self._pool is None:
            # keystoneauth takes a CA bundle path (not an SSLContext) or a bool
            self._pool = SitePool(self.checkin.get_access_token, self.timeout_seconds,
                                  self.ca_bundle or tls_verify(self.verify_tls, what="the FedCloud sites"))
        return self._pool

    def all_sites(self) -> list[Site]:
        """Every configured Keystone endpoint, once: the site files' and the inline ones (an
        inline `Site` replaces a file's entry for the same name and endpoint). A site with
        several endpoints (several files with one `gocdb`) is listed once per endpoint."""
        return merge_sites(self.sites, load_site_configs(self.site_config_dirs))

    def choose(self, names: Sequence[str] | None = None, *, vo: str | None = None, single: bool = False,
               field: str = "sites") -> list[Site]:
        """The endpoints `names` name (every configured one when empty), or an error naming the
        unknown ones and what is configured.

        A name is a site name (all its endpoints), `NAME@KEYSTONE-HOST` (one endpoint of a site
        with several) or a Keystone URL. With `single` exactly one endpoint must result: a site
        name with several endpoints is narrowed to the one whose configuration lists `vo`."""
        sites = self.all_sites()
        if not names and not sites:
            raise ValueError(f"{field}: no FedCloud site is configured — add sites to the block, or site files "
                             f"to {', '.join(self.site_config_dirs)}")
        return select_sites(sites, names, vo=vo, single=single, field=field)

    def vo_or_default(self, vo: str | None) -> str:
        """`vo`, else the block's default VO, else an error saying how to name one."""
        vo = vo or self.default_vo
        if not vo:
            raise ValueError("vo: name a VO (or set default_vo on the FedCloud block)")
        return vo
