"""Where a Check-in access token can come from, one class per source.

The provider tries them in this documented order (each can be switched off):

1. `ExplicitToken` — a token passed as an argument or stored on the block;
2. `EnvironmentToken` — `OIDC_ACCESS_TOKEN` (what the EGI docs tell users to
   export), then `FEDCLOUD_OIDC_ACCESS_TOKEN` (what fedcloudclient reads);
3. `TokenFile` — the EGI Notebooks mounts `/var/run/secrets/egi.eu/access_token`
   then `/var/run/secrets/oidc/access_token`, re-read whenever the file changes
   because the notebook extension refreshes it in place;
4. `RefreshTokenSource` — a refresh token redeemed at the issuer's token endpoint;
5. `OidcAgentSource` — a running oidc-agent, through `liboidcagent`.

A source either returns an `AccessToken` or raises `SourceUnavailable` with a
reason and a fix; the provider collects those into one error for the user.
"""

from __future__ import annotations

import os
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from prefect_egi.tasks.checkin.oidc import OidcClient, parse_token_response
from prefect_egi.tasks.checkin.tokens import AccessToken, parse_token
from prefect_egi.tasks.redaction import register_secret

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
