"""The EGI Notebooks hub's REST API, as EGI serves it: service access, no Prefect here.

EGI puts a small front (`https://notebooks.egi.eu/services/jwt/<hub api path>`,
EGI-Federation/egi-notebooks-hub `services/api_wrapper.py`) before JupyterHub: for
every call it trades the Check-in access token (bearer) for a hub token at the hub's
`/hub/jwt_login`, then forwards the call. Its quirks, all handled here:

- it answers HTTP 200 even when the hub refused, with the hub's error as the body
  (`{"status": 403, "message": …}`): the body's status is the real one;
- a user the hub does not admit (not a member of a VO it serves) is refused by
  `jwt_login` with 403, which the front swallows: the call reaches the hub without
  credentials, and the hub answers 403 with `null` or "Missing or invalid credentials."
  — never the reason. We name the likely cause instead, with the token's VOs;
- an expired or malformed token is a 401 whose JSON `detail` is the hub's HTML page;
- an empty hub answer (the 202/204 of a start or stop) arrives as the JSON string `""`,
  and an event stream (a spawn's progress) as one JSON string holding the stream;
- the query string is dropped, so list pages after the first cannot be asked for.

A hub can also be called directly (`{hub}/hub/api`, with a JupyterHub API token): then
the real status codes arrive, and a refusal's JSON `message` is kept in the error.

Server start/stop is asynchronous in JupyterHub; waiting for "ready" or
"stopped" goes through the engine's `watch()` loop (`adapter.HubServerAdapter`),
like every other remote wait in this project.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field

from prefect_egi.tasks.faults import TransientServiceError, is_transient_status
from prefect_egi.tasks.http import RetryPolicy, TransientHTTPError, arequest_with_retries

DEFAULT_HUB_URL = "https://notebooks.egi.eu/services/jwt"
NOTEBOOKS_DOCUMENTATION = "https://docs.egi.eu/users/dev-env/notebooks/"
#: The media type that makes JupyterHub answer a list as `{"items", "_pagination"}`.
PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"
#: The most users a page holds (JupyterHub's `api_page_max_limit` default; a hub caps bigger asks).
PAGE_LIMIT = 200
#: The hub's `message` when a call brought no credentials it accepts: what a Check-in user the
#: hub did not admit gets through EGI's front (JupyterHub 6: `null` for /user, this text elsewhere).
NO_CREDENTIALS_MESSAGES = frozenset({"", "Missing or invalid credentials."})

#: How the client authenticates: a Check-in token through EGI's front, or a hub API token directly.
Credential = Literal["checkin", "hub"]


class HubError(RuntimeError):
    """The hub refused or failed a call; `status` is the hub's own status code and
    `hub_message` the reason it gave (None when it gave none)."""

    def __init__(self, status: int, message: str, hub_message: str | None = None):
        super().__init__(message)
        self.status = status
        self.hub_message = hub_message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, str(self), self.hub_message))


class HubTokenRejected(HubError):
    """The front refused the Check-in token (HTTP 401): expired or malformed."""


class HubUserNotAdmitted(HubError):
    """The hub did not let this Check-in identity in (403 without a reason, through EGI's
    front): most likely not a member of a VO the hub serves. The message names the token's VOs."""


class HubListingIncomplete(HubError):
    """Only some of the hub's users could be read (EGI's front drops the paging query);
    `users` holds those that were, `total` how many the hub has."""

    def __init__(self, status: int, message: str, hub_message: str | None = None,
                 users: list["HubUser"] | None = None, total: int | None = None):
        super().__init__(status, message, hub_message)
        self.users = list(users or [])
        self.total = total

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, str(self), self.hub_message, self.users, self.total))


class ServerStopPending(HubError):
    """A start was refused because the server is still stopping: wait for the stop, then start."""


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


@dataclass(frozen=True)
class UsersPage:
    """One page of `GET /users`, as JupyterHub's pagination describes it."""

    users: list[HubUser]
    next_offset: int | None  # where the next page starts; None on the last page
    total: int
    query_dropped: bool = False  # the page is not the one asked for: the offset never reached the hub

    @classmethod
    def read(cls, answer: Any, offset: int) -> "UsersPage":
        """The page in `answer` to a request for the page at `offset`. A plain list is a hub
        without pagination (JupyterHub < 2): all its users on one page."""
        if isinstance(answer, list):
            return cls([HubUser.of(u) for u in answer], None, len(answer))
        if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
            raise HubError(200, "GET /users: the answer is neither a list of users nor a page of them")
        paging = answer.get("_pagination") or {}
        total = int(paging.get("total") or 0)
        if int(paging.get("offset") or 0) != offset:
            return cls([], None, total, query_dropped=True)
        following = paging.get("next")
        return cls([HubUser.of(u) for u in answer["items"]],
                   int(following["offset"]) if isinstance(following, dict) else None, total)


