"""EGI FedCloud sites and their VMs: the OpenStack access (Keystone federation + Nova).

A FedCloud site is an OpenStack cloud whose Keystone trusts EGI Check-in: the
Check-in access token is traded for an unscoped Keystone token
(`OS-FEDERATION/identity_providers/egi.eu/protocols/openid/auth`), that for a
token scoped to the VO's project, whose catalog names the Nova endpoint.
keystoneauth1's `v3.OidcAccessToken` does the exchange; novaclient lists servers.

- `Site`: one Keystone endpoint of a site, as EGI describes it (fedcloud-catchall-operations
  `sites/*.yaml`, the same files fedcloudclient reads from `~/.config/fedcloud/site-config/`).
  A site is not a name: one GOCDB site can have several endpoints (several files with
  the same `gocdb`), so a `Site` is named `NAME@KEYSTONE-HOST` where a name is not enough
  (`select_sites`).
- `SitePool`: per endpoint ONE federation (one unscoped Keystone token) rescoped to each
  project, the Check-in token rotated in place when the provider refreshes it, the Nova
  microversion discovered once per endpoint and region.
- `site_servers()`: one endpoint's VMs as normalised rows (flavor and image names resolved
  with one listing each), or the reason it failed — a site being down must not cost the
  user the other sites.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from prefect_egi.tasks.http import is_certificate_failure, require_https

logger = logging.getLogger("prefect_egi.fedcloud")

#: where fedcloudclient keeps site configuration (same format as fedcloud-catchall-operations)
SITE_CONFIG_DIR = "~/.config/fedcloud/site-config"
#: below this Nova returns flavors as {id}; from it on, embedded (original_name, vcpus, ram…)
FLAVOR_EMBEDDED_FROM = (2, 47)
#: the keystoneauth plugin name of what this package does (fedcloudclient's default `os_auth_type`);
#: a site file's top-level `auth` names another plugin when the site is not reached by federation
CHECKIN_FEDERATION = "v3oidcaccesstoken"
#: Glance's own page size limit (`api_limit_max`); pages beyond it follow `next`
IMAGE_PAGE = 1000


def keystone_url(value: str, what: str = "endpoint") -> str:
    """A Keystone URL as keystoneauth uses it: https (http only on this machine), `/v3` at the end."""
    value = require_https(value, what)
    return value if value.endswith("/v3") else value + "/v3"


#: the ports EGI sites serve Keystone on: left out of an endpoint's label
USUAL_KEYSTONE_PORTS = (443, 5000)


def endpoint_label(name: str, endpoint: str) -> str:
    """`NAME@KEYSTONE-HOST` (with `:PORT` when Keystone listens on an unusual port, so that
    two endpoints on one host still differ): how a user names one endpoint of a site."""
    parts = urlsplit(endpoint)
    host = parts.hostname or endpoint
    port = parts.port
    return f"{name}@{host}:{port}" if port and port not in USUAL_KEYSTONE_PORTS else f"{name}@{host}"


class Site(BaseModel):
    """One Keystone endpoint of a FedCloud site: where it is and which project each VO uses."""

    name: str = Field(description="Site name (the GOCDB name); several endpoints may share it.")
    endpoint: str = Field(description="Keystone v3 URL, e.g. https://keystone.example.org:5000/v3.")
    identity_provider: str = Field(default="egi.eu", description="Keystone's name for EGI Check-in.")
    protocol: str = Field(default="openid", description="Federation protocol at that identity provider.")
    projects: dict[str, str] = Field(default_factory=dict, description="VO → OpenStack project id (discovered when missing).")
    region: str | None = Field(default=None, description="OpenStack region to use (the catalog's first when unset).")
    regions: dict[str, str] = Field(default_factory=dict, description="VO → region, where a VO's differs from `region`.")
    auth_type: str = Field(default=CHECKIN_FEDERATION,
                           description="keystoneauth plugin the site expects; only Check-in federation "
                                       f"({CHECKIN_FEDERATION}) is supported.")
    source: str | None = Field(default=None, description="The site file this endpoint was read from.")

    @field_validator("endpoint")
    @classmethod
    def _v3(cls, value: str) -> str:
        return keystone_url(value)

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or self.endpoint

    @property
    def label(self) -> str:
        """`NAME@KEYSTONE-HOST`: names this endpoint where the site has several."""
        return endpoint_label(self.name, self.endpoint)

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies the endpoint's federation (not its name: two sites may share one)."""
        return (self.endpoint, self.identity_provider, self.protocol)

    def region_for(self, vo: str) -> str | None:
        return self.regions.get(vo) or self.region

    def unsupported_auth(self) -> str | None:
        """Why this package cannot log in here with a Check-in token, or None when it can."""
        if self.auth_type == CHECKIN_FEDERATION:
            return None
        return (f"the site authenticates with `{self.auth_type}`, not with EGI Check-in federation "
                f"({CHECKIN_FEDERATION}): a Check-in token cannot log in here (for "
                "v3applicationcredential EGI's operations hold an OpenStack application credential per VO) "
                "— nothing was sent to the site")


