"""mytoken as a Check-in token source, against the Check-in peer's mytoken server.

The peer answers as oidc-mytoken/server's API v0 does; the names it and our client use
are checked against the API's own type definitions (tests/data/checkin/mytoken-api-v0,
from oidc-mytoken/api). fedcloudclient's usage documentation
(tests/data/checkin/fedcloudclient-usage-mytoken.rst) names the variable and the
capability users are told about.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from prefect_egi.tasks import CheckinCredentials, NoTokenError
from prefect_egi.tasks.checkin.mytoken import MYTOKEN_ENVIRONMENT, MytokenClient

API = Path(__file__).parent / "data" / "checkin" / "mytoken-api-v0"
ACCESS_ENDPOINT = "POST /mytoken/api/v0/token/access"


def json_names(go_file: str, struct: str) -> set[str]:
    """The JSON names of a Go struct's fields, from their `json:"…"` tags (inline ones skipped)."""
    source = (API / go_file).read_text()
    body = re.search(rf"type {struct} struct \{{(.*?)\n\}}", source, re.S)
    assert body, f"{struct} not in {go_file}"
    return {name for name in re.findall(r'json:"([^",]*)', body.group(1)) if name}


def block(checkin, mytoken: str | None = None, **fields) -> CheckinCredentials:
    """Credentials whose only source is a mytoken (no environment, no files, no refresh token)."""
    fields.setdefault("use_environment", False)
    return CheckinCredentials(issuer=checkin.issuer, mytoken=SecretStr(mytoken) if mytoken else None,
                              token_files=[], **fields)


def redemptions(checkin) -> int:
    return checkin.stats().get(ACCESS_ENDPOINT, 0)


def test_the_peer_and_the_client_speak_the_names_of_the_mytoken_api(checkin, monkeypatch):
    """Request, answer, rotation and discovery use exactly the JSON names oidc-mytoken/api v0 declares."""
    sent: list[dict] = []
    post = httpx.Client.post

    def recording(self, url, *args, **kwargs):
        sent.append(kwargs.get("json") or {})
        return post(self, url, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "post", recording)
    rotating = checkin.mytoken(rotation={"on_AT": True})
    block(checkin, rotating).get_token()
    assert set(sent[-1]) <= json_names("accessTokenRequest.go", "AccessTokenRequest")
    assert sent[-1]["grant_type"] == "mytoken" and sent[-1]["oidc_issuer"] == checkin.issuer

    answer = httpx.post(f"{checkin.mytoken_server}/api/v0/token/access",
                        json={"grant_type": "mytoken", "mytoken": checkin.mytoken(rotation={"on_AT": True})}).json()
    assert set(answer) <= json_names("accessTokenResponse.go", "AccessTokenResponse")
    assert set(answer["token_update"]) <= json_names("mytokenResponse.go", "MytokenResponse")
    assert set(answer["token_update"]["rotation"]) <= json_names("rotation.go", "Rotation")
    configuration = httpx.get(f"{checkin.mytoken_server}/.well-known/mytoken-configuration").json()
    declared = json_names("mytokenConfiguration.go", "MytokenConfiguration") | {"token_endpoint"}  # the server's own
    assert set(configuration) <= declared and configuration["issuer"] == checkin.mytoken_server
    grant_types = re.findall(r'GrantTypeMytoken\s+= "(\w+)"', (API / "grantTypes.go").read_text())
    assert configuration["access_token_endpoint_grant_types_supported"] == grant_types == ["mytoken"]


def test_every_error_code_we_explain_is_one_the_server_sends():
    from prefect_egi.tasks.checkin.mytoken import _ERROR_HINTS

    declared = set(re.findall(r'ErrorStr\w+\s+= "(\w+)"', (API / "apiError.go").read_text()))
    assert set(_ERROR_HINTS) <= declared


def test_a_mytoken_on_the_block_is_redeemed_for_an_access_token(checkin):
    mytoken = checkin.mytoken()
    credentials = block(checkin, mytoken)
    token = credentials.get_token()
    assert token.source == f"mytoken at {checkin.mytoken_server}"
    assert token.claims.username == "alice" and token.claims.issuer == checkin.issuer
    assert credentials.identity().vos == ("eosc-synergy.eu", "vo.access.egi.eu", "vo.notebooks.egi.eu")
    assert credentials.get_access_token() == token.value and redemptions(checkin) == 1  # cached until its margin


@pytest.mark.parametrize("variable", MYTOKEN_ENVIRONMENT)
def test_a_mytoken_in_the_environment(checkin, monkeypatch, variable):
    """MYTOKEN, then fedcloudclient's FEDCLOUD_MYTOKEN (its usage documentation, captured)."""
    documented = (Path(__file__).parent / "data" / "checkin" / "fedcloudclient-usage-mytoken.rst").read_text()
    assert "FEDCLOUD_MYTOKEN" in documented and "FEDCLOUD_MYTOKEN" in MYTOKEN_ENVIRONMENT
    monkeypatch.setenv(variable, checkin.mytoken(user="carol"))
    token = block(checkin, use_environment=True).get_token()
    assert token.source == f"mytoken at {checkin.mytoken_server}" and token.claims.username == "carol"


def test_the_sources_keep_their_order_with_mytoken_after_the_refresh_token(checkin):
    credentials = checkin.credentials(mytoken=SecretStr(checkin.mytoken()))
    assert credentials.get_token().source == f"refresh token grant at {checkin.issuer}"
    assert redemptions(checkin) == 0
    names = [source.name for source in credentials.provider.sources]
    assert names.index("mytoken") == names.index(f"refresh token at {checkin.issuer}") + 1


