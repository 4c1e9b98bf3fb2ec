"""EGI FedCloud sites and their VMs: the OpenStack access (Keystone federation + Nova).

A FedCloud site is an OpenStack cloud whose Keystone trusts EGI Check-in: the
Check-in access token is traded for an unscoped Keystone token
(`OS-FEDERATION/identity_providers/egi.eu/protocols/openid/auth`), that for a
token scoped to the VO's project, whose catalog names the Nova endpoint.
keystoneauth1's `v3.OidcAccessToken` does the exchange; novaclient lists servers.

- `Site`: a site as EGI describes it (fedcloud-catchall-operations `sites/*.yaml`,
  the same files fedcloudclient reads from `~/.config/fedcloud/site-config/`).
- `SitePool`: one keystoneauth session per (site, project), the Check-in token
  rotated in place when the provider refreshes it, the Nova microversion
  discovered once per site.
- `site_servers()`: one site's VMs as normalised rows, or the reason it failed —
  a site being down must not cost the user the other sites.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from prefect_egi.tasks.http import is_certificate_failure, require_https

#: where fedcloudclient keeps site configuration (same format as fedcloud-catchall-operations)
SITE_CONFIG_DIR = "~/.config/fedcloud/site-config"
#: below this Nova returns flavors as {id}; from it on, embedded (original_name, vcpus, ram…)
FLAVOR_EMBEDDED_FROM = (2, 47)


class Site(BaseModel):
    """One FedCloud site: where its Keystone is and which project each VO uses."""

    name: str = Field(description="Site name (the GOCDB name).")
    endpoint: str = Field(description="Keystone v3 URL, e.g. https://keystone.example.org:5000/v3.")
    identity_provider: str = Field(default="egi.eu", description="Keystone's name for EGI Check-in.")
    protocol: str = Field(default="openid", description="Federation protocol at that identity provider.")
    projects: dict[str, str] = Field(default_factory=dict, description="VO → OpenStack project id (discovered when missing).")

    @field_validator("endpoint")
    @classmethod
    def _v3(cls, value: str) -> str:
        value = require_https(value, "endpoint")
        return value if value.endswith("/v3") else value + "/v3"


def site_from_config(data: Mapping[str, Any], source: str = "site config") -> Site:
    """A `Site` from one fedcloud-catchall-operations document
    (`{gocdb, endpoint, protocol?, vos: [{name, auth: {project_id}}]}`)."""
    try:
        projects = {str(vo["name"]): str(vo["auth"]["project_id"]) for vo in data.get("vos") or []
                    if (vo.get("auth") or {}).get("project_id")}
        return Site(name=str(data["gocdb"]), endpoint=str(data["endpoint"]),
                    protocol=str(data.get("protocol") or "openid"), projects=projects)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{source}: not a FedCloud site description ({type(exc).__name__}: {exc}); expected "
                         "gocdb, endpoint and vos: [{name, auth: {project_id}}]") from None


def load_site_configs(folders: Iterable[str | Path]) -> list[Site]:
    """Every `*.yaml` site description in these folders (missing folders are skipped)."""
    import yaml

    sites: list[Site] = []
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            continue
        for file in sorted(path.glob("*.y*ml")):
            try:
                data = yaml.safe_load(file.read_text())
            except yaml.YAMLError as exc:
                raise ValueError(f"{file}: not valid YAML ({exc})") from None
            sites.append(site_from_config(data or {}, str(file)))
    return sites


# -- what one site answers --------------------------------------------------------------------

class VM(BaseModel):
    """One server, the same columns whatever the site's Nova version."""

    site: str
    project: str
    id: str
    name: str
    status: str
    flavor: str
    image: str
    addresses: list[str]
    created: datetime | None
    age: str


class SiteFailure(BaseModel):
    """Why a site gave no VMs, in words a user can act on."""

    site: str
    kind: str  # unreachable | timeout | tls | unauthorized | vo-not-supported | server-error | error
    message: str


class SiteServers(BaseModel):
    site: str
    project: str | None = None
    microversion: str | None = None
    vms: list[VM] = Field(default_factory=list)
    failure: SiteFailure | None = None


def _age(created: datetime | None, now: datetime) -> str:
    if created is None:
        return ""
    seconds = max(0, int((now - created).total_seconds()))
    days, rest = divmod(seconds, 86400)
    return f"{days}d {rest // 3600:02d}h" if days else f"{rest // 3600}h {rest % 3600 // 60:02d}m"


