"""The VRE's UMA token through the Check-in provider's machinery: the user's refresh token at
the (Keycloak-like) Check-in peer, the UMA grant, one renewal for many callers, redaction."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prefect_egi.tasks.ccp.identity import check_context, uma_audience, uma_provider
from prefect_egi.tasks.checkin.errors import NoTokenError
from prefect_egi.tasks.checkin.oidc import UMA_GRANT, OidcClient
from prefect_egi.tasks.checkin.provider import TokenProvider
from prefect_egi.tasks.checkin.sources import RefreshTokenSource
from prefect_egi.tasks.http import RetryPolicy
from prefect_egi.tasks.redaction import contains_secret
from pydantic import SecretStr
from test_ccp_peer import claims_of


def providers(ccp, user: str = "alice", context: str | None = None):
    checkin = ccp.checkin
    oidc = OidcClient(checkin.issuer, client_id=checkin.client_id, client_secret=SecretStr(checkin.client_secret),
                      retry=RetryPolicy(attempts=3, backoff=0.05))
    refresh = SecretStr(checkin.login(user)["refresh_token"])
    person = TokenProvider([RefreshTokenSource(oidc, refresh)], oidc=oidc)
    return person, uma_provider(person, oidc, context or ccp.context)


def uma_grants(checkin) -> int:
    return checkin.stats().get(f"grant {UMA_GRANT}", 0)


def test_the_uma_token_is_the_bearer_ccp_accepts(ccp):
    _, provider = providers(ccp)
    token = provider.get_token()
    assert token.claims.audience == (uma_audience(ccp.context),)
    assert "authorization" in claims_of(token.value)
    assert contains_secret(token.value)

    async def listed():
        from prefect_egi.tasks.ccp.client import CCPClient

        async with CCPClient(ccp.url, provider.aget_access_token, context=ccp.context) as client:
            return await client.processes()

    assert {p.id for p in asyncio.run(listed())} >= {"ccp-write-files"}


def test_many_concurrent_callers_share_one_uma_grant(ccp):
    _, provider = providers(ccp)
    before = uma_grants(ccp.checkin)

    async def many():
        return await asyncio.gather(*(provider.aget_access_token() for _ in range(20)))

    tokens = set(asyncio.run(many()))
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(provider.get_access_token())) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(tokens | set(seen)) == 1
    assert uma_grants(ccp.checkin) - before == 1


def test_the_uma_token_is_renewed_before_it_expires(ccp):
    ccp.checkin.configure(access_token_lifetime=6)  # renewed within half its life (3 s)
    _, provider = providers(ccp)
    first = provider.get_token()
    deadline = time.monotonic() + 60
    while first.is_fresh(provider.margin_for(first)) and time.monotonic() < deadline:
        time.sleep(0.2)
    second = provider.get_token()
    assert second.value != first.value and second.claims.audience == (uma_audience(ccp.context),)


def test_after_a_401_invalidate_brings_a_new_uma_token(ccp):
    _, provider = providers(ccp)
    first = provider.get_access_token()
    provider.invalidate()
    assert provider.get_access_token() != first


def test_a_user_outside_the_vre_is_told_so(ccp):
    _, provider = providers(ccp, user="bob")
    with pytest.raises(NoTokenError) as refused:
        provider.get_token()
    assert "not a member of this VRE" in str(refused.value) and "not_authorized" in str(refused.value)


@pytest.mark.parametrize("context", ["", "Blue-Cloud2026Lab", "/only-one"])
def test_a_context_that_is_not_one_is_refused_before_anything_is_sent(context):
    with pytest.raises(ValueError, match="VRE context must look like"):
        check_context(context)
