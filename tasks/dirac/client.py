"""One DiracX server and one VO's credentials on it: sessions of diracx-client, errors mapped.

- `DiracxClient.session()`: a new `AsyncDiracClient` with explicit preferences — never the
  process-wide environment, so two VOs (two blocks) work side by side in one process;
- the credentials file: the one `dirac login` writes, or a private (0600) one made from a
  refresh token; diracx-client refreshes it and writes the rotated token back;
- `DiracxClient.call(action)`: one session, and the failures of diracx-client's HTTP stack
  (azure-core, httpx2) in the engine's vocabulary (`prefect_egi.tasks.faults`).

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from prefect_egi.tasks.faults import CredentialsRejected, TransientServiceError, is_transient_status
from prefect_egi.tasks.http import certificate_error, is_certificate_failure, tls_verify
from prefect_egi.tasks.redaction import register_secret

T = TypeVar("T")

DEFAULT_CREDENTIALS_PATH = "~/.cache/diracx/credentials.json"


class ExpiredCredentials(ValueError):
    """The DiracX token expired and cannot be refreshed."""


def engine_error(exc: BaseException, url: str = "the server") -> BaseException:
    """azure-core and httpx2 (diracx-client's HTTP stack) errors → the engine's
    transient / credentials vocabulary; anything else is returned as it is (final)."""
    import httpx2
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if is_certificate_failure(exc):  # not transient: retrying cannot make the certificate verify
        return certificate_error("DiracX", url)
    if isinstance(exc, httpx2.TransportError):  # e.g. the client's discovery while the server restarts
        return TransientServiceError(f"DiracX unreachable: {type(exc).__name__}")
    if isinstance(exc, httpx2.HTTPStatusError) and is_transient_status(exc.response.status_code):
        # the sandbox store (a presigned URL: never put the URL, a credential, into the text)
        return TransientServiceError(f"DiracX's sandbox store answered HTTP {exc.response.status_code}")
    if isinstance(exc, RuntimeError) and ".well-known" in str(exc):
        # the client's discovery got a non-200 answer (a starting server says 503 for a moment)
        return TransientServiceError("DiracX discovery (/.well-known/openid-configuration) did not answer")
    if isinstance(exc, ClientAuthenticationError) or getattr(exc, "status_code", None) == 401:
        return CredentialsRejected(f"DiracX refused the credentials: {_detail(exc)}")
    if isinstance(exc, ServiceResponseError):  # sent, but the answer failed (e.g. a read timeout)
        return TransientServiceError(f"DiracX did not answer in full: {type(exc).__name__}")
    if isinstance(exc, ServiceRequestError):
        return TransientServiceError(f"DiracX unreachable: {type(exc).__name__}")
    if isinstance(exc, HttpResponseError) and is_transient_status(exc.status_code):
        return TransientServiceError(f"DiracX answered HTTP {exc.status_code}")
    return exc


def _detail(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    try:
        return str(response.json().get("detail"))  # type: ignore[union-attr]
    except Exception:
        return type(exc).__name__


class DiracxClient:
    """A DiracX server, a VO (and group) on it, and where the credentials are."""

    def __init__(self, url: str, vo: str, group: str | None = None, *, credentials_path: str | None = None,
                 refresh_token: SecretStr | None = None, verify_tls: bool = True, ca_bundle: str | None = None,
                 timeout: float = 120.0):
        self.url, self.vo, self.group = url, vo, group
        self.credentials_path, self.refresh_token = credentials_path, refresh_token
        self.verify_tls, self.ca_bundle, self.timeout = verify_tls, ca_bundle, timeout
        self._private_credentials: Path | None = None
        register_secret(refresh_token)

    # -- credentials
    def credentials_target(self) -> Path:
        """Where the credentials file is (or will be, after a device login)."""
        if self.refresh_token is not None:
            return self.credentials_file()
        return Path(self.credentials_path or os.environ.get("DIRACX_CREDENTIALS_PATH", DEFAULT_CREDENTIALS_PATH)
                    ).expanduser()

    def credentials_file(self) -> Path:
        """The credentials file the client uses; a refresh token becomes a private (0600) one,
        made once per client: diracx-client rotates the refresh token inside it, and
        redeeming the original a second time would revoke every refresh token of the user."""
        if self.refresh_token is not None:
            if self._private_credentials is None:
                folder = Path(tempfile.mkdtemp(prefix="prefect-egi-diracx-"))
                path = folder / "credentials.json"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
                with os.fdopen(fd, "w") as handle:
                    json.dump({"access_token": "", "refresh_token": self.refresh_token.get_secret_value(),
                               "expires_on": 0}, handle)
                self._private_credentials = path
            return self._private_credentials
        path = self.credentials_target()
        if not path.is_file():
            raise ValueError(f"credentials_path: {path} does not exist; run `dirac login` or set refresh_token")
        return path

    def usable_credentials(self) -> Path:
        """The credentials file, refusing one whose token expired with nothing to renew it."""
        path = self.credentials_file()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ValueError(f"credentials_path: {path} is not a DiracX credentials file (JSON)") from None
        expires = float(data.get("expires_on") or 0)
        if not data.get("refresh_token") and expires <= datetime.now(timezone.utc).timestamp():
            when = datetime.fromtimestamp(expires, tz=timezone.utc).isoformat(timespec="seconds")
            raise ExpiredCredentials(
                f"credentials_path: the DiracX access token in {path} expired at {when} and there is no refresh "
                "token to renew it; run `dirac login` again (or set refresh_token on the block)")
        return path

    def expire_access_token(self) -> bool:
        """Mark the access token expired so the client refreshes it on its next request.

        For a 401 on a token the client still believes valid (revoked, server key
        rotated). False when there is no refresh token: nothing could renew it."""
        from diracx.core.models import TokenResponse
        from diracx.core.utils import read_credentials, write_credentials

        path = self.credentials_file()
        current = read_credentials(path)
        if not current.refresh_token:
            return False
        write_credentials(TokenResponse(access_token=current.access_token, expires_in=0, token_type="Bearer",
                                        refresh_token=current.refresh_token), location=path)
        return True

    # -- sessions
    def session(self, *, anonymous: bool = False) -> Any:
        """A new `AsyncDiracClient` (use it with `async with`). `anonymous`: without checking
        the credentials first — the device login is what gets them."""
        from diracx.client.aio import AsyncDiracClient
        from diracx.core.preferences import DiracxPreferences

        credentials = self.credentials_target() if anonymous else self.usable_credentials()
        preferences = DiracxPreferences(url=self.url, credentials_path=credentials,
                                        **({"ca_path": self.ca_bundle} if self.ca_bundle else {}))
        return AsyncDiracClient(diracx_preferences=preferences,
                                verify=tls_verify(self.verify_tls, what=f"DiracX {self.url}"),
                                connection_timeout=10, read_timeout=self.timeout)

    async def call(self, action: Callable[[Any], Awaitable[T]]) -> T:
        """`await action(api)` with a new session; service errors in the engine's vocabulary."""
        try:
            async with self.session() as api:
                return await action(api)
        except Exception as exc:
            mapped = engine_error(exc, self.url)
            if mapped is exc:
                raise
            raise mapped from None