def site_from_config(data: Mapping[str, Any], source: str = "site config") -> Site:
    """A `Site` from one fedcloud-catchall-operations document
    (`{gocdb, endpoint, protocol?, region?, auth?, vos: [{name, auth: {project_id?, region?}}]}`).

    A VO listed twice keeps its first entry, as fedcloudclient does (`find_endpoint_and_project_id`
    returns the first match), with a warning naming the file and the entries ignored."""
    try:
        projects: dict[str, str] = {}
        regions: dict[str, str] = {}
        seen: dict[str, Any] = {}
        for vo in data.get("vos") or []:
            name, auth = str(vo["name"]), vo.get("auth") or {}
            if name in seen:
                if auth != seen[name]:
                    _warn_duplicate(source, name, seen[name], auth)
                continue
            seen[name] = auth
            if auth.get("project_id"):
                projects[name] = str(auth["project_id"])
            if auth.get("region"):
                regions[name] = str(auth["region"])
        auth_type = data.get("auth")
        return Site(name=str(data["gocdb"]), endpoint=str(data["endpoint"]),
                    protocol=str(data.get("protocol") or "openid"), projects=projects,
                    region=str(data["region"]) if data.get("region") else None, regions=regions,
                    auth_type=str(auth_type) if isinstance(auth_type, str) and auth_type else CHECKIN_FEDERATION,
                    source=source)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{source}: not a FedCloud site description ({type(exc).__name__}: {exc}); expected "
                         "gocdb, endpoint and vos: [{name, auth: {project_id}}]") from None


_warned_duplicates: set[tuple[str, str]] = set()


def _warn_duplicate(source: str, vo: str, kept: Any, ignored: Any) -> None:
    """Once per file and VO: a site file read on every inventory must not flood the log."""
    if (source, vo) in _warned_duplicates:
        return
    _warned_duplicates.add((source, vo))
    logger.warning("%s: VO %s is listed more than once; using its first entry (%s) as fedcloudclient does, "
                   "ignoring %s — fix the site file", source, vo, _describe_auth(kept), _describe_auth(ignored))


def _describe_auth(auth: Any) -> str:
    if isinstance(auth, Mapping) and auth:
        return ", ".join(f"{k} {v}" for k, v in auth.items())
    return "no project"


def load_site_configs(folders: Iterable[str | Path]) -> list[Site]:
    """Every `*.yaml` site description in these folders (missing folders are skipped), one
    `Site` per file: two files with the same `gocdb` are two endpoints of that site."""
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


