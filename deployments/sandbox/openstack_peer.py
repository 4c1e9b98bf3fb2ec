"""Local EGI FedCloud OpenStack sites: Keystone v3 with OIDC federation, and Nova.

Each site listens on its own port on 127.0.0.1 and speaks what a FedCloud site
(Keystone behind mod_auth_openidc, Nova behind keystonemiddleware) speaks, at
the paths keystoneauth1 and novaclient use:

- Keystone: discovery (`/`, `/v3`); the federation endpoint
  `/v3/OS-FEDERATION/identity_providers/egi.eu/protocols/openid/auth`, which
  validates a Check-in access token like mod_auth_openidc (RS256 against the
  issuer's JWKS, `iss`, `exp`) and then applies the site's mapping rules as Keystone
  does; `GET /v3/auth/projects`; `POST /v3/auth/tokens` rescoping to a project, with
  a service catalog (compute and image, per region);
- Nova under `/compute` (`/<region>/compute` for a site's further regions): version
  documents, servers (list, detail, show) and flavors with microversions (flavor
  embedded from 2.47, 406 above the site's maximum, version headers echoed) and
  Nova's `limit`/`marker` paging;
- Glance under `/image`: `GET /v2/images` with Glance's `limit`/`marker` paging and
  `next` link.

Mapping as EGI sites configure it (docs.egi.eu providers/cloud-compute/openstack
vo-config; tests/data/fedcloud/keystone-30-federation.json records a real Keystone 30
doing it): one rule per VO whose `OIDC-eduperson_entitlement` must match
`^<entitlement>$`, by default `urn:mace:egi.eu:group:<vo>:role=vm_operator#aai.egi.eu`
(what fedcloud-catchall-operations' vo-mappings.yaml lists for most VOs; `--rule`
sets another). An identity that no rule maps gets Keystone's 401 — the same answer an
expired token gets. A site can also be `error` (503 on everything) or `hang` (a black hole).
Tokens are opaque ids kept in memory that live Keystone's own `--token-expiration`
(3600 s, Keystone's default; a rescoped token keeps its unscoped token's expiry),
not the Check-in token's.

A control port serves `/_peer/stats`, `/_peer/reset`, `/_peer/fault`, `/_peer/mode`.

Run: `python openstack_peer.py --issuer URL --site NAME:healthy:vo.access.egi.eu=PROJECT_ID
[--rule NAME:VO=ENTITLEMENT] [--region NAME=RegionOne,WAW4-1] [--token-expiration 3600]`
prints one JSON line with the URLs, then serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from joserfc import jws, jwt
from joserfc.jwk import KeySet

IDP, PROTOCOL = "egi.eu", "openid"
ENTITLEMENT = "urn:mace:egi.eu:group:"
MODES = ("healthy", "error", "hang")
MIN_MICROVERSION, FLAVOR_EMBEDDED = (2, 1), (2, 47)
MAX_LIMIT = 1000  # Nova's default [api] max_limit
JWKS_REFETCH_INTERVAL = 1.0  # an unknown kid refetches the JWKS at most this often
KEYSTONE_VERSION = {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z"}
# a scoped token lists the role given to the VO's group and the roles it implies, as Keystone does
ROLES = [{"id": "7a645a98889049be98f00bdec123ccb0", "name": "reader", "domain_id": None, "description": None,
          "options": {"immutable": True}},
         {"id": "8ed1eab11b0d44508aaa333ec1c6435c", "name": "member", "domain_id": None, "description": None,
          "options": {"immutable": True}}]
#: the domain Keystone creates for the identity provider (EGI's guide renames it to egi.eu)
IDP_DOMAIN = {"id": hashlib.sha256(b"egi.eu idp domain").hexdigest()[:32], "name": "egi.eu"}
TOKEN_EXPIRATION = 3600  # Keystone's [token] expiration default
DEFAULT_REGION = "RegionOne"
IMAGE_PAGE_DEFAULT, IMAGE_PAGE_MAX = 25, 1000  # Glance's limit_param_default and api_limit_max
NOVA_FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound", 503: "serviceUnavailable"}
TITLES = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 503: "Service Unavailable"}
UNAUTHENTICATED = "The request you have made requires authentication."

FLAVORS = [
    {"id": "2", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20, "ephemeral": 0, "swap": 0, "extra_specs": {}},
    {"id": "3", "name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40, "ephemeral": 0, "swap": 0,
     "extra_specs": {"hw_rng:allowed": "True"}},
    {"id": "4", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80, "ephemeral": 0, "swap": 1024, "extra_specs": {}},
    {"id": "6a1f0f4c-5b3e-4c8e-9d55-3f1c2b9a7e10", "name": "g1.xlarge-t4", "vcpus": 8, "ram": 32768, "disk": 80,
     "ephemeral": 100, "swap": 0, "extra_specs": {"pci_passthrough:alias": "nvidia-t4:1", "hw:cpu_policy": "dedicated"}},
]
# (id, name) as the catch-all image sync names the images it brings from AppDB
IMAGES = [("8c5b9c1e-0a2f-4c57-9e0b-0d6f1f5f6a01", "EGI Ubuntu 22.04 [Ubuntu/22.04/VirtualBox]"),
          ("2f0e5c44-6b0d-4a8f-8f3e-6e2d1c0b9a02", "EGI AlmaLinux 9 [AlmaLinux/9/KVM]"),
          ("d3a1b7f2-9c4e-4e1a-b5d6-7f8e9a0b1c03", "EGI Docker [Ubuntu/22.04/VirtualBox]")]
# images of the site that no VM uses, so that listing them takes Glance's pages
SPARE_IMAGES = [(str(uuid.uuid5(uuid.NAMESPACE_URL, f"spare-image/{n}")), f"EGI spare image {n}") for n in range(40)]
# (status, vm_state, power_state, task_state): the cycle the fake servers go through
STATES = [("ACTIVE", "active", 1, None), ("SHUTOFF", "stopped", 4, None), ("ERROR", "error", 0, None),
          ("ACTIVE", "active", 1, None), ("BUILD", "building", 0, "spawning"), ("PAUSED", "paused", 3, None),
          ("SUSPENDED", "suspended", 4, None)]
EPOCH = datetime(2024, 1, 8, 9, 0, tzinfo=timezone.utc)


def iso(moment: float | datetime, micro: bool = False) -> str:
    """Keystone writes `...T..:..:...000000Z`, Nova `...T..:..:..Z`."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def hexid(*parts: str) -> str:
    """A stable 32-hex id (Keystone's id format) derived from `parts`."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32]


def keystone_error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "title": TITLES.get(status, "Error")}}


def nova_error(status: int, message: str) -> dict[str, Any]:
    return {NOVA_FAULT_NAMES.get(status, "computeFault"): {"code": status, "message": message}}


@dataclass
class Project:
    id: str
    name: str
    vo: str


@dataclass
class Token:
    """An issued Keystone token: unscoped (federation) or scoped to a project."""

    user: dict[str, Any]
    vos: frozenset[str]
    issued_at: float
    expires_at: float
    methods: list[str]
    audit_ids: list[str]
    project: Project | None = None


@dataclass
class Fault:
    status: int
    delay: float
    remaining: int


@dataclass
class Site:
    name: str
    mode: str
    projects: dict[str, Project]  # by VO
    rules: dict[str, list[str]] = field(default_factory=dict)  # VO → entitlements its mapping rule accepts
    regions: list[str] = field(default_factory=lambda: [DEFAULT_REGION])
    token_expiration: int = TOKEN_EXPIRATION
    max_microversion: tuple[int, int] = (2, 79)
    initial_mode: str = ""
    url: str = ""
    counters: Counter[str] = field(default_factory=Counter)
    fault: Fault | None = None
    tokens: dict[str, Token] = field(default_factory=dict)
    servers: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)  # (project, region) -> newest first

    def rule_for(self, vo: str) -> list[str]:
        return self.rules.get(vo) or [f"{ENTITLEMENT}{vo}:role=vm_operator#aai.egi.eu"]

    def mapped_vos(self, entitlements: list[str]) -> set[str]:
        """The VOs whose mapping rule one of these entitlements satisfies (Keystone's regex
        `any_one_of` with `^…$`: the whole entitlement, role and all)."""
        held = set(entitlements)
        return {vo for vo in self.projects if held & set(self.rule_for(vo))}

    @property
    def auth_url(self) -> str:
        return f"{self.url}/v3"

    def prefix(self, region: str) -> str:
        """Where a region's services live: the first region at the root, others under `/<region>`."""
        return "" if region == self.regions[0] else f"/{region}"

    def compute_url(self, region: str | None = None) -> str:
        return f"{self.url}{self.prefix(region or self.regions[0])}/compute/v2.1"

    def image_url(self, region: str | None = None) -> str:
        return f"{self.url}{self.prefix(region or self.regions[0])}/image"

    def catalog(self) -> list[dict[str, Any]]:
        def service(kind: str, name: str, url_of) -> dict[str, Any]:
            return {"id": hexid(self.name, kind), "type": kind, "name": name, "endpoints": [
                {"id": hexid(self.name, kind, region, interface), "interface": interface, "region": region,
                 "region_id": region, "url": url_of(region)}
                for region in self.regions for interface in ("public", "internal")]}
        return [service("compute", "nova", self.compute_url), service("image", "glance", self.image_url),
                service("identity", "keystone", lambda region: self.auth_url)]

    def populate(self, count: int) -> None:
        """`count` deterministic servers per project and region, in Nova's default order (newest first)."""
        for project in self.projects.values():
            for region in self.regions:
                self.servers[(project.id, region)] = self._servers(project, region, count)

    def _servers(self, project: Project, region: str, count: int) -> list[dict[str, Any]]:
        """The project's servers in one region (its first region's keep the plain names)."""
        servers = []
        where = self.name if region == self.regions[0] else f"{self.name}-{region}"
        for n in range(1, count + 1):
            status, vm_state, power, task = STATES[(n - 1) % len(STATES)]
            created = EPOCH + timedelta(days=9 * n + len(self.name), hours=n, minutes=7 * n)
            net = f"{project.vo}-net"
            addresses = {} if status in ("ERROR", "BUILD") else {net: [
                {"version": 4, "addr": f"192.168.{n % 250}.{10 + n}", "OS-EXT-IPS:type": "fixed",
                 "OS-EXT-IPS-MAC:mac_addr": f"fa:16:3e:{n % 256:02x}:{len(self.name):02x}:0{n % 10}"},
                {"version": 4, "addr": f"203.0.113.{(7 * n + len(self.name)) % 250 + 1}", "OS-EXT-IPS:type": "floating",
                 "OS-EXT-IPS-MAC:mac_addr": f"fa:16:3e:{n % 256:02x}:{len(self.name):02x}:0{n % 10}"}]}
            servers.append({
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{where}/{project.id}/{n}")),
                "name": f"vm-{where}-{n}", "status": status, "vm_state": vm_state, "power_state": power,
                "task_state": task, "project": project, "created": created,
                "updated": created + timedelta(minutes=2 if status == "ERROR" else 3 * 24 * 60 + n),
                "image": "" if n == 2 else IMAGES[n % len(IMAGES)][0],  # the second one boots from a volume
                "volume": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.name}/{project.id}/{n}/volume")) if n == 2 else None,
                "flavor": FLAVORS[(n - 1) % len(FLAVORS)], "addresses": addresses,
                "key_name": "alice-key" if n % 2 else None,
                "metadata": {"eosc.vo": project.vo} if n % 3 == 1 else {},
            })
        servers.sort(key=lambda s: (s["created"], s["id"]), reverse=True)
        return servers


