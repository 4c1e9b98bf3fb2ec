"""The `DataMiner` block: a D4Science DataMiner endpoint and the gCube token to use it."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from prefect_egi.tasks.block_base import JobServiceBlock
from prefect_egi.tasks.dataminer.adapter import DEFAULT_DATAMINER_URL, DataMinerAdapter
from prefect_egi.tasks.dataminer.client import WPSClient
from prefect_egi.tasks.http import require_https, tls_verify
from prefect_egi.tasks.redaction import register_all


class DataMiner(JobServiceBlock):
    """A D4Science DataMiner (OGC WPS 1.0) endpoint and the gCube token to use it.

    The token is sent only to the DataMiner's own origin (never to an output URL on
    another host) and is masked in every log.

    Args:
        url: the WPS endpoint (https; plain http only for 127.0.0.1/localhost).
        gcube_token: the gCube token of your VRE; empty: `GCUBE_TOKEN` from the environment,
            which D4Science notebooks set.
        token_mode: how the token travels — `gcube-token` header, query parameter or basic auth.
        verify_tls / ca_bundle: certificate verification (on by default) and the CA to trust.
        timeout_seconds: the timeout of each HTTP request.

    Example:
        DataMiner(gcube_token=SecretStr("…")).save("dataminer")
        result = run_algorithm("dataminer", "CSV_SUMMARY", {"table": "https://…/data.csv"})
    """

    _block_type_name = "D4Science DataMiner"
    _block_type_slug = "egi-dataminer"
    _logo_url = "https://www.d4science.org/image/layout_set_logo?img_id=12630"  # type: ignore[assignment]
    _documentation_url = "https://dev.d4science.org/dataminer"  # type: ignore[assignment]

    url: str = Field(default=DEFAULT_DATAMINER_URL, description="WPS endpoint of the DataMiner.")
    gcube_token: SecretStr | None = Field(
        default=None, description="gCube token; empty: GCUBE_TOKEN from the environment (set in D4Science notebooks).")
    token_mode: Literal["header", "query", "basic"] = Field(
        default="header", description="How to send the token: gcube-token header, query parameter or basic auth.")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    ca_bundle: str | None = Field(default=None, description="CA bundle for the server (instead of the system one).")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of each HTTP request.")

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        return require_https(value, "url")

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        register_all([self.gcube_token])

    def token(self) -> SecretStr | None:
        """The gCube token: the block's own, else `GCUBE_TOKEN` from the environment."""
        if self.gcube_token is not None and self.gcube_token.get_secret_value():
            return self.gcube_token
        env = os.environ.get("GCUBE_TOKEN")
        return SecretStr(env) if env else None

    def client(self) -> WPSClient:
        """A WPS client for this endpoint (one connection pool; `async with` closes it)."""
        return WPSClient(self.url, token=self.token(), token_mode=self.token_mode,
                         verify=tls_verify(self.verify_tls, self.ca_bundle, what=f"DataMiner {self.url}"),
                         timeout=self.timeout_seconds)

    def job_adapter(self) -> DataMinerAdapter:
        """The engine adapter for this endpoint's executions."""
        return DataMinerAdapter(self.client())