def merge_sites(inline: Sequence[Site], from_files: Sequence[Site]) -> list[Site]:
    """Every endpoint once: an inline `Site` replaces a file's entry for the same site name and
    endpoint (e.g. to add a project id); a second file for an endpoint already read is skipped.
    Sorted by name, then Keystone URL."""
    found: dict[tuple[str, str], Site] = {}
    for site in from_files:
        found.setdefault((site.name, site.endpoint), site)
    found.update({(site.name, site.endpoint): site for site in inline})
    return sorted(found.values(), key=lambda s: (s.name, s.endpoint))


def site_labels(sites: Sequence[Site]) -> dict[tuple[str, str], str]:
    """How to call each endpoint: its site name where that is enough, `NAME@HOST` otherwise."""
    count: dict[str, int] = {}
    for site in sites:
        count[site.name] = count.get(site.name, 0) + 1
    return {(s.name, s.endpoint): s.name if count[s.name] == 1 else s.label for s in sites}


def select_sites(sites: Sequence[Site], selectors: Sequence[str] | None = None, *, vo: str | None = None,
                 single: bool = False, field: str = "sites") -> list[Site]:
    """The endpoints `selectors` name, in order, each once — or an error naming the field and the choices.

    A selector is a site name (all of its endpoints), `NAME@KEYSTONE-HOST` (one endpoint of a site
    that has several), or the Keystone URL itself. With `single`, exactly one endpoint must come
    out: a name with several endpoints is narrowed to those whose configuration lists `vo`, and
    stays an error when that leaves more (or none) than one.
    """
    if not selectors:
        if not sites:
            raise ValueError(f"{field}: no FedCloud site is configured")
        return list(sites)
    chosen: list[Site] = []
    unknown: list[str] = []
    for selector in selectors:
        matches = _matching(sites, selector)
        if not matches:
            unknown.append(selector)
            continue
        if single and len(matches) > 1:
            matches = _one_of(matches, selector, vo, field)
        chosen += [s for s in matches if s not in chosen]
    if unknown:
        labels = sorted(set(site_labels(sites).values()))
        raise ValueError(f"{field}: unknown site(s) {', '.join(unknown)}; configured: {', '.join(labels) or 'none'}")
    return chosen


def _matching(sites: Sequence[Site], selector: str) -> list[Site]:
    if "://" in selector:
        try:
            url = keystone_url(selector.strip())
        except ValueError:
            return []
        return [s for s in sites if s.endpoint == url]
    if "@" in selector:
        return [s for s in sites if selector in (s.label, f"{s.name}@{s.host}")]
    return [s for s in sites if s.name == selector]


def _one_of(matches: list[Site], selector: str, vo: str | None, field: str) -> list[Site]:
    with_vo = [s for s in matches if vo and vo in s.projects]
    if len(with_vo) == 1:
        return with_vo
    choices = ", ".join(s.label for s in matches)
    why = f" and {len(with_vo)} of them list VO {vo}" if vo and with_vo else ""
    raise ValueError(f"{field}: site {selector} has {len(matches)} Keystone endpoints{why}; name one as "
                     f"NAME@KEYSTONE-HOST: {choices} (or give its Keystone URL)")


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
    endpoint: str = ""


class SiteFailure(BaseModel):
    """Why a site gave no VMs, in words a user can act on."""

    site: str
    # unreachable | timeout | tls | unauthorized | not-mapped | vo-not-supported | unsupported-auth
    # | server-error | error
    kind: str
    message: str
    endpoint: str = ""


class SiteServers(BaseModel):
    site: str
    project: str | None = None
    microversion: str | None = None
    vms: list[VM] = Field(default_factory=list)
    failure: SiteFailure | None = None
    endpoint: str = ""
    region: str | None = None


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


