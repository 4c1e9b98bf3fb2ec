"""A local EGI Notebooks API: a real JupyterHub 6 behind a front that behaves as EGI's.

notebooks.egi.eu lets API clients call the hub's REST API with their Check-in
access token at `/services/jwt/<hub api path>`. Two parts do it there, and this
peer runs both on 127.0.0.1, so clients are tested against a real hub:

- the hub: JupyterHub as a child process (sqlite in a temp dir, config generated at
  start-up, which calls `configure_hub` below) with an in-memory proxy (no
  configurable-http-proxy needed), named servers, and a fake spawner whose
  "single-user server" is a tiny HTTP responder inside the hub that comes up after
  `--spawn-seconds` (and stops after `stop_seconds`, 0 by default). Start and stop go
  through the hub's real spawn machinery (pending → ready → stopped); a start with
  `user_options` `{"image": "unknown/…"}` fails after the spawn time, as a Kubernetes
  spawn of an image that cannot be pulled does. `--slow-spawn-timeout` (default 0) is
  how long the hub's start request waits for the spawn: 0 means it answers at once (hub
  202, server pending), as the real service does for its slow Kubernetes spawns;
  `--slow-stop-timeout` (JupyterHub's default, 10 s) the same for a stop.
  The hub logs Check-in users in as EGI's `EGICheckinAuthenticator` does
  (EGI-Federation/egi-notebooks-hub `egiauthenticator.py`): its `GET /hub/jwt_login`
  takes the bearer JWT, decodes it without a signature check but with its expiry
  (401, the hub's HTML error page, when it fails), reuses the hub token it made for the
  same JWT, otherwise introspects the JWT at Check-in (as the confidential client
  `--client-id`), admits the user only with one of the `--allowed-group` entitlements
  (from the introspection's `entitlements` / `eduperson_entitlement`; 403 otherwise),
  logs the user in (username = `preferred_username`, hub groups = the entitlements:
  `manage_groups`) and answers `{"token": <hub API token living exp - iat>, "user"}`.
  `--template-path` gives the hub error pages of its own (EGI's `templates/401.html`);
- the front, as EGI's `services/api_wrapper.py` (a FastAPI service) behaves: for every
  call with `Authorization: Bearer <JWT>` it first asks `jwt_login` with that header;
  a 403 there (a user the hub does not admit) is ignored and the call goes on WITHOUT
  credentials; any other failure answers that status with FastAPI's
  `{"detail": <the hub's body>}`. The call is forwarded to `{hub}/hub/api/<path>` with
  every request header but `Authorization` (replaced by `token <hub token>`) — and
  without the query string, which the front drops. Whatever the hub's status, the
  answer is HTTP 200 with the hub's JSON re-encoded (compact) — a hub 403 arrives as
  `200 {"status":403,"message":…}` — or, when the hub's body is not JSON (the empty
  body of a 201/202/204, an event stream), that body as a JSON string (`""`).
  A request the front cannot complete (the hub unreachable or slower than
  `--api-timeout`, `--login-timeout` for jwt_login; a GET or DELETE with a body, which
  httpx's `get`/`delete` do not take — so `DELETE …/servers/<name>` with `{"remove": true}`
  cannot pass) is FastAPI's `500 Internal Server Error` in text/plain.

For tests: `GET /_peer/stats` (requests per "METHOD path", `jwt_logins`, `unauthorized`
(jwt_login 401s), `not_admitted` (jwt_login 403s), `hub_tokens_minted` (distinct hub
tokens jwt_login handed out)), `POST /_peer/config` with JSON `{"spawn_seconds": S,
"stop_seconds": S}` (either; from now on), `POST /_peer/reset` (counters, and the
peer's `--spawn-seconds`, stops at once).

Run: `python notebooks_peer.py --issuer <Check-in issuer>` prints one JSON line
(`url`, `api_url`, `hub_api`, `hub_url`, `hub_version`, `admin`) once the hub answers,
and serves until SIGTERM, which stops the hub and removes the temp dir.
"""

from __future__ import annotations

import argparse
import base64
import json
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
from urllib.parse import unquote, urlsplit

import httpx

