"""The UMA token of a D4Science VRE, kept valid with the Check-in provider's machinery.

CCP accepts only the UMA token (a Keycloak RPT) of the VRE a call is for. D4Science's
documented way to get one: a user access token from D4Science's IAM, then Keycloak's UMA
grant (`grant_type=urn:ietf:params:oauth:grant-type:uma-ticket`, `audience=<VRE context>`)
with the user's token as the bearer (`OidcClient.uma_token`). The audience is the context
percent-encoded (`%2Fd4science.research-infrastructures.eu%2F…`): the VRE's client id in
D4Science's Keycloak, as D4Science's own examples send it (`URLencode(context,
reserved = TRUE)`) and as EGI's D4Science hub authenticator does (`quote_plus`,
EGI-Federation/egi-notebooks-hub `egi_notebooks_hub/d4science/__init__.py`).

In a D4Science-integrated notebook the hub has already done that exchange: it sets
`D4SCIENCE_TOKEN` (the VRE's UMA token) and `D4SCIENCE_CONTEXT` (the VRE) in the
server's environment (same file, `pre_spawn_start`). `d4science_environment` reads them.

Nothing here is a second token cache: the RPT comes from a `UmaTokenSource` inside the
same `TokenProvider` Check-in tokens use, so it is reused until shortly before it expires,
renewed once for any number of concurrent callers (threads or asyncio tasks), registered
for redaction, and dropped by `invalidate()` after a 401. The user's token comes from its
own provider (a refresh token at D4Science's IAM — what CCP itself hands a running method
as `ccprefreshtoken`, `ccpclientid`, `ccpiamurl`, `ccpcontext` —, a token file, …), which keeps itself
fresh the same way; each renewal of the RPT is one UMA grant with the user's current token
(Keycloak could also renew an RPT by its refresh token; one path is simpler and needs no
client of ours).

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from prefect_egi.tasks.checkin.errors import TokenEndpointError
from prefect_egi.tasks.checkin.oidc import OidcClient, parse_token_response
from prefect_egi.tasks.checkin.provider import DEFAULT_MARGIN_SECONDS, TokenProvider
from prefect_egi.tasks.checkin.sources import EnvironmentToken, SourceUnavailable, TokenSource
from prefect_egi.tasks.checkin.tokens import AccessToken
from prefect_egi.tasks.redaction import register_secret


def check_context(context: str) -> str:
    """A VRE context as D4Science writes it: `/<infrastructure>/<VO>/<VRE>`."""
    if not isinstance(context, str) or not context.startswith("/") or len(context.strip("/").split("/")) < 2:
        raise ValueError(f"the VRE context must look like /d4science.research-infrastructures.eu/<VO>/<VRE> "
                         f"(got {context!r}); copy it from the VRE's page")
    return context


#: what a D4Science-integrated notebook server has in its environment (see the docstring)
D4SCIENCE_TOKEN_VARIABLE = "D4SCIENCE_TOKEN"
D4SCIENCE_CONTEXT_VARIABLE = "D4SCIENCE_CONTEXT"


def uma_audience(context: str) -> str:
    """The `audience` of the UMA grant for a VRE: its context, percent-encoded."""
    return quote(context, safe="")


def d4science_environment(context: str | None,
                          environ: Mapping[str, str] | None = None) -> tuple[str | None, list[TokenSource]]:
    """(the VRE context, the sources its environment offers) in a D4Science notebook.

    `context` None: the notebook's own VRE (`D4SCIENCE_CONTEXT`). Its `D4SCIENCE_TOKEN` is
    the UMA token of that VRE only, so it is offered only when the contexts match."""
    environ = os.environ if environ is None else environ
    here = environ.get(D4SCIENCE_CONTEXT_VARIABLE) or None
    context = context or here
    if context and context == here and D4SCIENCE_TOKEN_VARIABLE in environ:
        return context, [EnvironmentToken((D4SCIENCE_TOKEN_VARIABLE,), environ)]
    return context, []


class UmaTokenSource(TokenSource):
    """The RPT of one VRE, from Keycloak's UMA grant with the user's current token."""

    can_refresh = True

    def __init__(self, user: TokenProvider, oidc: OidcClient, context: str):
        self.user, self.oidc, self.context = user, oidc, check_context(context)
        self.name = f"UMA token for {context} at {oidc.issuer}"

    def fetch(self) -> AccessToken:
        for attempt in range(2):
            user_token = self.user.get_token()
            try:
                answer = self.oidc.uma_token(user_token.secret, uma_audience(self.context))
            except TokenEndpointError as exc:
                if exc.error == "access_denied":
                    raise SourceUnavailable(
                        f"{self.oidc.issuer} refused a UMA token for {self.context} ({exc.description or exc.error}): "
                        "the user is not a member of this VRE", "ask to join the VRE on its page, or name the "
                        "context of a VRE you are in") from None
                if exc.error in ("invalid_grant", "invalid_token", "HTTP 401") and attempt == 0:
                    self.user.invalidate()  # the user's token was refused: get a new one, once
                    continue
                raise
            token = parse_token_response(answer, self.name)
            register_secret(token.secret)
            return token
        raise AssertionError("unreachable")


def uma_provider(user: TokenProvider, oidc: OidcClient, context: str, *,
                 margin: float = DEFAULT_MARGIN_SECONDS, first: Sequence[TokenSource] = ()) -> TokenProvider:
    """A provider of the VRE's UMA token: `await provider.aget_access_token()` is the bearer
    `CCPClient` wants; `provider.invalidate()` after a 401 makes the next call renew it.
    `first`: sources of a ready UMA token tried before the grant (a notebook's environment)."""
    return TokenProvider([*first, UmaTokenSource(user, oidc, context)], margin=margin, oidc=oidc)