def normalise(site: str, project: str, server: Mapping[str, Any], now: datetime | None = None, *,
              flavors: Mapping[str, str] | None = None, images: Mapping[str, str] | None = None,
              endpoint: str = "") -> VM:
    """A Nova server body → a `VM` row. The flavor by name: embedded (microversion 2.47+), else
    looked up in `flavors` (id → name, the site's flavor listing); the image by name from
    `images` (id → name, the site's image listing). An id nobody can name stays an id."""
    now = now or datetime.now(timezone.utc)
    flavor = server.get("flavor") or {}
    flavor_id = str(flavor.get("id") or "")
    image = server.get("image")
    image_id = str(image.get("id", "")) if isinstance(image, dict) else ""
    addresses = [entry.get("addr", "") for entries in (server.get("addresses") or {}).values() for entry in entries]
    created = _created(server.get("created"))
    return VM(
        site=site, project=project, id=str(server.get("id", "")), name=str(server.get("name", "")),
        status=str(server.get("status", "")),
        flavor=str(flavor.get("original_name") or (flavors or {}).get(flavor_id) or flavor_id),
        image=(images or {}).get(image_id) or image_id if isinstance(image, dict) else "(volume)",
        addresses=[a for a in addresses if a], created=created, age=_age(created, now), endpoint=endpoint,
    )


def flavor_names(flavors: Iterable[Any]) -> dict[str, str]:
    """id → name from a Nova flavor listing (novaclient objects or plain bodies)."""
    found = {}
    for flavor in flavors:
        body = flavor if isinstance(flavor, Mapping) else flavor.to_dict()
        if body.get("id") and body.get("name"):
            found[str(body["id"])] = str(body["name"])
    return found


def image_names(page: Mapping[str, Any]) -> dict[str, str]:
    """id → name from one page of Glance v2's `GET /v2/images`."""
    return {str(i["id"]): str(i["name"]) for i in page.get("images") or [] if i.get("id") and i.get("name")}


# -- sessions ---------------------------------------------------------------------------------

def _federation(token: Callable[[], str], site: Site) -> Any:
    """keystoneauth's `v3.OidcAccessToken` for the endpoint's unscoped token: it asks `token()`
    each time it federates, so a re-federation after the Keystone token expired never sends
    a stale Check-in token."""
    from keystoneauth1.identity import v3

    class CheckinFederation(v3.OidcAccessToken):
        def get_unscoped_auth_ref(self, session: Any) -> Any:
            self.access_token = token()
            return super().get_unscoped_auth_ref(session)

    return CheckinFederation(auth_url=site.endpoint, identity_provider=site.identity_provider,
                             protocol=site.protocol, access_token=token())


def _rescoping(federation: Any, site: Site, project_id: str) -> Any:
    """A plugin scoped to `project_id` that never federates itself: it rescopes the endpoint's
    one unscoped token (`federation`), as keystoneauth's own flow does after federating — so an
    inventory federates each endpoint once, not once for discovery and again per project."""
    from keystoneauth1.identity import v3

    class Rescoped(v3.OidcAccessToken):
        def get_unscoped_auth_ref(self, session: Any) -> Any:
            if self._unscoped_auth_ref is not None and self._unscoped_auth_ref is federation.auth_ref:
                # asked again for the unscoped token we hold: Keystone refused to rescope it
                federation.invalidate()
            return federation.get_access(session)

    return Rescoped(auth_url=site.endpoint, identity_provider=site.identity_provider, protocol=site.protocol,
                    access_token="(rescoped: never sent)", project_id=project_id)


class _Endpoint:
    """One Keystone endpoint's sessions: the unscoped one (federation) and one per project."""

    def __init__(self, token: Callable[[], str], site: Site, timeout: float, verify: bool | str):
        from keystoneauth1 import session as ks_session

        self.federation = _federation(token, site)
        self.unscoped = ks_session.Session(auth=self.federation, timeout=timeout, verify=verify)
        self.scoped: dict[str, Any] = {}
        self.site, self.timeout, self.verify = site, timeout, verify
        self.lock = threading.Lock()

    def rotate(self, token: str) -> None:
        """A refreshed Check-in token: the next request federates again, with it."""
        if self.federation.access_token != token:
            self.federation.access_token = token
            self.federation.invalidate()
            for sess in self.scoped.values():
                sess.auth.invalidate()

    def session(self, project_id: str | None) -> Any:
        from keystoneauth1 import session as ks_session

        if project_id is None:
            return self.unscoped
        sess = self.scoped.get(project_id)
        if sess is None:
            sess = ks_session.Session(auth=_rescoping(self.federation, self.site, project_id),
                                      timeout=self.timeout, verify=self.verify)
            self.scoped[project_id] = sess
        return sess


