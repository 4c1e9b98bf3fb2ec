"""A local EGI Notebooks API: a real JupyterHub 6 behind a front like EGI's `/services/jwt`.

notebooks.egi.eu lets API clients call the hub's REST API with their Check-in
access token at `/services/jwt/<hub api path>`. This peer runs the same pair on
127.0.0.1, so clients are tested against a real hub rather than a mock:

- the hub: JupyterHub as a child process (sqlite in a temp dir, config generated
  at start-up, which calls `configure_hub` below) with an in-memory proxy (no
  configurable-http-proxy needed), the shared-password authenticator for its
  own login page (API users are created through the admin API), named servers,
  and a fake spawner whose "single-user server" is a tiny HTTP responder inside
  the hub that comes up after `--spawn-seconds`. Start and
  stop therefore go through the hub's real spawn machinery (pending → ready →
  stopped). `--slow-spawn-timeout` (default 0) is how long the hub's start request
  waits for the spawn: 0 means it answers at once (hub 202, server pending), as
  the real service does for its slow Kubernetes spawns;
- the front, like EGI's: `GET /services/jwt/` → `{"version": <hub version>}` with
  no token; every other path needs `Authorization: Bearer <Check-in JWT>`, which
  must be signed by the issuer (JWKS via discovery), unexpired, and active at
  Check-in's introspection endpoint (as client `--client-id`); otherwise HTTP 401
  with an HTML body. The user (`preferred_username`) is created in the hub if
  missing, a hub API token living as long as the JWT (exp - now) is minted through
  the admin API (cached per user and JWT), and method, path, query and body are
  forwarded to `{hub}/hub/api/<path>` with `Authorization: token <hub token>`;
- EGI's quirk, kept: the answer is HTTP 200 with the hub's JSON body whatever the
  hub's status, so a hub 403 arrives as `200 {"status": 403, "message": ...}`.

Our assumptions, not verified against notebooks.egi.eu: when the hub answers with
an empty body (201/202/204 of server start and stop) the front answers HTTP 200
with the body `null`; when Check-in cannot be asked (network error, 5xx) the
front answers 502. EGI's hub mints its token for exp - iat and swaps the JWT for
a Check-in refresh token; ours lives exp - now and skips the exchange.

For tests: `GET /_peer/stats` (requests per "METHOD path", `introspections`,
`hub_tokens_minted`, `unauthorized`), `POST /_peer/config` with JSON
`{"spawn_seconds": S}` (server starts from now on take S seconds; the hub's spawn
timeout is 600 s), `POST /_peer/reset` (counters, the hub token cache, and
`--spawn-seconds` again).

Run: `python notebooks_peer.py --issuer <Check-in issuer>` prints one JSON line
(`url`, `api_url`, `hub_api`, `hub_version`, `admin`) once the hub answers, and
serves until SIGTERM, which stops the hub and removes the temp dir.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, KeySet

PREFIX = "/services/jwt"
SERVICE = "jwt"  # the front is this hub service, as on notebooks.egi.eu
FRONT_SCOPES = ["list:users", "read:users", "admin:users", "tokens", "servers"]
SPAWN_SECONDS_FILE = "spawn_seconds"  # in the work dir: the front writes it, the hub's spawner reads it
UNAUTHORIZED_PAGE = b"<html><title>401: Unauthorized</title><body>401: Unauthorized</body></html>"


# -- the hub: runs inside the JupyterHub process, called by the generated config --------
def configure_hub(c: Any, *, workdir: str, hub_port: int, public_port: int, service_token: str, admin: str,
                  spawn_seconds: float, slow_spawn_timeout: float) -> None:
    """Fill JupyterHub's config `c`. The classes are defined here, not at module level,
    so that the front's process never imports JupyterHub (it would only cost memory)."""
    import asyncio

    from jupyterhub import __version__
    from jupyterhub.proxy import Proxy
    from jupyterhub.spawner import Spawner

    def configured_spawn_seconds() -> float:
        """`--spawn-seconds`, unless a test set another duration through the front's `/_peer/config`."""
        try:
            return float((Path(workdir) / SPAWN_SECONDS_FILE).read_text())
        except (OSError, ValueError):
            return spawn_seconds

    class MemoryProxy(Proxy):
        """Keeps the route table in a dict: clients call the hub's own port, nothing is proxied."""

        should_start = False

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.routes: dict[str, dict[str, Any]] = {}

        async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None:
            self.routes[routespec] = {"routespec": routespec, "target": target, "data": data}

        async def delete_route(self, routespec: str) -> None:
            self.routes.pop(routespec, None)

        async def get_all_routes(self) -> dict[str, dict[str, Any]]:
            return dict(self.routes)

    class FakeSpawner(Spawner):
        """A 'single-user server' that is an asyncio HTTP responder in the hub's own loop:
        it answers after `spawn_seconds`, which is all the hub checks before marking it ready."""

        http_server: asyncio.Server | None = None

        async def start(self) -> str:
            await asyncio.sleep(configured_spawn_seconds())
            self.http_server = await asyncio.start_server(self.answer, "127.0.0.1", 0)
            return f"http://127.0.0.1:{self.http_server.sockets[0].getsockname()[1]}"

        async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                body = json.dumps({"user": self.user.name, "server": self.name, "fake": True}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"X-JupyterHub-Version: " + __version__.encode() + b"\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                await writer.drain()
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                pass
            finally:
                writer.close()

        async def poll(self) -> int | None:
            return None if self.http_server is not None else 0

        async def stop(self, now: bool = False) -> None:
            if self.http_server is not None:
                self.http_server.close()
                self.http_server = None

    c.JupyterHub.ip = c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.port, c.JupyterHub.hub_port = public_port, hub_port
    c.JupyterHub.db_url = f"sqlite:///{workdir}/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = f"{workdir}/jupyterhub_cookie_secret"
    c.JupyterHub.proxy_class = MemoryProxy
    c.JupyterHub.spawner_class = FakeSpawner
    c.Spawner.start_timeout = 600  # a test may slow the spawn beyond JupyterHub's default 60 s
    # the hub's own login page works with one shared password (the notes' recipe); API users come
    # through the front, which creates them with the admin API
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = secrets.token_urlsafe(16)
    c.Authenticator.admin_users = {admin}
    c.Authenticator.allow_all = True
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": slow_spawn_timeout}
    c.JupyterHub.services = [{"name": SERVICE, "api_token": service_token}]
    c.JupyterHub.load_roles = [{"name": "jwt-front", "scopes": FRONT_SCOPES, "services": [SERVICE]}]


# -- the front ---------------------------------------------------------------------------
class Unauthorized(Exception):
    """The bearer token is missing, malformed, expired, badly signed or inactive."""


class UpstreamError(Exception):
    """Check-in or the hub could not be asked."""


@dataclass
class FrontState:
    issuer: str
    client_id: str
    client_secret: str
    hub_api: str
    service_token: str
    hub_version: str
    workdir: Path | None = None  # shared with the hub: where `/_peer/config` leaves the spawn duration
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    counters: Counter[str] = field(default_factory=Counter)
    keys: KeySet | None = None
    introspection_endpoint: str = ""
    hub_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # JWT -> (hub token, expiry)
    known_users: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    mint_lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1

    # -- Check-in ---------------------------------------------------------------------------
    def discover(self, refresh: bool = False) -> KeySet:
        """The issuer's keys (and introspection endpoint); fetched again when a token names an unknown kid."""
        if self.keys is None or refresh:
            try:
                meta = self.http.get(f"{self.issuer}/.well-known/openid-configuration").raise_for_status().json()
                jwks = self.http.get(meta["jwks_uri"]).raise_for_status().json()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                raise UpstreamError(f"Check-in discovery failed: {exc}") from None
            self.introspection_endpoint = meta.get(
                "introspection_endpoint", f"{self.issuer}/protocol/openid-connect/token/introspect")
            self.keys = KeySet.import_key_set(jwks)
        return self.keys

    def key_for(self, guest: GuestProtocol) -> Any:
        kid = guest.headers().get("kid")
        keys = self.discover()
        if kid is not None and all(key.kid != kid for key in keys.keys):
            keys = self.discover(refresh=True)
        return keys.get_by_kid(kid)

    def authenticate(self, token: str | None) -> tuple[str, dict[str, Any]]:
        """(username, claims) of a valid, active Check-in JWT; Unauthorized otherwise."""
        if not token:
            raise Unauthorized("no bearer token")
        try:
            claims = jwt.decode(token, self.key_for, algorithms=["RS256"]).claims
            jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer}, exp={"essential": True},
                                  preferred_username={"essential": True}).validate(claims)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise Unauthorized(str(exc)) from None
        self.count("introspections")
        try:
            answer = self.http.post(self.introspection_endpoint, data={"token": token},
                                    auth=(self.client_id, self.client_secret))
        except httpx.HTTPError as exc:
            raise UpstreamError(f"Check-in introspection failed: {exc}") from None
        if answer.status_code != 200:
            raise UpstreamError(f"Check-in introspection answered {answer.status_code}")
        if not answer.json().get("active"):
            raise Unauthorized("token is not active")
        return str(claims["preferred_username"]), claims

    # -- hub --------------------------------------------------------------------------------
    def hub(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {token or self.service_token}", **kwargs.pop("headers", {})}
        try:
            return self.http.request(method, self.hub_api + path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"hub unreachable: {exc}") from None

    def hub_token(self, user: str, jwt_token: str, exp: float) -> str:
        """The hub token standing for this JWT: the user is created and a token minted on first use."""
        with self.lock:
            cached = self.hub_tokens.get(jwt_token)
        if cached and cached[1] > time.time():
            return cached[0]
        with self.mint_lock:  # one mint per JWT even when its first requests come together
            with self.lock:
                cached = self.hub_tokens.get(jwt_token)
                if cached and cached[1] > time.time():
                    return cached[0]
            if user not in self.known_users:
                created = self.hub("POST", f"/users/{quote(user, safe='')}")
                if created.status_code not in (201, 409):
                    raise UpstreamError(f"hub refused to create {user}: {created.status_code} {created.text}")
                self.known_users.add(user)
            lifetime = max(1, int(exp - time.time()))
            minted = self.hub("POST", f"/users/{quote(user, safe='')}/tokens",
                              json={"expires_in": lifetime, "note": "Check-in JWT via /services/jwt"})
            if minted.status_code != 201:
                raise UpstreamError(f"hub refused a token for {user}: {minted.status_code} {minted.text}")
            self.count("hub_tokens_minted")
            token, now = str(minted.json()["token"]), time.time()
            with self.lock:
                self.hub_tokens = {k: v for k, v in self.hub_tokens.items() if v[1] > now}
                self.hub_tokens[jwt_token] = (token, now + lifetime)
            return token


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "notebooks-peer/1"
    state: FrontState  # set on the subclass made by `make_front`

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode())

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def do_PUT(self) -> None:
        self.route("PUT")

    def do_PATCH(self) -> None:
        self.route("PATCH")

    def do_DELETE(self) -> None:
        self.route("DELETE")

    def route(self, method: str) -> None:
        state = self.state
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""  # read it all: the connection is kept alive
        if url.path.startswith("/_peer/"):
            return self.control(method, url.path[len("/_peer/"):], body)
        if url.path != PREFIX and not url.path.startswith(PREFIX + "/"):
            return self._json(404, {"status": 404, "message": "Not Found"})
        state.count(f"{method} {url.path}")
        rest = url.path[len(PREFIX):]
        if rest in ("", "/") and method == "GET":
            return self._json(200, {"version": state.hub_version})
        header = self.headers.get("Authorization", "")
        bearer = header[7:].strip() if header[:7].lower() == "bearer " else None
        try:
            user, claims = state.authenticate(bearer)
            token = state.hub_token(user, str(bearer), float(claims["exp"]))
            headers = {"Content-Type": self.headers["Content-Type"]} if self.headers.get("Content-Type") else {}
            answer = state.hub(method, rest + (f"?{url.query}" if url.query else ""), token,
                               content=body or None, headers=headers)
        except Unauthorized:
            state.count("unauthorized")
            return self._send(401, UNAUTHORIZED_PAGE, "text/html; charset=UTF-8")
        except UpstreamError as exc:
            return self._json(502, {"status": 502, "message": str(exc)})
        if not answer.content.strip():
            return self._send(200, b"null")  # our assumption about the real front, see the docstring
        try:
            json.loads(answer.content)
        except ValueError:
            return self._json(502, {"status": 502, "message": f"hub answered {answer.status_code} without JSON"})
        self._send(200, answer.content)  # the hub's status code is dropped, as EGI's front does

    def control(self, method: str, action: str, body: bytes = b"") -> None:
        state = self.state
        if method == "GET" and action == "stats":
            with state.lock:
                return self._json(200, dict(state.counters))
        if method == "POST" and action == "reset":
            with state.lock:
                state.counters.clear()
                state.hub_tokens.clear()
            if state.workdir is not None:
                (state.workdir / SPAWN_SECONDS_FILE).unlink(missing_ok=True)
            return self._json(200, {"ok": True})
        if method == "POST" and action == "config" and state.workdir is not None:
            try:
                settings = json.loads(body or b"{}")
                spawn_seconds = float(settings["spawn_seconds"])
            except (ValueError, TypeError, KeyError):
                return self._json(400, {"status": 400, "message": 'expected JSON {"spawn_seconds": <seconds>}'})
            (state.workdir / SPAWN_SECONDS_FILE).write_text(repr(spawn_seconds))
            return self._json(200, {"spawn_seconds": spawn_seconds})
        self._json(404, {"status": 404, "message": f"no control {method} {action}"})