def _created(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def normalise(site: str, project: str, server: Mapping[str, Any], now: datetime | None = None) -> VM:
    """A Nova server body → a `VM` row (flavor by name when embedded, else its id)."""
    now = now or datetime.now(timezone.utc)
    flavor = server.get("flavor") or {}
    image = server.get("image")
    addresses = [entry.get("addr", "") for entries in (server.get("addresses") or {}).values() for entry in entries]
    created = _created(server.get("created"))
    return VM(
        site=site, project=project, id=str(server.get("id", "")), name=str(server.get("name", "")),
        status=str(server.get("status", "")),
        flavor=str(flavor.get("original_name") or flavor.get("id") or ""),
        image=str(image.get("id", "")) if isinstance(image, dict) else "(volume)",
        addresses=[a for a in addresses if a], created=created, age=_age(created, now),
    )


# -- sessions ---------------------------------------------------------------------------------

def _federation(token: Callable[[], str], site: Site, project_id: str | None) -> Any:
    """keystoneauth's `v3.OidcAccessToken` that asks `token()` each time it federates,
    so a re-federation after the Keystone token expired never sends a stale Check-in token."""
    from keystoneauth1.identity import v3

    class CheckinFederation(v3.OidcAccessToken):
        def get_unscoped_auth_ref(self, session: Any) -> Any:
            self.access_token = token()
            return super().get_unscoped_auth_ref(session)

    return CheckinFederation(auth_url=site.endpoint, identity_provider=site.identity_provider,
                             protocol=site.protocol, access_token=token(), project_id=project_id)


class SitePool:
    """keystoneauth sessions per (site, project), sharing one Check-in token source.

    `token()` is called before every use: when the provider has refreshed the
    token, the auth plugin gets it in place and is invalidated, so the next
    request federates again with it; and every federation (also one keystoneauth
    starts by itself, mid-listing, when its Keystone token runs out) asks for the
    current token.
    """

    def __init__(self, token: Callable[[], str], timeout: float = 30.0, verify: bool | str = True):
        self.token, self.timeout, self.verify = token, timeout, verify
        self._sessions: dict[tuple[str, str | None], Any] = {}
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()

    def session(self, site: Site, project_id: str | None) -> Any:
        from keystoneauth1 import session as ks_session

        token = self.token()
        with self._lock:
            sess = self._sessions.get((site.name, project_id))
            if sess is None:
                sess = ks_session.Session(auth=_federation(self.token, site, project_id), timeout=self.timeout,
                                          verify=self.verify)
                self._sessions[(site.name, project_id)] = sess
            elif sess.auth.access_token != token:
                sess.auth.access_token = token
                sess.auth.invalidate()
        return sess

    def projects(self, site: Site) -> list[dict[str, Any]]:
        """The projects the user may scope to on this site (unscoped token)."""
        sess = self.session(site, None)
        answer = sess.get(f"{site.endpoint}/auth/projects", authenticated=True)
        return list(answer.json().get("projects", []))

    def project_for(self, site: Site, vo: str) -> str | None:
        """The VO's project id: from the site's configuration, else discovered by name."""
        if vo in site.projects:
            return site.projects[vo]
        for project in self.projects(site):
            if project_matches(project, vo):
                return str(project["id"])
        return None

    def nova(self, site: Site, project_id: str) -> Any:
        """A novaclient at the newest microversion this site supports (discovered once)."""
        from novaclient import api_versions
        from novaclient import client as nova_client

        sess = self.session(site, project_id)
        version = self._versions.get(site.name)
        if version is None:
            probe = nova_client.Client("2.1", session=sess)
            version = api_versions.discover_version(probe, api_versions.APIVersion("2.latest")).get_string()
            self._versions[site.name] = version
        return nova_client.Client(version, session=sess)


def project_matches(project: Mapping[str, Any], vo: str) -> bool:
    """Sites name a VO's project after the VO, sometimes as `VO:<vo>` or with a suffix."""
    name = str(project.get("name", "")).lower()
    vo = vo.lower()
    return name == vo or name == f"vo:{vo}" or bool(re.fullmatch(rf"{re.escape(vo)}[-_:]\w+", name))


def site_failure(site: str, exc: BaseException) -> SiteFailure:
    """keystoneauth / novaclient exceptions → what went wrong with the site."""
    from keystoneauth1 import exceptions as ks

    try:
        from novaclient import exceptions as nova
        nova_unauthorized: tuple[type[BaseException], ...] = (nova.Unauthorized,)
        nova_server: tuple[type[BaseException], ...] = (nova.ClientException,)
    except ImportError:  # pragma: no cover - novaclient is a dependency
        nova_unauthorized = nova_server = ()
    status = getattr(exc, "http_status", None) or getattr(exc, "code", None)
    if isinstance(exc, ks.SSLError) or is_certificate_failure(exc):
        return SiteFailure(site=site, kind="tls", message="the site's TLS certificate did not verify; give the CA "
                           "bundle that signed it (ca_bundle) — verification stays on")
    if isinstance(exc, (ks.ConnectTimeout, ks.RequestTimeout)):
        return SiteFailure(site=site, kind="timeout", message=f"no answer within the timeout ({type(exc).__name__})")
    if isinstance(exc, (ks.ConnectFailure, ks.DiscoveryFailure)):
        return SiteFailure(site=site, kind="unreachable", message=f"{type(exc).__name__}: {_first_line(exc)}")
    if isinstance(exc, ks.Unauthorized) or isinstance(exc, nova_unauthorized) or status == 401:
        return SiteFailure(site=site, kind="unauthorized",
                           message="the site refused the Check-in token (HTTP 401): expired, or not accepted here")
    if isinstance(status, int) and status >= 500:
        return SiteFailure(site=site, kind="server-error", message=f"HTTP {status}: {_first_line(exc)}")
    if isinstance(exc, (ks.HttpError, *nova_server)):
        return SiteFailure(site=site, kind="error", message=f"HTTP {status}: {_first_line(exc)}")
    return SiteFailure(site=site, kind="error", message=f"{type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def site_servers(pool: SitePool, site: Site, vo: str) -> SiteServers:
    """One site's VMs for the VO, or the reason there are none (never raises for the site's faults)."""
    try:
        project = pool.project_for(site, vo)
        if project is None:
            return SiteServers(site=site.name, failure=SiteFailure(
                site=site.name, kind="vo-not-supported",
                message=f"no project for VO {vo} on this site (not in its configuration, and your token "
                        "lists none by that name)"))
        nova = pool.nova(site, project)
        servers = nova.servers.list(detailed=True, limit=-1)
        now = datetime.now(timezone.utc)
        vms = [normalise(site.name, project, server.to_dict(), now) for server in servers]
        return SiteServers(site=site.name, project=project, microversion=nova.api_version.get_string(), vms=vms)
    except Exception as exc:  # every failure of one site is that site's row, not the run's end
        return SiteServers(site=site.name, failure=site_failure(site.name, exc))