class SitePool:
    """keystoneauth sessions per Keystone endpoint, sharing one Check-in token source.

    `token()` is called before every use: when the provider has refreshed the token, the
    endpoint's federation gets it in place and is invalidated, so the next request federates
    again with it; and every federation (also one keystoneauth starts by itself, mid-listing,
    when its Keystone token runs out) asks for the current token. Each endpoint federates once
    (one unscoped Keystone token); its project sessions rescope that token.
    """

    def __init__(self, token: Callable[[], str], timeout: float = 30.0, verify: bool | str = True):
        self.token, self.timeout, self.verify = token, timeout, verify
        self._endpoints: dict[tuple[str, str, str], _Endpoint] = {}
        self._versions: dict[tuple[tuple[str, str, str], str | None], str] = {}
        self._lock = threading.Lock()

    def _endpoint(self, site: Site) -> _Endpoint:
        with self._lock:
            endpoint = self._endpoints.get(site.key)
            if endpoint is None:
                endpoint = self._endpoints[site.key] = _Endpoint(self.token, site, self.timeout, self.verify)
            return endpoint

    def session(self, site: Site, project_id: str | None) -> Any:
        token = self.token()
        endpoint = self._endpoint(site)
        with endpoint.lock:
            endpoint.rotate(token)
            return endpoint.session(project_id)

    def token_sent(self, site: Site) -> str | None:
        """The Check-in token this endpoint last federated with (to explain a refusal)."""
        endpoint = self._endpoints.get(site.key)
        return endpoint.federation.access_token if endpoint else None

    def projects(self, site: Site) -> list[dict[str, Any]]:
        """The projects the user may scope to on this site (the unscoped token)."""
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

    def nova(self, site: Site, project_id: str, region: str | None = None) -> Any:
        """A novaclient at the newest microversion this endpoint's region supports (discovered once)."""
        from novaclient import api_versions
        from novaclient import client as nova_client

        sess = self.session(site, project_id)
        version = self._versions.get((site.key, region))
        if version is None:
            probe = nova_client.Client("2.1", session=sess, region_name=region)
            version = api_versions.discover_version(probe, api_versions.APIVersion("2.latest")).get_string()
            self._versions[(site.key, region)] = version
        return nova_client.Client(version, session=sess, region_name=region)

    def images(self, site: Site, project_id: str, region: str | None = None) -> dict[str, str]:
        """id → name of the images the project sees (Glance v2, every page): one listing per call."""
        sess = self.session(site, project_id)
        root = sess.get_endpoint(service_type="image", interface="public", region_name=region).rstrip("/")
        root = root.removesuffix("/v2")
        found: dict[str, str] = {}
        url: str | None = f"{root}/v2/images?limit={IMAGE_PAGE}"
        while url:
            page = sess.get(url, authenticated=True).json()
            found.update(image_names(page))
            following = page.get("next")
            url = f"{root}{following}" if following and page.get("images") else None
        return found


def project_matches(project: Mapping[str, Any], vo: str) -> bool:
    """Sites name a VO's project after the VO, sometimes as `VO:<vo>` or with a suffix."""
    name = str(project.get("name", "")).lower()
    vo = vo.lower()
    return name == vo or name == f"vo:{vo}" or bool(re.fullmatch(rf"{re.escape(vo)}[-_:]\w+", name))


# -- why a site failed ------------------------------------------------------------------------

#: how long a token must still live for its refusal not to be blamed on expiry (fedcloudclient's margin)
EXPIRY_MARGIN_SECONDS = 30


