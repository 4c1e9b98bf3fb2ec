"""The `NotebooksHub` block: the EGI Notebooks hub's REST API and the Check-in identity used on it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator

from prefect_egi.tasks.block_base import EgiBlock
from prefect_egi.tasks.checkin.block import CheckinCredentials
from prefect_egi.tasks.http import require_https, tls_verify
from prefect_egi.tasks.notebooks.client import DEFAULT_HUB_URL, HubClient
from prefect_egi.tasks.redaction import register_all


class NotebooksHub(EgiBlock):
    """The EGI Notebooks hub's REST API and the Check-in identity used on it.

    The hub is reached through EGI's token front (`https://notebooks.egi.eu/services/jwt`),
    which takes the Check-in access token as a bearer token — the same identity as every
    other service, refreshed when needed. A hub can also be called directly (`url` = its
    `/hub/api`) with a JupyterHub API token (`api_token`, from the hub's token page or
    `JUPYTERHUB_API_TOKEN` inside a notebook); the Check-in credentials are then not used.

    Args:
        url: the hub API behind the token front (or the hub's own API, with `api_token`).
        checkin: where the Check-in access token comes from.
        api_token: a hub API token, for a hub reached directly.
        timeout_seconds: the timeout of each request.
        verify_tls / ca_bundle: certificate verification (on by default) and the CA to trust.

    Example:
        NotebooksHub(checkin=CheckinCredentials.load("egi-checkin")).save("notebooks")
        server = start_server("notebooks")        # waits until it is ready
    """

    _block_type_name = "EGI Notebooks Hub"
    _block_type_slug = "egi-notebooks-hub"
    _logo_url = "https://www.egi.eu/wp-content/uploads/2021/06/EGI-Logo.png"  # type: ignore[assignment]
    _documentation_url = "https://docs.egi.eu/users/dev-env/notebooks/"  # type: ignore[assignment]

    url: str = Field(default=DEFAULT_HUB_URL, description="The hub API behind EGI's token front.")
    checkin: CheckinCredentials = Field(default_factory=CheckinCredentials,
                                        description="Where the Check-in access token comes from.")
    api_token: SecretStr | None = Field(
        default=None, description="A JupyterHub API token, for a hub reached directly (url = its /hub/api); "
                                  "the Check-in credentials are then not used.")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of each request.")
    verify_tls: bool = Field(default=True, description="Verify the hub's TLS certificate.")
    ca_bundle: str | None = Field(default=None, description="CA bundle for the hub (instead of the system one).")

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        return require_https(value, "url")

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        register_all([self.api_token])

    def client(self) -> HubClient:
        """A hub client (`async with`): with `api_token` set, it sends that to the hub; otherwise
        it asks the Check-in credentials for a token at every call (EGI's front takes it)."""
        verify = tls_verify(self.verify_tls, self.ca_bundle, what=f"the hub {self.url}")
        if self.api_token is not None:
            api_token = self.api_token

            async def hub_token() -> str:
                return api_token.get_secret_value()

            return HubClient(self.url, hub_token, verify=verify, timeout=self.timeout_seconds, credential="hub")
        return HubClient(self.url, self.checkin.aget_access_token, verify=verify, timeout=self.timeout_seconds)