def test_a_rotated_mytoken_replaces_the_old_one_which_the_server_revoked(checkin, caplog):
    """With rotation on access tokens, each redemption hands back a successor; using the old one
    again is refused, and with auto_revoke it revokes the whole family (oidc-mytoken/server)."""
    first = checkin.mytoken(rotation={"on_AT": True, "auto_revoke": True})
    credentials = block(checkin, first, margin_seconds=0)
    credentials.get_token()
    successor = credentials.mytoken.get_secret_value()
    assert successor != first and parse_token_type(successor) == "mytoken"
    credentials.provider.invalidate()
    assert credentials.get_token().source == f"mytoken at {checkin.mytoken_server}"  # the successor works
    assert credentials.mytoken.get_secret_value() not in (first, successor)
    assert "it was not loaded by name" in caplog.text
    for secret in (first, successor):
        assert secret not in caplog.text

    with pytest.raises(NoTokenError, match="invalid_token.*replaced by rotation"):
        block(checkin, first).get_token()  # the old one: refused, and the family revoked with it
    credentials.provider.invalidate()
    with pytest.raises(NoTokenError, match="invalid_token"):
        credentials.get_token()


def parse_token_type(mytoken: str) -> str | None:
    from prefect_egi.tasks.checkin.mytoken import mytoken_claims

    return (mytoken_claims(SecretStr(mytoken)) or {}).get("token_type")


@pytest.mark.prefect
def test_a_saved_block_keeps_the_rotated_mytoken_for_the_next_run(prefect_db, checkin, caplog):
    """The next run loads the block again: it must find the successor, not the revoked mytoken."""
    name = f"mytoken-{uuid.uuid4().hex[:8]}"
    first = checkin.mytoken(rotation={"on_AT": True, "auto_revoke": True})
    block(checkin, first).save(name, overwrite=True)
    caplog.set_level(logging.INFO, logger="prefect_egi")
    assert CheckinCredentials.load(name).get_token().claims.username == "alice"
    saved = CheckinCredentials.load(name).mytoken.get_secret_value()
    assert saved != first and f"saved its successor on the block '{name}'" in caplog.text
    assert CheckinCredentials.load(name).get_token().claims.username == "alice"  # a second run: the successor
    assert first not in caplog.text and saved not in caplog.text


def test_a_rotated_mytoken_from_the_environment_warns_that_the_variable_is_now_stale(checkin, monkeypatch, caplog):
    mytoken = checkin.mytoken(rotation={"on_AT": True})
    monkeypatch.setenv("MYTOKEN", mytoken)
    credentials = block(checkin, use_environment=True, margin_seconds=0)
    credentials.get_token()
    assert "The mytoken from environment variable MYTOKEN rotated" in caplog.text and mytoken not in caplog.text
    credentials.provider.invalidate()
    assert credentials.get_token().claims.username == "alice"  # the process goes on with the successor
    assert credentials.mytoken is None  # never written onto the block


def test_a_mytoken_goes_only_to_the_server_it_names(checkin):
    """A mytoken JWT names its server (`iss`): a block configured with another server never sends it there."""
    elsewhere = "https://mytoken.example.org"
    with pytest.raises(NoTokenError) as refused:
        block(checkin, checkin.mytoken(), mytoken_server=elsewhere).get_token()
    assert f"was issued by {checkin.mytoken_server}, not by the configured mytoken server {elsewhere}" in str(
        refused.value)
    assert redemptions(checkin) == 0
    with pytest.raises(ValueError, match="mytoken_server must be an https:// URL"):
        CheckinCredentials(mytoken_server="http://mytoken.example.org")


def test_the_servers_refusals_say_what_to_do(checkin):
    no_access_tokens = checkin.mytoken(capabilities=["tokeninfo"])
    with pytest.raises(NoTokenError, match="insufficient_capabilities.*'AT' capability"):
        block(checkin, no_access_tokens).get_token()
    documented = (Path(__file__).parent / "data" / "checkin" / "fedcloudclient-usage-mytoken.rst").read_text()
    assert "Allows obtaining OpenID Connect Access Tokens" in documented  # the option users are told to pick

    other_provider = CheckinCredentials(issuer=checkin.url + "/auth/realms/other", use_environment=False,
                                        token_files=[], mytoken=SecretStr(checkin.mytoken()))
    with pytest.raises(NoTokenError, match="token not for specified issuer.*another OpenID provider"):
        other_provider.get_token()

    expired = checkin.mytoken(expires_in=-10)
    with pytest.raises(NoTokenError, match="mytoken expired at"):
        block(checkin, expired).get_token()
    assert redemptions(checkin) == 2  # the expired one was not even sent


def test_a_refused_redemption_is_retried_but_an_unknown_outcome_is_not(checkin):
    """A 503 proves the front refused the request unread: sent again. A 500 may come after the server
    rotated the mytoken: not sent again (the old mytoken may be spent), reported as unreachable."""
    from prefect_egi.tasks.checkin.errors import IssuerUnreachableError
    from prefect_egi.tasks.checkin.sources import MytokenSource
    from prefect_egi.tasks.http import RetryPolicy

    fast = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.1)
    client = MytokenClient(checkin.mytoken_server, retry=fast)
    checkin.fault("/mytoken/api/v0/token/access", status=503, count=1)
    assert client.redeem(SecretStr(checkin.mytoken())).access_token.get_secret_value()
    assert redemptions(checkin) == 2

    checkin.fault("/mytoken/api/v0/token/access", status=500, count=1)
    source = MytokenSource(SecretStr(checkin.mytoken()), read_environment=False)
    source._clients[checkin.mytoken_server] = MytokenClient(checkin.mytoken_server, retry=fast)
    with pytest.raises(IssuerUnreachableError, match="answered HTTP 500; not sent again"):
        source.fetch()
    assert redemptions(checkin) == 3
