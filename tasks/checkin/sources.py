"""Where a Check-in access token can come from, one class per source.

The provider tries them in this documented order (each can be switched off):

1. `ExplicitToken` — a token passed as an argument or stored on the block;
2. `EnvironmentToken` — `OIDC_ACCESS_TOKEN` (what the EGI docs tell users to
   export), then `FEDCLOUD_OIDC_ACCESS_TOKEN` (what fedcloudclient reads);
3. `TokenFile` — the EGI Notebooks mounts `/var/run/secrets/egi.eu/access_token`
   then `/var/run/secrets/oidc/access_token`, re-read whenever the file changes
   because the notebook extension refreshes it in place;
4. `RefreshTokenSource` — a refresh token redeemed at the issuer's token endpoint;
5. `MytokenSource` — a mytoken (the block's, else `MYTOKEN` / `FEDCLOUD_MYTOKEN`)
   redeemed at its mytoken server, keeping the mytoken that rotation hands back;
6. `OidcAgentSource` — a running oidc-agent, through `liboidcagent`.

A source either returns an `AccessToken` or raises `SourceUnavailable` with a
reason and a fix; the provider collects those into one error for the user.
"""

from __future__ import annotations

import logging
import os
import ssl
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import SecretStr

from prefect_egi.tasks.checkin.errors import MalformedTokenError
from prefect_egi.tasks.checkin.mytoken import (
    DEFAULT_MYTOKEN_SERVER,
    MYTOKEN_ENVIRONMENT,
    MytokenClient,
    mytoken_claims,
)
from prefect_egi.tasks.checkin.oidc import OidcClient, parse_token_response
from prefect_egi.tasks.checkin.tokens import AccessToken, parse_token
from prefect_egi.tasks.http import require_https
from prefect_egi.tasks.redaction import register_secret

logger = logging.getLogger("prefect_egi.checkin")

ENVIRONMENT_VARIABLES = ("OIDC_ACCESS_TOKEN", "FEDCLOUD_OIDC_ACCESS_TOKEN")
NOTEBOOK_TOKEN_FILES = ("/var/run/secrets/egi.eu/access_token", "/var/run/secrets/oidc/access_token")


class SourceUnavailable(Exception):
    """This source has no token to give; `reason` says why, `hint` how to fix it."""

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


class TokenSource(ABC):
    """One place a token may come from."""

    name: str = "token source"
    #: True when the source can mint a new token by itself (so an expired token
    #: from an earlier source is not the end of the story).
    can_refresh: bool = False

    @abstractmethod
    def fetch(self) -> AccessToken:
        """Return the source's current token or raise `SourceUnavailable`."""

    def unchanged(self, token: AccessToken) -> bool:
        """False when the source now holds a newer token than `token` (cheap check)."""
        return True


def _registered(token: AccessToken) -> AccessToken:
    register_secret(token.secret)
    return token


class ExplicitToken(TokenSource):
    name = "explicit token"

    def __init__(self, token: str | SecretStr | None):
        self._token = token

    def fetch(self) -> AccessToken:
        if self._token is None:
            raise SourceUnavailable("none given")
        return _registered(parse_token(self._token, "the explicit token"))


class EnvironmentToken(TokenSource):
    """The first of the variables that is set (an empty or garbled value is an error,
    not a reason to silently fall through: the user meant to give a token)."""

    def __init__(self, variables: Sequence[str] = ENVIRONMENT_VARIABLES, environ: Mapping[str, str] | None = None):
        self.variables = tuple(variables)
        self._environ = environ
        self.name = "environment (" + ", ".join(self.variables) + ")"

    def fetch(self) -> AccessToken:
        environ = os.environ if self._environ is None else self._environ
        for variable in self.variables:
            if variable in environ:
                return _registered(parse_token(environ[variable], f"environment variable {variable}"))
        raise SourceUnavailable(
            "none of " + ", ".join(self.variables) + " is set",
            "export OIDC_ACCESS_TOKEN=<your access token>",
        )


@dataclass(frozen=True)
class _FileStamp:
    path: str
    inode: int
    size: int
    mtime_ns: int