def refusal(vo: str | None, token: str | None, step: str, now: datetime | None = None) -> SiteFailure:
    """What a 401 means, told from the Check-in token that was sent (its claims, read without the
    signature: the site checked that). Keystone answers the same 401 to an expired token and to a
    valid one its federation mapping does not map — only the token can tell them apart."""
    from prefect_egi.tasks.checkin.errors import MalformedTokenError
    from prefect_egi.tasks.checkin.tokens import parse_token

    generic = SiteFailure(site="", kind="unauthorized",
                          message="the site refused the Check-in token (HTTP 401): expired, or not accepted here")
    try:
        claims = parse_token(token).claims if token else None
    except MalformedTokenError:
        claims = None
    if claims is None or claims.expires_at is None:
        return generic  # an opaque token: its expiry is unknown here
    now = now or datetime.now(timezone.utc)
    left = (claims.expires_at - now).total_seconds()
    if left <= EXPIRY_MARGIN_SECONDS:
        return SiteFailure(site="", kind="unauthorized", message=(
            f"the site refused the Check-in token (HTTP 401): it expired at {claims.expires_at:%Y-%m-%d %H:%M:%S} UTC "
            "— refresh it (or give the block a refresh token) and run again"))
    carried = ", ".join(claims.vos) or "none"
    roles = _roles(claims.entitlements, vo) if vo else []
    held = f" (roles in it: {', '.join(roles)})" if roles else ""
    if step == "service":
        return SiteFailure(site="", kind="unauthorized", message=(
            "the site's compute service refused its own Keystone token (HTTP 401) although your Check-in token "
            f"is valid until {claims.expires_at:%H:%M:%S} UTC: the site may have revoked it — run again"))
    if step == "rescope":
        return SiteFailure(site="", kind="not-mapped", message=(
            f"the site's federation accepted your Check-in identity but refused it the project of VO {vo}{held}: "
            f"your valid token carries the VOs {carried} — the project id may be wrong, or the site maps your "
            "entitlements to other projects"))
    return SiteFailure(site="", kind="not-mapped", message=(
        f"the site's federation does not map this identity: your valid Check-in token (expires "
        f"{claims.expires_at:%H:%M:%S} UTC) carries the VOs {carried}; asked for VO {vo}{held}. "
        "The site's mapping rules accept other entitlements (often role=vm_operator of the VO): ask the VO "
        "manager for that role, or the site to map yours"))


def _roles(entitlements: Sequence[str], vo: str) -> list[str]:
    """The roles an identity holds in `vo`, from its Check-in entitlements
    (`urn:mace:egi.eu:group:<vo>[:<subgroup>…]:role=<role>#aai.egi.eu`)."""
    pattern = re.compile(rf"^urn:mace:egi\.eu:group:{re.escape(vo)}:(?:(.+):)?role=([^#]+)#aai\.egi\.eu$")
    found = []
    for entitlement in entitlements:
        if match := pattern.match(entitlement):
            found.append(f"{match[1]}:role={match[2]}" if match[1] else f"role={match[2]}")
    return sorted(set(found))


def _step(exc: BaseException, site: Site) -> str:
    """Which request a 401 answered: the federation, the rescoping, or a service behind Keystone."""
    url = str(getattr(exc, "url", "") or "")
    if url.endswith(f"/protocols/{site.protocol}/auth"):
        return "federation"
    if url.endswith("/auth/tokens"):
        return "rescope"
    return "service"


