"""The `DiracX` block: a DiracX server and the credentials of one VO/group on it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, field_validator

from prefect_egi.tasks.block_base import JobServiceBlock
from prefect_egi.tasks.dirac.adapter import DiracAdapter
from prefect_egi.tasks.dirac.client import DiracxClient
from prefect_egi.tasks.http import require_https
from prefect_egi.tasks.redaction import register_all


class DiracX(JobServiceBlock):
    """A DiracX server and the credentials of one VO/group on it.

    Credentials come from the file `dirac login` writes (or `egi-flows dirac login`,
    or the `dirac_login` task) — or from a refresh token saved on the block, which
    becomes a private (0600) credentials file that diracx-client keeps refreshed.
    Two blocks for two VOs work side by side in one process.

    Args:
        url: the DiracX server (https; plain http only for 127.0.0.1/localhost).
        vo: the virtual organisation; group: the DIRAC group (the VO's default when empty).
        credentials_path: a credentials file (default: `DIRACX_CREDENTIALS_PATH`, else
            `~/.cache/diracx/credentials.json`).
        refresh_token: a DiracX refresh token, instead of a file.
        verify_tls / ca_bundle: certificate verification (on by default) and the CA to trust.
        timeout_seconds: the read timeout of each request.

    Example:
        DiracX(url="https://diracx.example.org", vo="biomed", group="biomed_user").save("diracx")
        ids = submit_jobs("diracx", [DiracJob(executable="echo", arguments="hello")])
    """

    _block_type_name = "DiracX"
    _block_type_slug = "egi-diracx"
    _logo_url = "https://diracgrid.org/images/dirac-logo.png"  # type: ignore[assignment]
    _documentation_url = "https://diracx.diracgrid.org/"  # type: ignore[assignment]

    url: str = Field(description="DiracX server URL.")
    vo: str = Field(description="Virtual organisation.")
    group: str | None = Field(default=None, description="DIRAC group (the VO's default when empty).")
    credentials_path: str | None = Field(default=None, description="A DiracX credentials file (what `dirac login` writes).")
    refresh_token: SecretStr | None = Field(default=None, description="A DiracX refresh token, instead of a file.")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    ca_bundle: str | None = Field(default=None, description="CA bundle (file or directory) for the server.")
    timeout_seconds: float = Field(default=120.0, gt=0, description="Read timeout of each request to DiracX.")

    _client: DiracxClient | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        register_all([self.refresh_token])

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        return require_https(value, "url")

    def client(self) -> DiracxClient:
        """The block's DiracX client — one per block object, so a refresh token becomes
        one private credentials file that diracx-client keeps rotating."""
        if self._client is None:
            self._client = DiracxClient(self.url, self.vo, self.group, credentials_path=self.credentials_path,
                                        refresh_token=self.refresh_token, verify_tls=self.verify_tls,
                                        ca_bundle=self.ca_bundle, timeout=self.timeout_seconds)
        return self._client

    def job_adapter(self) -> DiracAdapter:
        """The engine adapter for this block's jobs (one bulk search per poll)."""
        return DiracAdapter(self.client())