class TokenFile(TokenSource):
    """A token file, re-read only when its inode, size or mtime change."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]] = NOTEBOOK_TOKEN_FILES):
        self.paths = tuple(str(Path(p).expanduser()) for p in paths)
        self.name = "token file (" + ", ".join(self.paths) + ")"
        self._lock = threading.Lock()
        self._cache: tuple[_FileStamp, AccessToken] | None = None
        self.permission_warnings: list[str] = []

    def _stamp(self) -> _FileStamp | None:
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                return _FileStamp(path, st.st_ino, st.st_size, st.st_mtime_ns)
        return None

    def fetch(self) -> AccessToken:
        stamp = self._stamp()
        if stamp is None:
            raise SourceUnavailable(
                "no such file",
                "enable the access token mount of EGI Notebooks, or set token_files on the block "
                "(--token-file for egi-flows)",
            )
        with self._lock:
            if self._cache and self._cache[0] == stamp:
                return self._cache[1]
            try:
                text = Path(stamp.path).read_text(encoding="utf-8", errors="strict")
            except (OSError, UnicodeDecodeError) as exc:
                raise SourceUnavailable(f"{stamp.path} cannot be read ({type(exc).__name__})") from None
            token = _registered(parse_token(text, f"token file {stamp.path}"))
            self._cache = (stamp, token)
            self._warn_if_world_readable(stamp.path)
            return token

    def _warn_if_world_readable(self, path: str) -> None:
        import logging

        mode = os.stat(path).st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH) and path not in self.permission_warnings:
            self.permission_warnings.append(path)
            logging.getLogger("prefect_egi.checkin").warning(
                "Token file %s is readable by other users (mode %o); run `chmod 600 %s`.",
                path, stat.S_IMODE(mode), path,
            )

    def unchanged(self, token: AccessToken) -> bool:
        stamp = self._stamp()
        with self._lock:
            return bool(self._cache and self._cache[0] == stamp and self._cache[1] is token)


class RefreshTokenSource(TokenSource):
    """Redeems a refresh token; keeps the rotated one when the issuer sends a new one."""

    can_refresh = True

    def __init__(self, client: OidcClient, refresh_token: SecretStr | None, origin: str = "refresh token"):
        self.client = client
        self._refresh_token = refresh_token
        self.name = f"{origin} at {client.issuer}"
        register_secret(refresh_token)

    @property
    def configured(self) -> bool:
        return self._refresh_token is not None and bool(self._refresh_token.get_secret_value())

    def set_refresh_token(self, refresh_token: SecretStr) -> None:
        register_secret(refresh_token)
        self._refresh_token = refresh_token

    def fetch(self) -> AccessToken:
        if not self.configured:
            raise SourceUnavailable(
                "no refresh token configured",
                "set refresh_token and client_id on the block (OIDC_REFRESH_TOKEN and OIDC_CLIENT_ID for egi-flows)",
            )
        if not self.client.client_id:
            raise SourceUnavailable("a refresh token is set but no client_id", "set client_id on the block")
        assert self._refresh_token is not None
        response = self.client.refresh(self._refresh_token)
        if response.refresh_token is not None:
            self._refresh_token = response.refresh_token
        return _registered(parse_token_response(response, f"refresh token grant at {self.client.issuer}"))


class MytokenSource(TokenSource):
    """A mytoken redeemed at its mytoken server for access tokens, as fedcloudclient does.

    The mytoken is the block's, else the first of `MYTOKEN`, `FEDCLOUD_MYTOKEN` that is
    set. It goes only to the server it belongs to: a mytoken JWT names that server (`iss`),
    and a `server` configured otherwise is refused rather than sent it; a short (opaque)
    mytoken goes to `server`, default `https://mytoken.data.kit.edu`. When the server
    rotates the mytoken, the new one is used from then on (the old one is revoked):
    `on_rotation` is told when it replaces the block's own, so the block can keep it."""

    can_refresh = True

    def __init__(self, mytoken: SecretStr | None, *, server: str | None = None, oidc_issuer: str | None = None,
                 read_environment: bool = True, environ: Mapping[str, str] | None = None,
                 verify: bool | ssl.SSLContext = True, timeout: float = 10.0,
                 on_rotation: Callable[[SecretStr], None] | None = None):
        self._mytoken = mytoken if mytoken is not None and mytoken.get_secret_value().strip() else None
        self.server = server.rstrip("/") if server else None
        self.oidc_issuer = oidc_issuer
        self.variables = MYTOKEN_ENVIRONMENT if read_environment else ()
        self._environ = environ
        self._verify, self._timeout = verify, timeout
        self._on_rotation = on_rotation
        self._rotated: tuple[SecretStr, str] | None = None  # (the newest mytoken, where the first one came from)
        self._clients: dict[str, MytokenClient] = {}
        self.name = "mytoken" + (" (" + ", ".join(self.variables) + ")" if self._mytoken is None and self.variables else "")
        register_secret(self._mytoken)

    def _current(self) -> tuple[SecretStr, str]:
        """(the mytoken to present, where it came from)."""
        if self._rotated is not None:
            return self._rotated
        if self._mytoken is not None:
            return self._mytoken, "the block's mytoken"
        environ = os.environ if self._environ is None else self._environ
        for variable in self.variables:
            if variable in environ:
                value = environ[variable].strip()
                if not value:
                    raise MalformedTokenError(f"environment variable {variable} is empty: expected a mytoken")
                register_secret(value)
                return SecretStr(value), f"environment variable {variable}"
        raise SourceUnavailable(
            "no mytoken configured",
            "set mytoken on the block or export MYTOKEN=<your mytoken> (made at https://mytoken.data.kit.edu "
            "with the 'AT' capability)" if self.variables else "set mytoken on the block",
        )

    def _server_for(self, mytoken: SecretStr, origin: str) -> str:
        """The server this mytoken may be sent to; refuse a configured server it does not belong to."""
        claims = mytoken_claims(mytoken) or {}
        issued_by = str(claims.get("iss") or "").rstrip("/") or None
        if self.server and issued_by and issued_by != self.server:
            raise SourceUnavailable(
                f"{origin} was issued by {issued_by}, not by the configured mytoken server {self.server}: "
                "it is not sent to a server it does not belong to",
                f"set mytoken_server to {issued_by} (or leave it empty)")
        expires = claims.get("exp")
        if isinstance(expires, (int, float)) and expires <= datetime.now(timezone.utc).timestamp():
            when = datetime.fromtimestamp(expires, tz=timezone.utc).isoformat(timespec="seconds")
            raise SourceUnavailable(f"{origin} expired at {when}", "create a new mytoken")
        server = self.server or issued_by or DEFAULT_MYTOKEN_SERVER
        try:
            return require_https(server, "the mytoken server")
        except ValueError as exc:
            raise SourceUnavailable(f"{origin} names the server {server}: {exc}") from None

    def fetch(self) -> AccessToken:
        mytoken, origin = self._current()
        server = self._server_for(mytoken, origin)
        client = self._clients.get(server)
        if client is None:
            client = self._clients[server] = MytokenClient(server, verify=self._verify, timeout=self._timeout)
        redemption = client.redeem(mytoken, self.oidc_issuer)
        if redemption.rotated is not None:
            self._adopt_rotated(redemption.rotated, origin)
        return _registered(parse_token(redemption.access_token, f"mytoken at {server}"))

    def _adopt_rotated(self, rotated: SecretStr, origin: str) -> None:
        """Use the rotated mytoken from now on, and say where the old one still lies, stale."""
        self._rotated = (rotated, origin)
        if origin == "the block's mytoken" and self._on_rotation is not None:
            try:
                self._on_rotation(rotated)
            except Exception as exc:  # keeping it is best effort: this process holds the new one anyway
                logger.warning("The mytoken rotated, but keeping the new one failed (%s: %s); this process "
                               "uses it until it ends.", type(exc).__name__, exc)
            return
        logger.warning(
            "The mytoken from %s rotated: the server revoked it and gave a new one, which only this process "
            "holds. The next run will be refused with the old one. Save rotating mytokens on a CheckinCredentials "
            "block (it keeps the new one), or create a mytoken without rotation.", origin.replace("the ", "", 1))