def make_front(state: FrontState, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


# -- process --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_hub(hub: subprocess.Popen[bytes], hub_api: str, timeout: float) -> str:
    """The hub's version once its API answers; RuntimeError if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            raise RuntimeError(f"JupyterHub exited with code {hub.returncode}")
        try:
            answer = httpx.get(f"{hub_api}/", timeout=2)
            if answer.status_code == 200:
                return str(answer.json()["version"])
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"JupyterHub did not answer within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--issuer", required=True, help="Check-in issuer, e.g. http://127.0.0.1:P/auth/realms/egi")
    parser.add_argument("--client-id", default="prefect-egi", help="confidential client for token introspection")
    parser.add_argument("--client-secret", default="prefect-egi-client-secret")
    parser.add_argument("--admin", default="alice", help="the hub's admin user")
    parser.add_argument("--spawn-seconds", type=float, default=1.0, help="how long a server start takes")
    parser.add_argument("--slow-spawn-timeout", type=float, default=0.0,
                        help="seconds a start request waits for the spawn before the hub answers 202")
    parser.add_argument("--port", type=int, default=0, help="the front's port; 0 = a free port")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    workdir = Path(tempfile.mkdtemp(prefix="notebooks-peer-"))
    hub_port = free_port()
    hub_api = f"http://127.0.0.1:{hub_port}/hub/api"
    service_token = secrets.token_hex(32)
    settings = {"workdir": str(workdir), "hub_port": hub_port, "public_port": free_port(),
                "service_token": service_token, "admin": args.admin, "spawn_seconds": args.spawn_seconds,
                "slow_spawn_timeout": args.slow_spawn_timeout}
    config = workdir / "jupyterhub_config.py"
    config.write_text(f"import json\n"
                      f"from prefect_egi.sandbox.notebooks_peer import configure_hub\n"
                      f"configure_hub(c, **json.loads({json.dumps(settings)!r}))\n")
    log = workdir / "jupyterhub.log"
    hub: subprocess.Popen[bytes] | None = None
    server: ThreadingHTTPServer | None = None
    try:
        with log.open("ab") as out:
            hub = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=workdir,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            version = wait_for_hub(hub, hub_api, args.startup_timeout)
        except RuntimeError as exc:
            print(f"notebooks peer: {exc}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise SystemExit(1) from None
        state = FrontState(args.issuer.rstrip("/"), args.client_id, args.client_secret, hub_api, service_token, version,
                           workdir)
        server = make_front(state, "127.0.0.1", args.port)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        print(json.dumps({"url": base, "api_url": base + PREFIX, "hub_api": hub_api, "hub_version": version,
                          "admin": args.admin}), flush=True)
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.server_close()
        if hub is not None and hub.poll() is None:
            hub.terminate()
            try:
                hub.wait(10)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