class Jwks:
    """The issuer's signing keys, kept like mod_auth_openidc keeps them: found through
    discovery on first use, cached, and fetched again when a token names an unknown
    key (the provider rotated its keys) — at most once a second, so garbage kids
    cannot turn us into a load generator against Check-in."""

    def __init__(self, issuer: str):
        self.issuer = issuer
        self.keys: KeySet | None = None
        self.fetched_at = 0.0
        self.lock = threading.Lock()

    def _fetch(self) -> None:
        self.fetched_at = time.monotonic()
        with httpx.Client(timeout=5) as client:
            config = client.get(f"{self.issuer}/.well-known/openid-configuration").raise_for_status().json()
            self.keys = KeySet.import_key_set(client.get(config["jwks_uri"]).raise_for_status().json())

    def key_set(self, kid: str | None) -> KeySet | None:
        with self.lock:
            known = self.keys is not None and (kid is None or any(k.kid == kid for k in self.keys.keys))
            if not known and (self.keys is None or time.monotonic() - self.fetched_at > JWKS_REFETCH_INTERVAL):
                try:
                    self._fetch()
                except (httpx.HTTPError, KeyError, ValueError):
                    pass  # the issuer is unreachable: nothing validates until it comes back
            return self.keys

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid access token from our issuer, else None."""
        try:
            kid = jws.extract_compact(token.encode()).headers().get("kid")
            keys = self.key_set(kid)
            if keys is None:
                return None
            claims = jwt.decode(token, keys, algorithms=["RS256"]).claims
        except Exception:  # noqa: BLE001 - whatever is wrong with a token, it does not authenticate
            return None
        exp = claims.get("exp")
        if claims.get("iss") != self.issuer or not isinstance(exp, (int, float)) or exp <= time.time():
            return None
        return claims


@dataclass
class Peer:
    issuer: str
    sites: dict[str, Site]
    jwks: Jwks
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    issued: list[str] = field(default_factory=list)  # every Keystone token minted, for leak sweeps


# (methods, counter name, path pattern, handler method: none may be named like an attribute
# of BaseHTTPRequestHandler, e.g. `server`)
ROUTES = [(methods, name, re.compile(pattern + r"\Z"), handler) for methods, name, pattern, handler in [
    ("GET", "identity versions", r"/", "identity_versions"),
    ("GET", "identity version", r"/v3/?", "identity_version"),
    ("GET POST", "federation", r"/v3/OS-FEDERATION/identity_providers/([^/]+)/protocols/([^/]+)/auth", "federate"),
    ("GET", "auth/projects", r"/v3/auth/projects", "auth_projects"),
    ("POST", "auth/tokens", r"/v3/auth/tokens", "auth_tokens"),
    ("GET", "compute versions", r"/compute/?", "compute_versions"),
    ("GET", "compute version", r"/compute/v2\.1/?", "compute_version"),
    ("GET", "servers/detail", r"/compute/v2\.1/servers/detail", "list_servers"),
    ("GET", "servers", r"/compute/v2\.1/servers", "list_servers"),
    ("GET", "server", r"/compute/v2\.1/servers/([^/]+)", "show_server"),
    ("GET", "flavors/detail", r"/compute/v2\.1/flavors/detail", "list_flavors"),
    ("GET", "flavors", r"/compute/v2\.1/flavors", "list_flavors"),
    ("GET", "flavor", r"/compute/v2\.1/flavors/([^/]+)", "show_flavor"),
    ("GET", "images", r"/image/v2/images", "list_images"),
]]


class Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peer: Peer  # set on the subclasses made by `serve`

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class SiteHandler(Quiet):
    """One FedCloud site: Keystone at `/` and `/v3`, Nova at `/compute`."""

    site: Site
    server_version = "openstack-peer/1"

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        self.body = self._body()  # read first: a keep-alive connection must not keep it
        path, self.region = split.path, self.site.regions[0]
        for region in self.site.regions[1:]:  # a further region's services: /<region>/compute, /<region>/image
            if path.startswith(f"/{region}/"):
                path, self.region = path[len(region) + 1:], region
                break
        self.compute = path.startswith("/compute")
        name, handler, args = f"{method} {path}", None, ()
        for methods, route, pattern, target in ROUTES:
            if method in methods.split() and (match := pattern.match(path)):
                name, handler, args = f"{method} {route}", getattr(self, target), match.groups()
                break
        if self.region != self.site.regions[0]:
            name += f" [{self.region}]"
        site, peer = self.site, self.peer
        with peer.lock:
            site.counters[name] += 1
            fault = site.fault if site.fault and site.fault.remaining > 0 else None
            if fault:
                fault.remaining -= 1
        if site.mode == "hang":
            # A black hole: the connection stays open, unanswered, until we shut down.
            peer.stop.wait()
            self.close_connection = True
            return
        if fault and fault.delay:
            peer.stop.wait(fault.delay)
        # Faults and `error` stand for the service (or the proxy in front) being down: Keystone's body.
        if fault and fault.status:
            return self._send(fault.status, keystone_error(fault.status, "injected fault"))
        if site.mode == "error":
            return self._send(503, keystone_error(503, "The service is temporarily unavailable."))
        if handler is None:
            return self._error(404, "The resource could not be found.")
        handler(*args)

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if status >= 400:
            with self.peer.lock:
                self.site.counters[str(status)] += 1
        request_id = f"req-{uuid.uuid4()}"
        extra = {"x-openstack-request-id": request_id}
        if self.compute:
            extra["x-compute-request-id"] = request_id
        super()._send(status, body, {**extra, **(headers or {})})

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = nova_error(status, message) if self.compute else keystone_error(status, message)
        self._send(status, body, headers)

    def _unauthorized(self) -> None:
        """Keystone's (and keystonemiddleware's, in front of Nova) answer to a bad token."""
        self._send(401, keystone_error(401, UNAUTHENTICATED), {"WWW-Authenticate": f'Keystone uri="{self.site.auth_url}"'})

    def _token(self, token_id: str | None, scoped: bool = False) -> Token | None:
        token = self.site.tokens.get(token_id or "")
        if token is None or token.expires_at <= time.time() or (scoped and token.project is None):
            return None
        return token

    def _issue(self, token: Token, status: int = 201) -> None:
        token_id = "gAAAAAB" + secrets.token_urlsafe(120)  # looks like a Fernet token, means nothing
        now = time.time()
        with self.peer.lock:
            self.site.tokens = {k: t for k, t in self.site.tokens.items() if t.expires_at > now}  # forget expired ones
            self.site.tokens[token_id] = token
            self.peer.issued.append(token_id)
        body: dict[str, Any] = {"methods": token.methods, "user": token.user, "audit_ids": token.audit_ids,
                                "expires_at": iso(token.expires_at, micro=True),
                                "issued_at": iso(token.issued_at, micro=True)}
        if token.project:
            project = token.project
            body.update(project={"id": project.id, "name": project.name, "domain": {"id": "default", "name": "Default"}},
                        is_domain=False, roles=[dict(role) for role in ROLES])
            if "nocatalog" not in self.query:
                body["catalog"] = self.site.catalog()
        self._send(status, {"token": body}, {"X-Subject-Token": token_id})

    # -- Keystone -------------------------------------------------------------------
    def _keystone_version(self) -> dict[str, Any]:
        return {**KEYSTONE_VERSION, "links": [{"rel": "self", "href": f"{self.site.auth_url}/"}],
                "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}

    def identity_versions(self) -> None:
        self._send(300, {"versions": {"values": [self._keystone_version()]}})

    def identity_version(self) -> None:
        self._send(200, {"version": self._keystone_version()})

    def federate(self, idp: str, protocol: str) -> None:
        """mod_auth_openidc validates the bearer token, then Keystone maps its claims."""
        if idp != IDP:
            return self._error(404, f"Could not find Identity Provider: {idp}.")
        if protocol != PROTOCOL:
            return self._error(404, f"Could not find federated protocol {protocol} for Identity Provider: {idp}.")
        header = self.headers.get("Authorization", "")
        claims = self.peer.jwks.verify(header[7:].strip()) if header[:7].lower() == "bearer " else None
        if claims is None:
            return self._unauthorized()
        entitlements = claims.get("eduperson_entitlement") or []
        vos = frozenset(self.site.mapped_vos([entitlements] if isinstance(entitlements, str) else list(entitlements)))
        if not vos:
            # Keystone: "Could not map any federated user properties to identity values" → 401,
            # with the same body as for an expired token (tests/data/fedcloud/keystone-30-federation.json)
            return self._unauthorized()
        groups = [{"id": hexid(self.site.name, "group", vo)} for vo in sorted(vos)]
        # the mapping's user name is {0} = HTTP_OIDC_SUB; Keystone's user id is a hash of it
        user = {"domain": dict(IDP_DOMAIN), "id": hashlib.sha256(f"{claims['sub']}{IDP}".encode()).hexdigest(),
                "name": claims["sub"],
                "OS-FEDERATION": {"groups": groups, "identity_provider": {"id": IDP}, "protocol": {"id": PROTOCOL}}}
        now = time.time()
        self._issue(Token(user, vos, now, now + self.site.token_expiration, ["openid"], [secrets.token_urlsafe(16)]))

    def auth_projects(self) -> None:
        token = self._token(self.headers.get("X-Auth-Token"))
        if token is None:
            return self._unauthorized()
        projects = [self.site.projects[vo] for vo in sorted(token.vos) if vo in self.site.projects]
        self._send(200, {"projects": [
            {"id": p.id, "name": p.name, "domain_id": "default", "enabled": True, "is_domain": False, "parent_id": "default",
             "description": f"{p.vo} at {self.site.name}", "tags": [], "options": {},
             "links": {"self": f"{self.site.auth_url}/projects/{p.id}"}} for p in projects],
            "links": {"self": f"{self.site.auth_url}/auth/projects", "previous": None, "next": None}})

    def auth_tokens(self) -> None:
        """Rescoping with the `token` method (what keystoneauth1 does after federating)."""
        try:
            auth = json.loads(self.body or b"{}")["auth"]
            identity, scope = auth["identity"], auth.get("scope") or {}
        except (ValueError, KeyError, TypeError):
            return self._error(400, "Expecting to find auth in request body.")
        if identity.get("methods") != ["token"]:
            return self._unauthorized()
        token = self._token((identity.get("token") or {}).get("id") or self.headers.get("X-Auth-Token"))
        if token is None:
            return self._unauthorized()
        project = None
        if wanted := scope.get("project"):
            project = next((p for vo, p in self.site.projects.items() if vo in token.vos
                            and (p.id == wanted.get("id") or ("id" not in wanted and p.name == wanted.get("name")))), None)
            if project is None:  # unknown, or not one of the user's: Keystone says 401 either way
                return self._unauthorized()
        # a rescoped token keeps the expiry of the token it came from (Keystone does not extend it)
        self._issue(Token(token.user, token.vos, time.time(), token.expires_at, sorted({"token", *token.methods}),
                          [secrets.token_urlsafe(16), token.audit_ids[0]], project))

    # -- Nova -------------------------------------------------------------------------
    def _nova_version(self) -> dict[str, Any]:
        return {"id": "v2.1", "status": "CURRENT", "version": "%d.%d" % self.site.max_microversion,
                "min_version": "%d.%d" % MIN_MICROVERSION, "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{self.site.compute_url(self.region)}/"}],
                "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}]}

    def compute_versions(self) -> None:
        self._send(200, {"versions": [self._nova_version()]})

    def compute_version(self) -> None:
        self._send(200, {"version": self._nova_version()})

    def _context(self) -> tuple[Token, tuple[int, int]] | None:
        """keystonemiddleware (a scoped token of this site), then Nova's microversion check.
        Sends the error response itself and returns None on failure."""
        token = self._token(self.headers.get("X-Auth-Token"), scoped=True)
        if token is None:
            self._unauthorized()
            return None
        requested = self.headers.get("X-OpenStack-Nova-API-Version")
        for item in (self.headers.get("OpenStack-API-Version") or "").split(","):  # the newer header wins
            service, _, value = item.strip().partition(" ")
            if service.lower() == "compute":
                requested = value.strip()
        if requested is None:
            version = MIN_MICROVERSION
        elif requested.lower() == "latest":
            version = self.site.max_microversion
        elif match := re.fullmatch(r"([1-9]\d*)\.([1-9]\d*|0)", requested.strip()):
            version = (int(match[1]), int(match[2]))
        else:
            self._error(400, f"API Version String {requested} is of invalid format. Must be of format MajorNum.MinorNum.")
            return None
        if not MIN_MICROVERSION <= version <= self.site.max_microversion:
            self._error(406, "Version %s is not supported by the API. Minimum is %s and maximum is %s." % (
                requested, "%d.%d" % MIN_MICROVERSION, "%d.%d" % self.site.max_microversion))
            return None
        return token, version

    def _send_versioned(self, version: tuple[int, int], body: Any) -> None:
        text = "%d.%d" % version
        self._send(200, body, {"OpenStack-API-Version": f"compute {text}", "X-OpenStack-Nova-API-Version": text,
                               "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"})

    def _links(self, kind: str, item_id: str) -> list[dict[str, str]]:
        return [{"rel": "self", "href": f"{self.site.compute_url(self.region)}/{kind}/{item_id}"},
                {"rel": "bookmark", "href": f"{self.site.url}{self.site.prefix(self.region)}/compute/{kind}/{item_id}"}]

    def _flavor(self, flavor: dict[str, Any], version: tuple[int, int]) -> dict[str, Any]:
        if version < FLAVOR_EMBEDDED:
            return {"id": flavor["id"], "links": [self._links("flavors", flavor["id"])[1]]}
        return {"vcpus": flavor["vcpus"], "ram": flavor["ram"], "disk": flavor["disk"], "ephemeral": flavor["ephemeral"],
                "swap": flavor["swap"], "original_name": flavor["name"], "extra_specs": dict(flavor["extra_specs"])}

    def _server(self, s: dict[str, Any], version: tuple[int, int]) -> dict[str, Any]:
        project: Project = s["project"]
        body: dict[str, Any] = {
            "id": s["id"], "name": s["name"], "status": s["status"], "tenant_id": project.id,
            "user_id": hashlib.sha256(f"owner of {project.id}".encode()).hexdigest(),
            "created": iso(s["created"]), "updated": iso(s["updated"]),
            "hostId": hashlib.sha224(f"{project.id}compute-{len(s['name'])}".encode()).hexdigest(),
            "addresses": s["addresses"], "accessIPv4": "", "accessIPv6": "", "progress": 0, "config_drive": "",
            "image": "" if not s["image"] else {"id": s["image"], "links": [self._links("images", s["image"])[1]]},
            "flavor": self._flavor(s["flavor"], version), "key_name": s["key_name"], "metadata": s["metadata"],
            "links": self._links("servers", s["id"]), "security_groups": [{"name": "default"}],
            "OS-DCF:diskConfig": "MANUAL", "OS-EXT-AZ:availability_zone": "nova",
            "OS-EXT-STS:vm_state": s["vm_state"], "OS-EXT-STS:power_state": s["power_state"],
            "OS-EXT-STS:task_state": s["task_state"],
            "OS-SRV-USG:launched_at": None if s["status"] in ("ERROR", "BUILD")
            else (s["created"] + timedelta(seconds=42)).strftime("%Y-%m-%dT%H:%M:%S.000000"),
            "OS-SRV-USG:terminated_at": None,
            "os-extended-volumes:volumes_attached": [{"id": s["volume"], "delete_on_termination": False}] if s["volume"] else [],
        }
        if s["status"] == "ERROR":
            body["fault"] = {"code": 500, "created": iso(s["updated"]),
                             "message": "No valid host was found. There are not enough hosts available."}
        for since, name, value in [((2, 9), "locked", False), ((2, 19), "description", None), ((2, 26), "tags", []),
                                   ((2, 63), "trusted_image_certificates", None), ((2, 73), "locked_reason", None)]:
            if version >= since:
                body[name] = value
        return body

    def list_servers(self) -> None:
        """List (`/servers`) or detail (`/servers/detail`), filtered and paged like Nova."""
        if (context := self._context()) is None:
            return
        token, version = context
        servers = self.site.servers.get((token.project.id, self.region), [])
        arg = {name: values[-1] for name, values in self.query.items()}
        if status := arg.get("status"):
            servers = [s for s in servers if s["status"] == status.upper()]
        if name := arg.get("name"):
            servers = [s for s in servers if re.search(name, s["name"])]
        if marker := arg.get("marker"):
            index = next((i for i, s in enumerate(servers) if s["id"] == marker), None)
            if index is None:
                return self._error(400, f"marker [{marker}] not found")
            servers = servers[index + 1:]
        try:
            limit = min(int(arg.get("limit", MAX_LIMIT)), MAX_LIMIT)
            if limit < 0:
                raise ValueError
        except ValueError:
            return self._error(400, "Invalid input for query parameters limit.")
        page = servers[:limit]
        detail = self.path.split("?")[0].endswith("/detail")
        body: dict[str, Any] = {"servers": [
            self._server(s, version) if detail else {"id": s["id"], "name": s["name"], "links": self._links("servers", s["id"])}
            for s in page]}
        if page and len(page) == limit:  # Nova links a next page whenever the page is full
            query = urlencode(dict(sorted({**arg, "marker": page[-1]["id"]}.items())))
            collection = "servers/detail" if detail else "servers"
            body["servers_links"] = [{"rel": "next", "href": f"{self.site.compute_url(self.region)}/{collection}?{query}"}]
        self._send_versioned(version, body)

    def show_server(self, server_id: str) -> None:
        if (context := self._context()) is None:
            return
        token, version = context
        found = next((s for s in self.site.servers.get((token.project.id, self.region), []) if s["id"] == server_id), None)
        if found is None:
            return self._error(404, f"Instance {server_id} could not be found.")
        self._send_versioned(version, {"server": self._server(found, version)})

    def _flavor_doc(self, f: dict[str, Any], detail: bool) -> dict[str, Any]:
        body = {"id": f["id"], "name": f["name"], "links": self._links("flavors", f["id"])}
        if detail:
            body.update({k: f[k] for k in ("vcpus", "ram", "disk", "swap")}, **{
                "OS-FLV-EXT-DATA:ephemeral": f["ephemeral"], "OS-FLV-DISABLED:disabled": False,
                "os-flavor-access:is_public": True, "rxtx_factor": 1.0, "description": None})
            body["swap"] = body["swap"] or ""  # Nova reports no swap as ""
        return body

    def list_flavors(self) -> None:
        if (context := self._context()) is None:
            return
        detail = self.path.split("?")[0].endswith("/detail")
        self._send_versioned(context[1], {"flavors": [self._flavor_doc(f, detail) for f in FLAVORS]})

    def show_flavor(self, flavor_id: str) -> None:
        if (context := self._context()) is None:
            return
        found = next((f for f in FLAVORS if f["id"] == flavor_id), None)
        if found is None:
            return self._error(404, f"Flavor {flavor_id} could not be found.")
        self._send_versioned(context[1], {"flavor": self._flavor_doc(found, True)})


    # -- Glance -------------------------------------------------------------------------
    def _image_doc(self, image_id: str, name: str) -> dict[str, Any]:
        """An image as Glance v2 lists it (openstack/glance api-ref images-list-response.json)."""
        created = iso(EPOCH - timedelta(days=len(name)))
        return {"status": "active", "name": name, "tags": [], "container_format": "bare", "created_at": created,
                "disk_format": "qcow2", "updated_at": created, "visibility": "public", "self": f"/v2/images/{image_id}",
                "min_disk": 0, "protected": False, "id": image_id, "file": f"/v2/images/{image_id}/file",
                "checksum": hashlib.md5(image_id.encode()).hexdigest(), "owner": hexid(self.site.name, "image-owner"),
                "size": 1024 * 1024 * (100 + len(name)), "min_ram": 0, "schema": "/v2/schemas/image",
                "virtual_size": None}

    def list_images(self) -> None:
        """`GET /v2/images`: Glance's paging (`limit`, default 25, at most 1000; `marker`; a `next`
        link while a page is full), behind keystonemiddleware like Nova."""
        if self._token(self.headers.get("X-Auth-Token"), scoped=True) is None:
            return self._unauthorized()
        images = IMAGES + SPARE_IMAGES
        arg = {name: values[-1] for name, values in self.query.items()}
        try:
            limit = min(int(arg.get("limit", IMAGE_PAGE_DEFAULT)), IMAGE_PAGE_MAX)
            if limit < 0:
                raise ValueError
        except ValueError:
            return self._error(400, "limit param must be an integer")
        if marker := arg.get("marker"):
            index = next((i for i, (image_id, _) in enumerate(images) if image_id == marker), None)
            if index is None:
                return self._error(404, f"No image found with ID {marker}")
            images = images[index + 1:]
        page = images[:limit]
        body: dict[str, Any] = {"images": [self._image_doc(i, n) for i, n in page], "schema": "/v2/schemas/images",
                                "first": "/v2/images" + (f"?limit={arg['limit']}" if "limit" in arg else "")}
        if page and len(page) == limit:
            body["next"] = f"/v2/images?{urlencode(dict(sorted({**arg, 'marker': page[-1][0]}.items())))}"
        self._send(200, body)


class ControlHandler(Quiet):
    """`/_peer/*`: counters, faults and modes of all sites."""

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/_peer/issued":
            with self.peer.lock:
                return self._send(200, list(self.peer.issued))
        if urlsplit(self.path).path != "/_peer/stats":
            return self._send(404, {"error": "not_found"})
        with self.peer.lock:
            self._send(200, {name: dict(site.counters) for name, site in self.peer.sites.items()})

    def do_POST(self) -> None:
        action = urlsplit(self.path).path.removeprefix("/_peer/")
        try:
            form = json.loads(self._body() or b"{}")
            with self.peer.lock:
                if action == "reset":
                    for site in self.peer.sites.values():
                        site.counters.clear()
                        site.fault, site.mode = None, site.initial_mode
                    return self._send(200, {"ok": True})
                site = self.peer.sites[form["site"]]
                if action == "fault":
                    site.fault = Fault(int(form.get("status", 503)), float(form.get("delay", 0)), int(form.get("count", 1)))
                    return self._send(200, {"ok": True})
                if action == "mode" and form["mode"] in MODES:
                    site.mode = form["mode"]
                    return self._send(200, {"ok": True})
        except (ValueError, KeyError, TypeError) as exc:
            return self._send(400, {"error": f"bad request: {exc!r}"})
        self._send(404, {"error": "not_found"})


def parse_site(spec: str) -> Site:
    """`NAME:MODE[:VO[=PROJECT_ID[/PROJECT_NAME]],...]`; without an id a stable one is derived."""
    name, _, rest = spec.partition(":")
    mode, _, vos = rest.partition(":")
    if not name or mode not in MODES:
        raise argparse.ArgumentTypeError(f"bad site {spec!r}: want NAME:{'|'.join(MODES)}[:VO=PROJECT_ID[/NAME],...]")
    projects = {}
    for item in filter(None, vos.split(",")):
        vo, _, project = item.partition("=")
        project_id, _, project_name = project.partition("/")
        projects[vo] = Project(project_id or hexid(name, vo), project_name or vo, vo)
    return Site(name, mode, projects, initial_mode=mode)


def serve(peer: Peer, handler: type[Quiet], **attributes: Any) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), type(handler.__name__, (handler,), {"peer": peer, **attributes}))
    server.daemon_threads = True  # hung connections must not hold up shutdown
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--issuer", required=True, help="the Check-in issuer whose access tokens the sites accept")
    parser.add_argument("--site", type=parse_site, action="append", required=True, metavar="SPEC",
                        help="NAME:healthy|error|hang[:VO=PROJECT_ID[/PROJECT_NAME],...]")
    parser.add_argument("--max-microversion", action="append", default=[], metavar="NAME=2.79")
    parser.add_argument("--rule", action="append", default=[], metavar="NAME:VO=ENTITLEMENT",
                        help="an entitlement the site's mapping rule for VO accepts (repeatable; default: "
                             "urn:mace:egi.eu:group:VO:role=vm_operator#aai.egi.eu)")
    parser.add_argument("--region", action="append", default=[], metavar="NAME=REGION[,REGION...]",
                        help=f"the site's regions, its default first (default: {DEFAULT_REGION})")
    parser.add_argument("--token-expiration", type=int, default=TOKEN_EXPIRATION,
                        help="seconds a Keystone token lives (Keystone's [token] expiration)")
    parser.add_argument("--servers", type=int, default=3, help="fake servers per project")
    args = parser.parse_args(argv)
    sites = {site.name: site for site in args.site}
    for item in args.max_microversion:
        name, _, value = item.partition("=")
        if name not in sites or not (match := re.fullmatch(r"2\.(\d+)", value)):
            parser.error(f"bad --max-microversion {item!r}: want SITE=2.N for a site given with --site")
        sites[name].max_microversion = (2, int(match[1]))
    for item in args.rule:
        name, _, rest = item.partition(":")
        vo, _, entitlement = rest.partition("=")
        if name not in sites or vo not in sites[name].projects or not entitlement.startswith(ENTITLEMENT):
            parser.error(f"bad --rule {item!r}: want SITE:VO=urn:mace:egi.eu:group:... for a VO of that site")
        sites[name].rules.setdefault(vo, []).append(entitlement)
    for item in args.region:
        name, _, regions = item.partition("=")
        if name not in sites or not all(re.fullmatch(r"[A-Za-z0-9_.-]+", r) for r in regions.split(",")):
            parser.error(f"bad --region {item!r}: want SITE=REGION[,REGION...] for a site given with --site")
        sites[name].regions = regions.split(",")
    for site in sites.values():
        site.token_expiration = args.token_expiration
    peer = Peer(args.issuer.rstrip("/"), sites, Jwks(args.issuer.rstrip("/")))
    servers = []
    for site in sites.values():
        servers.append(serve(peer, SiteHandler, site=site))
        site.url = f"http://127.0.0.1:{servers[-1].server_address[1]}"
        site.populate(args.servers)
    servers.append(serve(peer, ControlHandler))
    signal.signal(signal.SIGTERM, lambda *_: peer.stop.set())
    print(json.dumps({"url": f"http://127.0.0.1:{servers[-1].server_address[1]}", "sites": {
        name: {"url": site.url, "auth_url": site.auth_url, "mode": site.mode,
               "projects": {vo: {"id": p.id, "name": p.name} for vo, p in site.projects.items()},
               "rules": {vo: site.rule_for(vo) for vo in site.projects}, "regions": site.regions,
               "max_microversion": "%d.%d" % site.max_microversion} for name, site in sites.items()}}), flush=True)
    try:
        while not peer.stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        peer.stop.set()  # releases hung connections too
    for server in servers:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