def site_failure(site: Site | str, exc: BaseException, *, vo: str | None = None, token: str | None = None) -> SiteFailure:
    """keystoneauth / novaclient exceptions → what went wrong with the site (`token`: the Check-in
    token sent, to tell an expired token from an identity the site does not map)."""
    from keystoneauth1 import exceptions as ks

    try:
        from novaclient import exceptions as nova
        nova_unauthorized: tuple[type[BaseException], ...] = (nova.Unauthorized,)
        nova_server: tuple[type[BaseException], ...] = (nova.ClientException,)
    except ImportError:  # pragma: no cover - novaclient is a dependency
        nova_unauthorized = nova_server = ()
    name, endpoint = (site.name, site.endpoint) if isinstance(site, Site) else (site, "")

    def failure(kind: str, message: str) -> SiteFailure:
        return SiteFailure(site=name, kind=kind, message=message, endpoint=endpoint)

    status = getattr(exc, "http_status", None) or getattr(exc, "code", None)
    if isinstance(exc, ks.SSLError) or is_certificate_failure(exc):
        return failure("tls", "the site's TLS certificate did not verify; give the CA bundle that signed it "
                       "(ca_bundle) — verification stays on")
    if isinstance(exc, (ks.ConnectTimeout, ks.RequestTimeout)):
        return failure("timeout", f"no answer within the timeout ({type(exc).__name__})")
    if isinstance(exc, (ks.ConnectFailure, ks.DiscoveryFailure)):
        return failure("unreachable", f"{type(exc).__name__}: {_first_line(exc)}")
    if isinstance(exc, ks.EndpointNotFound):
        return failure("error", f"the site's service catalog has no public endpoint for this ({_first_line(exc)}); "
                       "check the region of the site file")
    if isinstance(exc, ks.Unauthorized) or isinstance(exc, nova_unauthorized) or status == 401:
        step = _step(exc, site) if isinstance(site, Site) else "service"
        told = refusal(vo, token, step)
        return failure(told.kind, told.message)
    if isinstance(status, int) and status >= 500:
        return failure("server-error", f"HTTP {status}: {_first_line(exc)}")
    if isinstance(exc, (ks.HttpError, *nova_server)):
        return failure("error", f"HTTP {status}: {_first_line(exc)}")
    return failure("error", f"{type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def site_servers(pool: SitePool, site: Site, vo: str) -> SiteServers:
    """One endpoint's VMs for the VO, or the reason there are none (never raises for the site's
    faults). Flavor and image names cost one flavor listing (only below microversion 2.47, where
    servers carry flavor ids) and one image listing, whatever the number of VMs."""
    region = site.region_for(vo)
    answer = SiteServers(site=site.name, endpoint=site.endpoint, region=region)
    if why := site.unsupported_auth():
        answer.failure = SiteFailure(site=site.name, kind="unsupported-auth", message=why, endpoint=site.endpoint)
        return answer
    try:
        project = pool.project_for(site, vo)
        if project is None:
            answer.failure = SiteFailure(
                site=site.name, kind="vo-not-supported", endpoint=site.endpoint,
                message=f"no project for VO {vo} on this site (not in its configuration, and your token "
                        "lists none by that name)")
            return answer
        nova = pool.nova(site, project, region)
        bodies = [server.to_dict() for server in nova.servers.list(detailed=True, limit=-1)]
        flavors = images = {}
        if any(not (body.get("flavor") or {}).get("original_name") for body in bodies):
            flavors = _names_or_ids(lambda: flavor_names(nova.flavors.list(detailed=True)))
        if any(isinstance(body.get("image"), dict) for body in bodies):
            images = _names_or_ids(lambda: pool.images(site, project, region))
        now = datetime.now(timezone.utc)
        answer.project, answer.microversion = project, nova.api_version.get_string()
        answer.vms = [normalise(site.name, project, body, now, flavors=flavors, images=images, endpoint=site.endpoint)
                      for body in bodies]
        return answer
    except Exception as exc:  # every failure of one site is that site's row, not the run's end
        answer.failure = site_failure(site, exc, vo=vo, token=pool.token_sent(site))
        return answer


def _names_or_ids(listing: Callable[[], dict[str, str]]) -> dict[str, str]:
    """Names are a convenience: a listing the site refuses leaves the ids, never the VMs."""
    try:
        return listing()
    except Exception as exc:  # noqa: BLE001 - the VMs were listed; their names are optional
        logger.debug("name listing failed (%s): showing ids", type(exc).__name__)
        return {}