class HubClient:
    """Calls the hub with a token from `token()`, fresh on every call: a Check-in access
    token through EGI's front (`credential="checkin"`), or a hub API token (`"hub"`)."""

    def __init__(self, url: str, token: Callable[[], Awaitable[str]], *, verify: bool | str = True,
                 timeout: float = 30.0, retry: RetryPolicy | None = None, credential: Credential = "checkin"):
        self.url = url.rstrip("/")
        self.token = token
        self.credential = credential
        self._sent: str | None = None  # the token of the last call, to name its expiry or VOs in an error
        self.retry = retry or RetryPolicy()
        self.http = httpx.AsyncClient(verify=verify, timeout=timeout, follow_redirects=False)

    async def __aenter__(self) -> "HubClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, body: Any = None, *, accept: str = "application/json") -> Any:
        """One API call; returns the answer (JSON, or the text of an event stream; None
        when empty), raises `HubError` with the REAL status and the hub's reason."""
        url = f"{self.url}/{path.lstrip('/')}"
        self._sent = await self.token()
        headers = {"Authorization": f"Bearer {self._sent}", "Accept": accept}
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
        """The answer of a call, or the error it stands for — the one place both the front's
        quirks and a hub's own status codes are read."""
        status = response.status_code
        if status == 401:
            expiry = self._expiry_of_sent_token()
            when = f"; it expired at {expiry.isoformat(timespec='seconds')}" if expiry else ""
            raise HubTokenRejected(401, f"EGI Notebooks refused the Check-in token (HTTP 401){when}. Get a fresh "
                                        "token (or give the credentials a refresh token) and try again.")
        if is_transient_status(status):
            raise TransientServiceError(f"EGI Notebooks answered HTTP {status} to {method} /{path}")
        body = self._body(method, path, response)
        if status >= 400:
            raise self._refusal(method, path, status, body)
        if isinstance(body, dict) and isinstance(body.get("status"), int) and body["status"] >= 400:
            raise self._refusal(method, path, body["status"], body)  # the front's quirk: HTTP 200, the hub's refusal
        return None if body == "" else body  # the front re-encodes an empty answer as the JSON string ""

    @staticmethod
    def _body(method: str, path: str, response: httpx.Response) -> Any:
        if not response.content:
            return None
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response.text  # a spawn's progress, from the hub itself
        try:
            return response.json()
        except ValueError:
            if response.status_code >= 400:
                return None  # e.g. an HTML error page: the status says enough
            raise HubError(response.status_code, f"{method} /{path}: the answer is not JSON") from None

    def _refusal(self, method: str, path: str, status: int, body: Any) -> HubError:
        """The error for a hub refusal, keeping the hub's reason (`message`, or a front's `detail`)."""
        reason = body.get("message", body.get("detail")) if isinstance(body, dict) else None
        reason = None if reason is None else str(reason)
        if status == 403 and (reason or "") in NO_CREDENTIALS_MESSAGES:
            if self.credential == "checkin":
                return HubUserNotAdmitted(403, self._not_admitted(method, path), reason)
            return HubError(403, f"{method} /{path}: the hub did not accept the API token (HTTP 403): it is expired, "
                                 "revoked, or lacks the scopes this call needs", reason)
        return HubError(status, f"{method} /{path}: the hub answered {status}: {reason or 'no reason given'}", reason)

    def _not_admitted(self, method: str, path: str) -> str:
        """Why a Check-in user gets a reasonless 403: the hub would not log them in."""
        from prefect_egi.tasks.checkin.tokens import parse_token

        try:
            claims = parse_token(self._sent).claims if self._sent else None
        except Exception:  # an opaque or malformed token: nothing to name
            claims = None
        who = f" ({claims.username})" if claims and claims.username else ""
        if claims is None:
            vos = "its VOs cannot be read from the token"
        elif claims.vos:
            vos = "the token's VOs are " + ", ".join(claims.vos)
        else:
            vos = "the token names no VO (none of its entitlements is a VO membership)"
        return (f"EGI Notebooks did not admit this Check-in identity{who}: the hub answered {method} /{path} with "
                f"403 and no reason, which is what a user it refuses to log in gets (EGI's front drops the reason). "
                f"Likely cause: not a member of a VO the hub serves — {vos}. Join vo.notebooks.egi.eu (or your "
                f"community's VO) as {NOTEBOOKS_DOCUMENTATION} explains, then use a new token.")

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
        return HubUser.of(await self.call("GET", f"users/{quote(name, safe='')}"))

    async def users(self) -> list[HubUser]:
        """Every hub user (admins only), page after page.

        JupyterHub gives lists in pages (`{"items", "_pagination"}` with the pagination media
        type). EGI's front drops the query string, so a later page comes back as the first
        one again: then the users are asked for in one unpaged list (up to the hub's page
        limit), and `HubListingIncomplete` (holding those) is raised if that is not all."""
        try:
            users: list[HubUser] = []
            offset: int | None = 0
            while offset is not None:
                answer = await self.call("GET", f"users?offset={offset}&limit={PAGE_LIMIT}",
                                         accept=PAGINATION_MEDIA_TYPE)
                page = UsersPage.read(answer, offset)
                if page.query_dropped:
                    return await self._users_unpaged(page.total)
                users += page.users
                offset = page.next_offset
            return users
        except HubError as exc:
            if exc.status == 403 and (exc.hub_message or "") not in NO_CREDENTIALS_MESSAGES:  # a user, not an admin
                raise HubError(403, f"Only hub admins can list users (the hub answered 403: "
                                    f"{exc.hub_message or 'no reason given'}).", exc.hub_message) from None
            raise

    async def _users_unpaged(self, total: int) -> list[HubUser]:
        users = [HubUser.of(u) for u in await self.call("GET", "users") or []]
        if len(users) < total:
            raise HubListingIncomplete(
                200, f"Only {len(users)} of the hub's {total} users could be read: the front at {self.url} drops the "
                     "query string, so later pages cannot be asked for. Call the hub's API directly (the NotebooksHub "
                     "block's url = https://<hub>/hub/api, with api_token = a hub API token) for all of them.",
                users=users, total=total)
        return users

    @staticmethod
    def server_path(user: str, server: str) -> str:
        user = quote(user, safe="")
        return f"users/{user}/servers/{quote(server, safe='')}" if server else f"users/{user}/server"

    async def start(self, user: str, server: str = "", options: Mapping[str, Any] | None = None) -> None:
        """Ask the hub to start the server (it answers before the server is ready).

        Raises:
            ServerStopPending: the server is still stopping; wait until it stopped, then start.
        """
        try:
            await self.call("POST", self.server_path(user, server), dict(options or {}))
        except HubError as exc:
            reason = exc.hub_message or ""
            if exc.status == 400 and reason.endswith("is already running"):  # the wait finds it ready
                return
            if exc.status == 400 and reason.endswith("is pending stop"):
                raise ServerStopPending(400, str(exc), reason) from None
            raise

    async def stop(self, user: str, server: str = "") -> None:
        """Ask the hub to stop the server; a named server the hub does not know is stopped already."""
        try:
            await self.call("DELETE", self.server_path(user, server))
        except HubError as exc:
            if exc.status == 404 and server:  # "<user> has no server named '<server>'"
                return
            raise

    async def spawn_failure(self, user: str, server: str = "") -> str | None:
        """Why the server's last start failed ("Spawn failed: …"), as the hub's progress
        stream tells it; None when the hub has no failure to tell (never started, stopped)."""
        try:
            stream = await self.call("GET", self.server_path(user, server) + "/progress", accept="text/event-stream")
        except HubError as exc:
            if exc.status in (400, 404):  # "… is not starting", or no such server any more
                return None
            raise
        failed = [event for event in progress_events(stream) if event.get("failed")]
        return str(failed[-1].get("message") or "Spawn failed") if failed else None


def progress_events(stream: Any) -> list[dict[str, Any]]:
    """The events of a JupyterHub progress stream (`data: {json}` lines, blank keep-alives
    between): from the hub, its text; through EGI's front, the same text as a JSON string."""
    events = []
    for line in (stream if isinstance(stream, str) else "").splitlines():
        if line.startswith("data:"):
            try:
                event = json.loads(line[len("data:"):])
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events