PREFIX = "/services/jwt"
SETTINGS_FILE = "peer_settings.json"  # in the work dir: the front writes it, the hub's spawner reads it
#: The entitlement EGI Notebooks admits by default: membership of its VO.
NOTEBOOKS_VO_MEMBER = "urn:mace:egi.eu:group:vo.notebooks.egi.eu:role=member#aai.egi.eu"
#: Claims the hub reads a user's groups from (Check-in releases both, see checkin_peer).
ENTITLEMENT_CLAIMS = ("entitlements", "eduperson_entitlement")
#: An image the fake spawner cannot pull: `user_options={"image": "unknown/…"}` fails the spawn.
MISSING_IMAGE_PREFIX = "unknown/"
#: Methods whose httpx.AsyncClient shortcut takes no request body: api_wrapper fails (500) when one has a body.
METHODS_WITHOUT_CONTENT = frozenset({"GET", "DELETE", "HEAD", "OPTIONS"})
#: The 403 reason of jwt_login (EGI's `custom_403_message`; the front drops it).
NOT_ADMITTED = "Your Check-in account is not a member of a virtual organisation this hub admits."


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT that has not expired, its signature NOT checked — what EGI's
    `JWTHandler` gets from PyJWT's `decode(verify_signature=False)` (expiry still checked);
    None for anything else. Check-in's introspection is what tells a real token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header, claims = (json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))) for part in parts[:2])
    except (ValueError, TypeError):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    expiry = claims.get("exp")
    if expiry is not None and (not isinstance(expiry, (int, float)) or expiry <= time.time()):
        return None
    return claims


