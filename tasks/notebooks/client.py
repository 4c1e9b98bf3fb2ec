"""The EGI Notebooks hub's REST API, as EGI serves it: service access, no Prefect here.

EGI puts a small front (`https://notebooks.egi.eu/services/jwt/<hub api path>`)
before JupyterHub: it takes the Check-in access token as a bearer token, logs
the user into the hub, and forwards the call with a hub token. Its one quirk
that matters: it answers HTTP 200 even when the hub refused, with the hub's
error as the body (`{"status": 403, "message": …}`), so the body's status is
the real one. An expired or malformed token is a 401 with an HTML body.

Server start/stop is asynchronous in JupyterHub; waiting for "ready" or
"stopped" goes through the engine's `watch()` loop (`adapter.HubServerAdapter`),
like every other remote wait in this project.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field

from prefect_egi.tasks.faults import TransientServiceError, is_transient_status
from prefect_egi.tasks.http import RetryPolicy, TransientHTTPError, arequest_with_retries

DEFAULT_HUB_URL = "https://notebooks.egi.eu/services/jwt"


class HubError(RuntimeError):
    """The hub refused or failed a call; `status` is the hub's own status code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, str(self)))


class HubTokenRejected(HubError):
    """The front refused the Check-in token (HTTP 401): expired or malformed."""


class HubServer(BaseModel):
    name: str = ""
    ready: bool = False
    pending: str | None = None
    url: str | None = None
    started: datetime | None = None
    last_activity: datetime | None = None


class HubUser(BaseModel):
    """A hub user as the API describes them (the fields a researcher needs)."""

    name: str
    admin: bool = False
    groups: list[str] = Field(default_factory=list)
    servers: dict[str, HubServer] = Field(default_factory=dict)
    last_activity: datetime | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> "HubUser":
        servers = {name: HubServer(**{**(model or {}), "name": name}) for name, model in
                   (body.get("servers") or {}).items()}
        return cls(name=body["name"], admin=bool(body.get("admin")), groups=list(body.get("groups") or []),
                   servers=servers, last_activity=body.get("last_activity"))


class HubClient:
    """Calls through the EGI front with a Check-in token from `token()` (fresh on every call)."""

    def __init__(self, url: str, token: Callable[[], Awaitable[str]], *, verify: bool | str = True,
                 timeout: float = 30.0, retry: RetryPolicy | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self._sent: str | None = None  # the token of the last call, to name its expiry in a 401
        self.retry = retry or RetryPolicy()
        self.http = httpx.AsyncClient(verify=verify, timeout=timeout, follow_redirects=False)

    async def __aenter__(self) -> "HubClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; returns the JSON body, raises `HubError` with the REAL status."""
        url = f"{self.url}/{path.lstrip('/')}"
        self._sent = await self.token()
        headers = {"Authorization": f"Bearer {self._sent}", "Accept": "application/json"}
        kwargs: dict[str, Any] = {"headers": headers, **({"json": body} if body is not None else {})}
        try:
            if method == "GET":  # reads are safe to repeat; a start or stop is not resent blindly
                response = await arequest_with_retries(self.http, method, url, policy=self.retry,
                                                       what="EGI Notebooks", **kwargs)
            else:
                response = await self.http.request(method, url, **kwargs)
        except (TransientHTTPError, httpx.TransportError) as exc:
            raise TransientServiceError(f"EGI Notebooks unreachable: {exc}") from None
        return self._judge(method, path, response)

    def _judge(self, method: str, path: str, response: httpx.Response) -> Any:
        if response.status_code == 401:
            expiry = self._expiry_of_sent_token()
            when = f"; it expired at {expiry.isoformat(timespec='seconds')}" if expiry else ""
            raise HubTokenRejected(401, f"EGI Notebooks refused the Check-in token (HTTP 401){when}. Get a fresh "
                                        "token (or give the credentials a refresh token) and try again.")
        if is_transient_status(response.status_code):
            raise TransientServiceError(f"EGI Notebooks answered HTTP {response.status_code} to {method} /{path}")
        if response.status_code >= 400:
            raise HubError(response.status_code, f"{method} /{path}: HTTP {response.status_code}")
        try:
            body = response.json() if response.content else None
        except ValueError:
            raise HubError(response.status_code, f"{method} /{path}: the answer is not JSON") from None
        if isinstance(body, dict) and isinstance(body.get("status"), int) and body["status"] >= 400:
            # the front's quirk: HTTP 200 carrying the hub's refusal
            raise HubError(body["status"], f"{method} /{path}: the hub answered {body['status']}: "
                                           f"{body.get('message') or 'no reason given'}")
        return body

    def _expiry_of_sent_token(self) -> datetime | None:
        from prefect_egi.tasks.checkin.tokens import parse_token

        try:
            return parse_token(self._sent).expires_at if self._sent else None
        except Exception:  # an opaque or malformed token has no expiry to name
            return None

    async def version(self) -> str:
        response = await self.http.get(f"{self.url}/")
        return str(self._judge("GET", "", response)["version"])

    async def me(self) -> HubUser:
        return HubUser.of(await self.call("GET", "user"))

    async def user(self, name: str) -> HubUser:
        return HubUser.of(await self.call("GET", f"users/{quote(name)}"))

    async def users(self) -> list[HubUser]:
        try:
            return [HubUser.of(u) for u in await self.call("GET", "users")]
        except HubError as exc:
            if exc.status == 403:
                raise HubError(403, "Only hub admins can list users (the hub answered 403).") from None
            raise

    @staticmethod
    def server_path(user: str, server: str) -> str:
        return f"users/{quote(user)}/servers/{quote(server)}" if server else f"users/{quote(user)}/server"

    async def start(self, user: str, server: str = "", options: Mapping[str, Any] | None = None) -> None:
        try:
            await self.call("POST", self.server_path(user, server), dict(options or {}))
        except HubError as exc:
            if exc.status == 400 and "already" in str(exc):  # running already: the wait finds it ready
                return
            raise

    async def stop(self, user: str, server: str = "") -> None:
        try:
            await self.call("DELETE", self.server_path(user, server))
        except HubError as exc:
            if exc.status == 400 and "not running" in str(exc):
                return
            raise