class OidcAgentSource(TokenSource):
    """A token from a running oidc-agent (optional extra `prefect-egi[oidc-agent]`)."""

    can_refresh = True

    def __init__(self, account: str | None, min_valid_period: int = 60):
        self.account = account or os.environ.get("OIDC_AGENT_ACCOUNT")
        self.min_valid_period = min_valid_period
        self.name = f"oidc-agent (account {self.account})" if self.account else "oidc-agent"

    def fetch(self) -> AccessToken:
        if not self.account:
            raise SourceUnavailable("no account configured", "set oidc_agent_account or OIDC_AGENT_ACCOUNT")
        try:
            import liboidcagent
        except ImportError:
            raise SourceUnavailable(
                "the liboidcagent package is not installed", "pip install 'prefect-egi[oidc-agent]'"
            ) from None
        if not os.environ.get("OIDC_SOCK"):
            raise SourceUnavailable("oidc-agent is not running (OIDC_SOCK is not set)", "eval $(oidc-agent-service use)")
        try:
            value = liboidcagent.get_access_token(
                self.account, min_valid_period=self.min_valid_period, application_hint="prefect-egi"
            )
        except Exception as exc:  # liboidcagent raises OidcAgentError and socket errors
            raise SourceUnavailable(f"oidc-agent refused: {type(exc).__name__}: {exc}") from None
        return _registered(parse_token(value, f"oidc-agent account {self.account}"))
