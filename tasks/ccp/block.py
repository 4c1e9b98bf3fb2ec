"""The `CCP` block: a D4Science CCP endpoint, the VRE it works in, and the user's identity.

Its client is a `CCPClient` whose bearer is the VRE's UMA token, kept valid by a token
provider built from the Check-in machinery (`prefect_egi.tasks.ccp.identity`): the
user's token (an access token given, or a refresh token redeemed at D4Science's IAM),
exchanged for the UMA token of `context`, renewed before it expires, once for any
number of concurrent callers. In a D4Science-integrated notebook none of that is
needed: the VRE's UMA token (`D4SCIENCE_TOKEN`) and context (`D4SCIENCE_CONTEXT`) are
in the environment, and are used first while they are valid.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, field_validator

from prefect_egi.tasks.block_base import JobServiceBlock, ProviderSlot
from prefect_egi.tasks.ccp.adapter import CCPAdapter
from prefect_egi.tasks.ccp.client import DEFAULT_CCP_URL, CCPClient
from prefect_egi.tasks.ccp.identity import check_context, d4science_environment, uma_provider
from prefect_egi.tasks.ccp.logs import LogSink
from prefect_egi.tasks.checkin.oidc import OidcClient
from prefect_egi.tasks.checkin.provider import DEFAULT_MARGIN_SECONDS, TokenProvider
from prefect_egi.tasks.checkin.sources import ExplicitToken, RefreshTokenSource
from prefect_egi.tasks.http import require_https, tls_verify
from prefect_egi.tasks.redaction import register_all

#: D4Science's IAM (Keycloak realm `d4science`), as D4Science's examples and EGI's
#: D4Science hub authenticator (`D4SCIENCE_OIDC_URL`) name it
D4SCIENCE_IAM = "https://accounts.d4science.org/auth/realms/d4science"


class CCP(JobServiceBlock):
    """A D4Science CCP (Cloud Computing Platform) endpoint, the VRE, and who you are there.

    CCP accepts only the UMA token of the VRE a call is for. The block gets it from your
    D4Science user token — `access_token` (used until it expires) or `refresh_token` +
    `client_id` (renewed at `issuer` as needed) — by Keycloak's UMA grant for `context`.
    In a D4Science notebook, `D4SCIENCE_TOKEN` / `D4SCIENCE_CONTEXT` are used as they are.
    Every token is masked in all logs and sent only to the IAM and to CCP's own origin.

    Args:
        url: CCP's API root (`…/processes`, `…/jobs` under it).
        context: the VRE, `/d4science.research-infrastructures.eu/<VO>/<VRE>`; empty: the
            notebook's own (`D4SCIENCE_CONTEXT`).
        issuer: D4Science's IAM (its OIDC issuer URL).
        client_id / client_secret: the OAuth client the refresh token was issued to.
        refresh_token / access_token: your D4Science user token(s).
        use_environment: use `D4SCIENCE_TOKEN` when `D4SCIENCE_CONTEXT` is this VRE.
        download_hosts: other hosts result files may be downloaded from (without the token).
        margin_seconds: renew the UMA token this long before it expires.
        verify_tls / ca_bundle / timeout_seconds: how CCP and the IAM are reached.

    Example:
        CCP(context="/d4science.research-infrastructures.eu/D4OS/Blue-Cloud2026Lab",
            client_id="…", refresh_token=SecretStr("…")).save("ccp")
        result = run_ccp_method("ccp", "my-method", {"count": 3})
    """

    _block_type_name = "D4Science CCP"
    _block_type_slug = "egi-ccp"
    _logo_url = "https://www.d4science.org/image/layout_set_logo?img_id=12630"  # type: ignore[assignment]
    _documentation_url = "https://ccp.cloud.d4science.org/docs/"  # type: ignore[assignment]

    url: str = Field(default=DEFAULT_CCP_URL, description="CCP's API root (OGC API – Processes).")
    context: str | None = Field(
        default=None, description="The VRE, /d4science.research-infrastructures.eu/<VO>/<VRE>; empty: "
                                  "D4SCIENCE_CONTEXT from the environment (set in D4Science notebooks).")
    issuer: str = Field(default=D4SCIENCE_IAM, description="D4Science's IAM: the OIDC issuer of your user token.")
    client_id: str | None = Field(default=None, description="The OAuth client your refresh token was issued to.")
    client_secret: SecretStr | None = Field(default=None, description="Its secret (none for public clients).")
    refresh_token: SecretStr | None = Field(default=None, description="Your D4Science refresh token.")
    access_token: SecretStr | None = Field(
        default=None, description="A D4Science user access token (tried before the refresh token).")
    use_environment: bool = Field(
        default=True, description="Use D4SCIENCE_TOKEN (the VRE's UMA token a D4Science notebook has) when "
                                  "D4SCIENCE_CONTEXT is this VRE.")
    download_hosts: list[str] = Field(
        default_factory=list, description="Other hosts result files may be downloaded from (never sent the token).")
    margin_seconds: float = Field(default=DEFAULT_MARGIN_SECONDS, ge=0, description="Renew this long before expiry.")
    verify_tls: bool = Field(default=True, description="Verify the TLS certificates of CCP and the IAM.")
    ca_bundle: str | None = Field(default=None, description="CA bundle for CCP and the IAM (instead of the system one).")
    timeout_seconds: float = Field(default=60.0, gt=0, description="Timeout of each HTTP request.")

    _slot: ProviderSlot = PrivateAttr(default_factory=ProviderSlot)

    @field_validator("url")
    @classmethod
    def _url_is_https(cls, value: str) -> str:
        return require_https(value, "url")

    @field_validator("issuer")
    @classmethod
    def _issuer_is_https(cls, value: str) -> str:
        return require_https(value, "issuer")

    @field_validator("context")
    @classmethod
    def _context_shape(cls, value: str | None) -> str | None:
        return check_context(value) if value else None

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        register_all([self.client_secret, self.refresh_token, self.access_token])

    def _verify(self, what: str) -> Any:
        return tls_verify(self.verify_tls, self.ca_bundle, what=what)

    def vre(self) -> str:
        """The VRE context calls are for: the block's, else the notebook's `D4SCIENCE_CONTEXT`."""
        context, _ = d4science_environment(self.context)
        if not context:
            raise ValueError("CCP.context is empty and D4SCIENCE_CONTEXT is not set: name the VRE, e.g. "
                             "CCP(context='/d4science.research-infrastructures.eu/<VO>/<VRE>') (copy it from the "
                             "VRE's page)")
        return check_context(context)

    @property
    def provider(self) -> TokenProvider:
        """The provider of the VRE's UMA token (one per block object: its cache is shared)."""
        if self._slot.provider is None:
            oidc = OidcClient(issuer=self.issuer, client_id=self.client_id, client_secret=self.client_secret,
                              verify=self._verify(f"D4Science IAM {self.issuer}"),
                              timeout=min(self.timeout_seconds, 30.0))
            user = TokenProvider([ExplicitToken(self.access_token),
                                  RefreshTokenSource(oidc, self.refresh_token, "D4Science refresh token")],
                                 margin=self.margin_seconds, oidc=oidc)
            context, ready = d4science_environment(self.context) if self.use_environment else (self.vre(), [])
            self._slot.provider = uma_provider(user, oidc, context or self.vre(), margin=self.margin_seconds,
                                               first=ready)
        return self._slot.provider

    def client(self) -> CCPClient:
        """A CCP client for this endpoint and VRE (one connection pool; `async with` closes it)."""
        return CCPClient(self.url, self.provider.aget_access_token, context=self.vre(),
                         verify=self._verify(f"CCP {self.url}"), timeout=self.timeout_seconds,
                         download_hosts=self.download_hosts)

    def job_adapter(self, on_log: LogSink | None = None) -> CCPAdapter:
        """The engine adapter for this endpoint's jobs (a 401 renews the UMA token); `on_log`
        receives each line the jobs print, where CCP links their logs."""
        return CCPAdapter(self.client(), self.provider, on_log=on_log)
