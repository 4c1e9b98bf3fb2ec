"""The `CheckinCredentials` block: where an EGI Check-in access token comes from.

Its client is the token provider (`prefect_egi.tasks.checkin.provider.TokenProvider`);
the tasks that hand its token to a flow are in `prefect_egi.tasks.checkin.tasks`.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, PrivateAttr, SecretStr, field_validator

from prefect_egi.tasks.block_base import EgiBlock, ProviderSlot
from prefect_egi.tasks.checkin.identity import Identity, identify
from prefect_egi.tasks.checkin.oidc import DEFAULT_SCOPE, EGI_CHECKIN_ISSUER, OidcClient
from prefect_egi.tasks.checkin.provider import DEFAULT_MARGIN_SECONDS, TokenProvider
from prefect_egi.tasks.checkin.sources import (
    ENVIRONMENT_VARIABLES,
    NOTEBOOK_TOKEN_FILES,
    EnvironmentToken,
    ExplicitToken,
    MytokenSource,
    OidcAgentSource,
    RefreshTokenSource,
    TokenFile,
    TokenSource,
)
from prefect_egi.tasks.checkin.tokens import AccessToken
from prefect_egi.tasks.http import require_https, tls_verify
from prefect_egi.tasks.redaction import register_all

logger = logging.getLogger("prefect_egi.checkin")


class CheckinCredentials(EgiBlock):
    """An EGI Check-in identity: where to find an access token and how to renew it.

    Sources are tried in this order, each can be switched off: the explicit
    `access_token`; the environment (`OIDC_ACCESS_TOKEN`, `FEDCLOUD_OIDC_ACCESS_TOKEN`);
    the EGI Notebooks token files; the `refresh_token` redeemed at the issuer; a
    `mytoken` (or `MYTOKEN` / `FEDCLOUD_MYTOKEN`) redeemed at its mytoken server;
    oidc-agent. A token is reused until `margin_seconds` before it expires; every
    token and secret is masked in all logs.

    Args:
        issuer: the OIDC issuer (EGI Check-in by default); endpoints come from its discovery.
        access_token / use_environment / token_files / refresh_token / mytoken / oidc_agent_account:
            the sources (see above); client_id / client_secret: the OAuth client.
        mytoken_server: where the mytoken is redeemed (default: the server it names, else
            https://mytoken.data.kit.edu). A rotating mytoken's successor is saved on this block
            when it was loaded by name (the old one is revoked by the server).
        keep_alive: exchange a short-lived token once for a refresh token (RFC 8693).
        verify_signature: check tokens against the issuer's JWKS.
        verify_tls / ca_bundle / timeout_seconds: how the issuer is reached.

    Raises (from `get_access_token`, `get_token`, `identity`):
        NoTokenError: no source had a token — the message lists each one and its fix.
        TokenExpiredError: the only token found expired and nothing can renew it.

    Example:
        CheckinCredentials(client_id="…", refresh_token=SecretStr("…")).save("egi-checkin")
        egi = CheckinCredentials.load("egi-checkin")
        egi.get_access_token(), egi.identity().vos
    """

    _block_type_name = "EGI Check-in Credentials"
    _block_type_slug = "egi-checkin-credentials"
    _logo_url = "https://www.egi.eu/wp-content/uploads/2021/06/EGI-Logo.png"  # type: ignore[assignment]
    _documentation_url = "https://docs.egi.eu/providers/check-in/"  # type: ignore[assignment]

    issuer: str = Field(default=EGI_CHECKIN_ISSUER, description="OIDC issuer; endpoints come from its discovery document.")
    access_token: SecretStr | None = Field(default=None, description="An explicit access token (tried first).")
    use_environment: bool = Field(default=True, description="Read OIDC_ACCESS_TOKEN / FEDCLOUD_OIDC_ACCESS_TOKEN.")
    token_files: list[str] = Field(
        default_factory=lambda: list(NOTEBOOK_TOKEN_FILES),
        description="Token files, re-read when they change (the EGI Notebooks mount by default). Empty: off.",
    )
    client_id: str | None = Field(default=None, description="OAuth client id, for refresh and token exchange.")
    client_secret: SecretStr | None = Field(default=None, description="OAuth client secret (none for public clients).")
    refresh_token: SecretStr | None = Field(default=None, description="A Check-in refresh token (tried after the files).")
    scope: str = Field(default=DEFAULT_SCOPE, description="Scope asked for when refreshing.")
    mytoken: SecretStr | None = Field(
        default=None, description="A mytoken, redeemed at its mytoken server (tried after the refresh token).")
    mytoken_server: str | None = Field(
        default=None, description="The mytoken server; default: the one the mytoken names, else "
                                  "https://mytoken.data.kit.edu.")
    oidc_agent_account: str | None = Field(default=None, description="oidc-agent account short name (tried last).")
    margin_seconds: float = Field(default=DEFAULT_MARGIN_SECONDS, ge=0, description="Refresh this long before expiry.")
    keep_alive: bool = Field(
        default=False,
        description="Exchange a short-lived token for a refresh token (RFC 8693) so long flows outlive it.",
    )
    verify_signature: bool = Field(default=False, description="Verify tokens against the issuer's JWKS.")
    verify_tls: bool = Field(default=True, description="Verify the issuer's TLS certificate.")
    ca_bundle: str | None = Field(default=None, description="CA bundle file for the issuer (instead of the system one).")
    timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of each request to the issuer.")

    _slot: ProviderSlot = PrivateAttr(default_factory=ProviderSlot)

    @field_validator("issuer")
    @classmethod
    def _issuer_is_https(cls, value: str) -> str:
        return require_https(value, "issuer")

    @field_validator("mytoken_server")
    @classmethod
    def _mytoken_server_is_https(cls, value: str | None) -> str | None:
        return require_https(value, "mytoken_server") if value else None

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        register_all([self.access_token, self.client_secret, self.refresh_token, self.mytoken])

    # -- building the provider ---------------------------------------------------------
    def oidc_client(self) -> OidcClient:
        return OidcClient(
            issuer=self.issuer,
            client_id=self.client_id,
            client_secret=self.client_secret,
            scope=self.scope,
            verify=tls_verify(self.verify_tls, self.ca_bundle, what=f"Check-in {self.issuer}"),
            timeout=self.timeout_seconds,
        )

    def sources(self, oidc: OidcClient) -> list[TokenSource]:
        sources: list[TokenSource] = [ExplicitToken(self.access_token)]
        if self.use_environment:
            sources.append(EnvironmentToken(ENVIRONMENT_VARIABLES))
        if self.token_files:
            sources.append(TokenFile(self.token_files))
        sources.append(RefreshTokenSource(oidc, self.refresh_token))
        sources.append(MytokenSource(
            self.mytoken, server=self.mytoken_server, oidc_issuer=self.issuer, read_environment=self.use_environment,
            verify=tls_verify(self.verify_tls, self.ca_bundle, what="the mytoken server"),
            timeout=self.timeout_seconds, on_rotation=self._keep_rotated_mytoken))
        sources.append(OidcAgentSource(self.oidc_agent_account))
        return sources

    def _keep_rotated_mytoken(self, rotated: SecretStr) -> None:
        """The mytoken server replaced this block's mytoken (rotation) and revoked the old one:
        hold the new one, and save it when the block was loaded by name, so that the next
        run does not present a revoked mytoken (with auto-revoke, that kills the new one too)."""
        self.mytoken = rotated
        name = self._block_document_name
        if not name:
            if not self._slot.warned_unsaved_rotation:  # once per block object: rotation happens at every token
                self._slot.warned_unsaved_rotation = True
                logger.warning("The mytoken rotated: the new one is held by this CheckinCredentials object only "
                               "(it was not loaded by name, so it cannot be saved). Save the block to keep it.")
            return
        self.save(name, overwrite=True)
        logger.info("The mytoken rotated: saved its successor on the block %r.", name)

    @property
    def provider(self) -> TokenProvider:
        """The token provider of this block (one per block object, so its cache is shared)."""
        if self._slot.provider is None:
            oidc = self.oidc_client()
            self._slot.provider = TokenProvider(
                self.sources(oidc),
                margin=self.margin_seconds,
                oidc=oidc,
                keep_alive=self.keep_alive,
                verify_signature=self.verify_signature,
            )
        return self._slot.provider

    def client(self) -> TokenProvider:
        """The block's access-layer client: its token provider (shared cache, one refresh)."""
        return self.provider

    # -- what users call ---------------------------------------------------------------
    def get_token(self) -> AccessToken:
        """The current token with its claims (subject, expiry, VOs)."""
        return self.provider.get_token()

    def get_access_token(self) -> str:
        """A valid access token string, refreshed when needed."""
        return self.provider.get_access_token()

    async def aget_access_token(self) -> str:
        """Async `get_access_token`: never blocks the event loop."""
        return await self.provider.aget_access_token()

    def identity(self, ask_issuer: bool = True) -> Identity:
        """Who the current token belongs to (VOs from the issuer's userinfo when it is ours)."""
        return identify(self.get_token(), self.provider.oidc, ask_issuer)

    def exchange_for_refresh_token(self) -> SecretStr:
        """Trade the current access token for a refresh token (RFC 8693), e.g. to save it
        on this block so scheduled flows can run long after the notebook closed."""
        return self.oidc_client().exchange_for_refresh_token(self.get_token().secret)