# -- the hub: runs inside the JupyterHub process, called by the generated config --------
def configure_hub(c: Any, *, workdir: str, hub_port: int, public_port: int, admin: str, spawn_seconds: float,
                  slow_spawn_timeout: float, slow_stop_timeout: float, issuer: str, client_id: str, client_secret: str,
                  allowed_groups: list[str], template_path: str | None) -> None:
    """Fill JupyterHub's config `c`. The classes are defined here, not at module level,
    so that the front's process never imports JupyterHub (it would only cost memory)."""
    import asyncio

    from jupyterhub import __version__, orm
    from jupyterhub.auth import Authenticator
    from jupyterhub.handlers import BaseHandler
    from jupyterhub.proxy import Proxy
    from jupyterhub.spawner import Spawner
    from tornado import web

    def setting(name: str, default: float) -> float:
        """A duration a test set through the front's `/_peer/config`, else the peer's default."""
        try:
            return float(json.loads((Path(workdir) / SETTINGS_FILE).read_text())[name])
        except (OSError, ValueError, KeyError, TypeError):
            return default

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
        it answers after the spawn time, which is all the hub checks before marking it ready."""

        http_server: asyncio.Server | None = None

        async def start(self) -> str:
            await asyncio.sleep(setting("spawn_seconds", spawn_seconds))
            image = str((self.user_options or {}).get("image") or "")
            if image.startswith(MISSING_IMAGE_PREFIX):
                raise RuntimeError(f'Back-off pulling image "{image}": not found in the registry')
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
            await asyncio.sleep(setting("stop_seconds", 0.0))
            if self.http_server is not None:
                self.http_server.close()
                self.http_server = None

    class CheckinJWTAuthenticator(Authenticator):
        """What EGI's `EGICheckinAuthenticator` does for a Check-in JWT: introspect it,
        admit the user by entitlement, take the username and groups from Check-in."""

        introspection_endpoint = ""

        async def introspect(self, token: str) -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=30) as client:
                if not self.introspection_endpoint:
                    meta = (await client.get(f"{issuer}/.well-known/openid-configuration")).raise_for_status().json()
                    self.introspection_endpoint = meta["introspection_endpoint"]
                answer = await client.post(self.introspection_endpoint, data={"token": token},
                                           auth=(client_id, client_secret), headers={"Accept": "application/json"})
            return answer.raise_for_status().json()

        async def authenticate(self, handler: Any, data: dict[str, Any] | None) -> dict[str, Any] | None:
            token = (data or {}).get("access_token")
            if not token:
                return None  # the hub's own login form: API users come through jwt_login only
            info = await self.introspect(str(token))
            username = info.get("preferred_username")
            if not info.get("active") or not username:
                return None
            groups: list[str] = []
            for claim in ENTITLEMENT_CLAIMS:
                value = info.get(claim) or []
                groups += [g for g in (value if isinstance(value, list) else [value]) if g not in groups]
            if allowed_groups and not set(groups) & set(allowed_groups):
                return None
            return {"name": str(username), "groups": groups}

    class JWTLoginHandler(BaseHandler):
        """`GET /hub/jwt_login`: a hub API token for a Check-in JWT (see the module docstring)."""

        minted: dict[str, str] = {}  # JWT -> the hub token made for it (EGI keeps it in the auth state)

        async def get(self) -> None:
            token = self.get_auth_token()
            if not token:
                raise web.HTTPError(401)
            claims = unverified_claims(token)
            if claims is None:
                raise web.HTTPError(401)
            previous = self.minted.get(token)
            found = orm.APIToken.find(self.db, previous) if previous else None
            if previous and found is not None and (found.expires_in is None or found.expires_in > 0):
                self.finish({"token": previous, "user": found.user.name})
                return
            user = await self.login_user({"access_token": token, "token_type": "bearer"})
            if user is None:
                raise web.HTTPError(403, NOT_ADMITTED)
            expires_in = int(claims["exp"] - claims["iat"]) if "exp" in claims and "iat" in claims else 3600
            api_token = user.new_api_token(note="JWT auth token", expires_in=max(1, expires_in))
            self.minted[token] = api_token
            self.finish({"token": api_token, "user": user.name})

    class EGINotebooksAuthenticator(CheckinJWTAuthenticator):
        def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
            return [*super().get_handlers(app), (r"/jwt_login", JWTLoginHandler)]

    c.JupyterHub.ip = c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.port, c.JupyterHub.hub_port = public_port, hub_port
    c.JupyterHub.db_url = f"sqlite:///{workdir}/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = f"{workdir}/jupyterhub_cookie_secret"
    c.JupyterHub.proxy_class = MemoryProxy
    c.JupyterHub.spawner_class = FakeSpawner
    c.Spawner.start_timeout = 600  # a test may slow the spawn beyond JupyterHub's default 60 s
    c.JupyterHub.authenticator_class = EGINotebooksAuthenticator
    c.Authenticator.admin_users = {admin}
    c.Authenticator.allow_all = True  # admission is the entitlement check above, as on notebooks.egi.eu
    c.Authenticator.manage_groups = True
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": slow_spawn_timeout, "slow_stop_timeout": slow_stop_timeout}
    if template_path:
        c.JupyterHub.template_paths = [template_path]


# -- the front ---------------------------------------------------------------------------
@dataclass
class FrontState:
    hub_api: str
    hub_version: str
    login_timeout: float = 5.0  # EGI's front asks jwt_login with httpx's default timeout
    api_timeout: float = 15.0  # its `api_timeout` setting
    workdir: Path | None = None  # shared with the hub: where `/_peer/config` leaves the durations
    counters: Counter[str] = field(default_factory=Counter)
    hub_tokens: set[str] = field(default_factory=set)  # distinct tokens jwt_login handed out, since reset
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def jwt_login_url(self) -> str:
        return self.hub_api.removesuffix("/api") + "/jwt_login"

    def count(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1

    def login(self, authorization: str) -> str | None:
        """The hub token `jwt_login` gives for this Authorization header; None when the hub
        refuses the user (403: the call goes on without credentials). Other refusals raise."""
        self.count("jwt_logins")
        answer = httpx.get(self.jwt_login_url, headers={"authorization": authorization}, timeout=self.login_timeout)
        if answer.status_code == 403:
            self.count("not_admitted")
            return None
        if answer.status_code == 401:
            self.count("unauthorized")
        if not answer.is_success:
            raise FrontHTTPException(answer.status_code, answer.text)
        token = str(answer.json()["token"])
        with self.lock:
            if token not in self.hub_tokens:
                self.hub_tokens.add(token)
                self.counters["hub_tokens_minted"] += 1
        return token


class FrontHTTPException(Exception):
    """FastAPI's HTTPException: answered as `{"detail": …}` with its status."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def compact_json(value: Any) -> bytes:
    """How FastAPI's JSONResponse renders a value."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    state: FrontState  # set on the subclass made by `make_front`

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read counters
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
            return self._send(404, compact_json({"detail": "Not Found"}))
        state.count(f"{method} {url.path}")
        try:
            self._send(200, compact_json(self.wrap(method, unquote(url.path), body)))
        except FrontHTTPException as exc:
            self._send(exc.status, compact_json({"detail": exc.detail}))
        except (httpx.HTTPError, ValueError, KeyError, TypeError):  # the front's unhandled errors: Starlette's 500
            self._send(500, b"Internal Server Error", "text/plain; charset=utf-8")

    def wrap(self, method: str, path: str, body: bytes) -> Any:
        """What EGI's api_wrapper returns for this request (FastAPI then encodes it)."""
        state = self.state
        headers = {name.lower(): value for name, value in self.headers.items()}
        hub_token = None
        authorization = headers.pop("authorization", None)
        if authorization is not None:
            parts = authorization.split()
            if len(parts) == 2 and parts[0].lower() == "bearer":
                hub_token = state.login(authorization)
        if hub_token is not None:
            headers["authorization"] = f"token {hub_token}"
        target = state.hub_api + "/" + path.removeprefix(PREFIX).removeprefix("/")  # the query is dropped
        if body and method in METHODS_WITHOUT_CONTENT:
            # api_wrapper calls `client.get(url, content=…)`: httpx's get/delete take no content (TypeError)
            raise TypeError(f"AsyncClient.{method.lower()}() got an unexpected keyword argument 'content'")
        answer = httpx.request(method, target, headers=headers, content=body or None, timeout=state.api_timeout)
        try:
            return answer.json()
        except ValueError:
            return answer.content.decode()  # FastAPI encodes bytes as a JSON string

    def control(self, method: str, action: str, body: bytes = b"") -> None:
        state = self.state
        if method == "GET" and action == "stats":
            with state.lock:
                return self._send(200, compact_json(dict(state.counters)))
        if method == "POST" and action == "reset":
            with state.lock:
                state.counters.clear()
                state.hub_tokens.clear()
            if state.workdir is not None:
                (state.workdir / SETTINGS_FILE).unlink(missing_ok=True)
            return self._send(200, compact_json({"ok": True}))
        if method == "POST" and action == "config" and state.workdir is not None:
            try:
                wanted = json.loads(body or b"{}")
                settings = {name: float(wanted[name]) for name in ("spawn_seconds", "stop_seconds") if name in wanted}
                if not settings:
                    raise KeyError("spawn_seconds")
            except (ValueError, TypeError, KeyError, AttributeError):
                return self._send(400, compact_json({"detail": 'expected JSON {"spawn_seconds": S, "stop_seconds": S}'}))
            path = state.workdir / SETTINGS_FILE
            try:
                current = json.loads(path.read_text())
            except (OSError, ValueError):
                current = {}
            path.write_text(json.dumps({**current, **settings}))
            return self._send(200, compact_json({**current, **settings}))
        self._send(404, compact_json({"detail": f"no control {method} {action}"}))


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
    parser.add_argument("--client-id", default="prefect-egi", help="the hub's confidential client, for introspection")
    parser.add_argument("--client-secret", default="prefect-egi-client-secret")
    parser.add_argument("--admin", default="alice", help="the hub's admin user")
    parser.add_argument("--allowed-group", action="append", dest="allowed_groups",
                        help=f"an entitlement the hub admits (repeatable; default {NOTEBOOKS_VO_MEMBER})")
    parser.add_argument("--spawn-seconds", type=float, default=1.0, help="how long a server start takes")
    parser.add_argument("--slow-spawn-timeout", type=float, default=0.0,
                        help="seconds a start request waits for the spawn before the hub answers 202")
    parser.add_argument("--slow-stop-timeout", type=float, default=10.0,
                        help="seconds a stop request waits for the stop before the hub answers 202")
    parser.add_argument("--template-path", help="a folder of hub error pages (e.g. EGI's 401.html)")
    parser.add_argument("--login-timeout", type=float, default=5.0, help="the front's timeout for jwt_login")
    parser.add_argument("--api-timeout", type=float, default=15.0, help="the front's timeout for the hub's API")
    parser.add_argument("--port", type=int, default=0, help="the front's port; 0 = a free port")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    workdir = Path(tempfile.mkdtemp(prefix="notebooks-peer-"))
    hub_port = free_port()
    hub_api = f"http://127.0.0.1:{hub_port}/hub/api"
    settings = {"workdir": str(workdir), "hub_port": hub_port, "public_port": free_port(), "admin": args.admin,
                "spawn_seconds": args.spawn_seconds, "slow_spawn_timeout": args.slow_spawn_timeout,
                "slow_stop_timeout": args.slow_stop_timeout, "issuer": args.issuer.rstrip("/"),
                "client_id": args.client_id, "client_secret": args.client_secret,
                "allowed_groups": args.allowed_groups or [NOTEBOOKS_VO_MEMBER],
                "template_path": str(Path(args.template_path).resolve()) if args.template_path else None}
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
        state = FrontState(hub_api, version, args.login_timeout, args.api_timeout, workdir)
        server = make_front(state, "127.0.0.1", args.port)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        print(json.dumps({"url": base, "api_url": base + PREFIX, "hub_api": hub_api,
                          "hub_url": hub_api.removesuffix("/api"), "hub_version": version,
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
