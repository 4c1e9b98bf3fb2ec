"""The token provider against the real Check-in peer: sources, order, refresh,
rotation, concurrency, token exchange and every failure path."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from prefect_egi.tasks import (
    CheckinCredentials,
    IssuerUnreachableError,
    MalformedTokenError,
    NoTokenError,
    OidcClient,
    TokenEndpointError,
    TokenExpiredError,
    TokenProvider,
    TokenVerificationError,
    parse_token,
)
from prefect_egi.tasks.checkin.sources import OidcAgentSource, RefreshTokenSource, TokenFile
from prefect_egi.tasks.http import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.1)


def credentials(checkin, tmp_path: Path, **fields) -> CheckinCredentials:
    """A block pointed at the peer, with token files in tmp_path (absent by default)."""
    fields.setdefault("token_files", [str(tmp_path / "egi.eu" / "access_token"), str(tmp_path / "oidc" / "access_token")])
    return CheckinCredentials(issuer=checkin.issuer, client_id=checkin.client_id, **fields)


def write_token(path: Path, value: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(mode)


def fast(block: CheckinCredentials) -> CheckinCredentials:
    """Shorten the provider's retry backoff (the policy itself is tested with real delays)."""
    for source in block.provider.sources:
        if isinstance(source, RefreshTokenSource):
            source.client.retry = FAST_RETRY
    return block


# -- order of the sources ----------------------------------------------------------------

def test_sources_are_tried_in_documented_order(checkin, tmp_path, monkeypatch):
    logins = {name: checkin.login()["access_token"] for name in ("explicit", "oidc", "fedcloud", "file1", "file2")}
    refresh = checkin.login()["refresh_token"]
    files = [tmp_path / "egi.eu" / "access_token", tmp_path / "oidc" / "access_token"]
    write_token(files[0], logins["file1"])
    write_token(files[1], logins["file2"])
    monkeypatch.setenv("OIDC_ACCESS_TOKEN", logins["oidc"])
    monkeypatch.setenv("FEDCLOUD_OIDC_ACCESS_TOKEN", logins["fedcloud"])

    def source_of(**fields) -> str:
        block = credentials(checkin, tmp_path, client_secret=SecretStr(checkin.client_secret),
                            refresh_token=SecretStr(refresh), **fields)
        return block.get_token().source

    assert source_of(access_token=SecretStr(logins["explicit"])) == "the explicit token"
    assert source_of() == "environment variable OIDC_ACCESS_TOKEN"
    monkeypatch.delenv("OIDC_ACCESS_TOKEN")
    assert source_of() == "environment variable FEDCLOUD_OIDC_ACCESS_TOKEN"
    assert source_of(use_environment=False) == f"token file {files[0]}"
    files[0].unlink()
    assert source_of(use_environment=False) == f"token file {files[1]}"
    assert checkin.refresh_grants() == 0
    assert source_of(use_environment=False, token_files=[]) == f"refresh token grant at {checkin.issuer}"
    assert checkin.refresh_grants() == 1


def test_a_stale_source_falls_through_to_the_next(checkin, tmp_path, monkeypatch):
    expired = checkin.login(access_token_lifetime=-60)["access_token"]
    fresh = checkin.login()["access_token"]
    monkeypatch.setenv("OIDC_ACCESS_TOKEN", expired)
    write_token(tmp_path / "egi.eu" / "access_token", fresh)
    token = credentials(checkin, tmp_path).get_token()
    assert token.value == fresh and token.source.startswith("token file")


# -- caching, refresh before expiry, rotation -----------------------------------------

def test_token_is_reused_until_the_margin_then_refreshed(checkin, tmp_path):
    checkin.configure(access_token_lifetime=6)  # the peer truncates iat to whole seconds: 5-6 s left
    block = credentials(checkin, tmp_path, client_secret=SecretStr(checkin.client_secret),
                        refresh_token=SecretStr(checkin.login()["refresh_token"]), margin_seconds=2)
    first = block.get_access_token()
    assert block.get_access_token() == first
    assert checkin.refresh_grants() == 1
    time.sleep(max(0.0, parse_token(first).seconds_left() - 2) + 0.3)  # now inside the first token's 2 s margin
    second = block.get_access_token()
    assert second != first
    assert checkin.refresh_grants() == 2
    assert parse_token(second).expires_at > parse_token(first).expires_at
    assert parse_token(second).seconds_left() > 2  # the new token is outside the margin


def test_rotated_token_file_is_reread(checkin, tmp_path):
    path = tmp_path / "egi.eu" / "access_token"
    first, second = checkin.login()["access_token"], checkin.login()["access_token"]
    write_token(path, first)
    block = credentials(checkin, tmp_path, use_environment=False)
    assert block.get_access_token() == first
    assert block.get_access_token() == first
    write_token(path, second)  # what the notebook extension does in place
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert block.get_access_token() == second


def test_unchanged_token_file_is_not_reread(checkin, tmp_path, monkeypatch):
    path = tmp_path / "egi.eu" / "access_token"
    write_token(path, checkin.login()["access_token"])
    source = TokenFile([path])
    reads = []
    original = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self) or original(self, *a, **k))
    token = source.fetch()
    assert source.fetch() is token and source.unchanged(token)
    assert len(reads) == 1


def test_world_readable_token_file_is_warned_about(checkin, tmp_path, caplog):
    path = tmp_path / "egi.eu" / "access_token"
    write_token(path, checkin.login()["access_token"], mode=0o644)
    with caplog.at_level(logging.WARNING, logger="prefect_egi.checkin"):
        credentials(checkin, tmp_path).get_token()
    assert f"Token file {path} is readable by other users (mode 644); run `chmod 600" in caplog.text


# -- concurrency: one refresh for many callers ----------------------------------------

def test_fifty_threads_trigger_exactly_one_token_request(checkin, tmp_path):
    block = credentials(checkin, tmp_path, client_secret=SecretStr(checkin.client_secret),
                        refresh_token=SecretStr(checkin.login()["refresh_token"]))
    checkin.fault(status=0, delay=0.5)  # a slow token endpoint makes the callers pile up
    barrier = threading.Barrier(50)
    results: list[str] = []

    def call() -> None:
        barrier.wait()
        results.append(block.get_access_token())

    threads = [threading.Thread(target=call) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 50 and len(set(results)) == 1
    assert checkin.token_requests() == 1


def test_fifty_asyncio_tasks_trigger_exactly_one_token_request(checkin, tmp_path):
    block = credentials(checkin, tmp_path, client_secret=SecretStr(checkin.client_secret),
                        refresh_token=SecretStr(checkin.login()["refresh_token"]))
    checkin.fault(status=0, delay=0.5)

    async def main() -> list[str]:
        return await asyncio.gather(*(block.aget_access_token() for _ in range(50)))

    results = asyncio.run(main())
    assert len(results) == 50 and len(set(results)) == 1
    assert checkin.token_requests() == 1


# -- RFC 8693 token exchange ---------------------------------------------------------------

def test_exchange_turns_an_access_token_into_a_working_refresh_token(checkin, tmp_path):
    login = checkin.login()
    client = OidcClient(checkin.issuer, checkin.client_id, SecretStr(checkin.client_secret), retry=FAST_RETRY)
    refresh = client.exchange_for_refresh_token(SecretStr(login["access_token"]))
    assert refresh.get_secret_value() not in (login["access_token"], login["refresh_token"])
    renewed = parse_token(client.refresh(refresh).access_token)
    assert renewed.claims.subject == parse_token(login["access_token"]).claims.subject
    assert checkin.stats()["grant urn:ietf:params:oauth:grant-type:token-exchange"] == 1


def test_keep_alive_outlives_the_mounted_token(checkin, tmp_path):
    path = tmp_path / "egi.eu" / "access_token"
    write_token(path, checkin.login(access_token_lifetime=5)["access_token"])
    block = credentials(checkin, tmp_path, client_secret=SecretStr(checkin.client_secret),
                        keep_alive=True, margin_seconds=1)
    mounted = block.get_access_token()
    assert checkin.stats()["grant urn:ietf:params:oauth:grant-type:token-exchange"] == 1
    # the mounted token is now inside the margin; nobody rewrote the file
    time.sleep(max(0.0, parse_token(mounted).seconds_left() - 1) + 0.2)
    renewed = block.get_token()
    assert renewed.value != mounted
    assert renewed.source == f"refresh token grant at {checkin.issuer}"
    assert checkin.refresh_grants() == 1


# -- failures --------------------------------------------------------------------------------

def test_no_source_lists_every_source_and_the_fixes(checkin, tmp_path):
    with pytest.raises(NoTokenError) as caught:
        credentials(checkin, tmp_path).get_token()
    message = str(caught.value)
    for expected in ("explicit token: none given", "OIDC_ACCESS_TOKEN", "FEDCLOUD_OIDC_ACCESS_TOKEN",
                     "token file", "no such file", "no refresh token configured", "oidc-agent",
                     "enable the EGI Notebooks token mount", "export OIDC_ACCESS_TOKEN",
                     "configure a refresh token", "no mytoken configured", "export MYTOKEN"):
        assert expected in message
    assert [a.source.split(" ")[0] for a in caught.value.attempts] == [
        "explicit", "environment", "token", "refresh", "mytoken", "oidc-agent"]


def test_expired_token_without_refresh_names_the_expiry(checkin, tmp_path, monkeypatch):
    expired = checkin.login(access_token_lifetime=-120)["access_token"]
    monkeypatch.setenv("OIDC_ACCESS_TOKEN", expired)
    with pytest.raises(TokenExpiredError) as caught:
        credentials(checkin, tmp_path).get_token()
    expiry = parse_token(expired).expires_at
    assert caught.value.expired_at == expiry
    assert f"expired at {expiry.isoformat(timespec='seconds')}" in str(caught.value)
    assert "configure a refresh token" in str(caught.value)
    assert expired not in str(caught.value)


def test_invalid_grant_is_named(checkin, tmp_path):
    block = fast(credentials(checkin, tmp_path, client_secret=SecretStr(checkin.client_secret),
                             refresh_token=SecretStr("revoked-or-made-up-refresh-token")))
    with pytest.raises(NoTokenError) as caught:
        block.get_token()
    assert "answered invalid_grant: Invalid refresh token" in str(caught.value)
    assert "get a new one" in str(caught.value)
    assert isinstance(caught.value.__cause__, TokenEndpointError)
    assert caught.value.__cause__.error == "invalid_grant"


def test_invalid_client_is_named(checkin):
    refresh = SecretStr(checkin.login()["refresh_token"])
    client = OidcClient(checkin.issuer, checkin.client_id, SecretStr("wrong-secret-value"), retry=FAST_RETRY)
    with pytest.raises(TokenEndpointError) as caught:
        client.refresh(refresh)
    assert caught.value.error == "invalid_client"
    assert "client_secret" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)


def test_public_client_sends_its_id_in_the_form(checkin):
    refresh = SecretStr(checkin.login(client_id="public-cli")["refresh_token"])
    token = OidcClient(checkin.issuer, "public-cli", retry=FAST_RETRY).refresh(refresh)
    assert parse_token(token.access_token).claims.username == "alice"


def test_transient_5xx_is_retried_with_backoff(checkin):
    refresh = SecretStr(checkin.login()["refresh_token"])
    client = OidcClient(checkin.issuer, checkin.client_id, SecretStr(checkin.client_secret),
                        retry=RetryPolicy(attempts=4, backoff=0.2))
    client.discovery()
    checkin.fault(status=503, count=2)
    started = time.monotonic()
    assert client.refresh(refresh).access_token is not None
    assert time.monotonic() - started >= 0.2 + 0.4  # backed off, not a busy loop
    assert checkin.token_requests() == 3


def test_persistent_5xx_ends_in_a_clear_error(checkin):
    refresh = SecretStr(checkin.login()["refresh_token"])
    client = OidcClient(checkin.issuer, checkin.client_id, SecretStr(checkin.client_secret), retry=FAST_RETRY)
    client.discovery()
    checkin.fault(status=502, count=10)
    with pytest.raises(IssuerUnreachableError, match=r"failed 3 times; last failure: HTTP 502 Bad Gateway"):
        client.refresh(refresh)
    assert checkin.token_requests() == 3


def test_timeouts_are_retried(checkin):
    refresh = SecretStr(checkin.login()["refresh_token"])
    client = OidcClient(checkin.issuer, checkin.client_id, SecretStr(checkin.client_secret),
                        timeout=2, retry=FAST_RETRY)
    client.discovery()
    checkin.fault(status=0, delay=6, count=1)
    assert client.refresh(refresh).access_token is not None
    # the delayed request timed out and was sent again (once more if a busy machine slowed the retry too)
    assert checkin.token_requests() >= 2


def test_garbage_variable_is_an_error_when_nothing_else_works(checkin, tmp_path, monkeypatch):
    monkeypatch.setenv("OIDC_ACCESS_TOKEN", "   ")
    with pytest.raises(MalformedTokenError, match="environment variable OIDC_ACCESS_TOKEN is empty"):
        credentials(checkin, tmp_path).get_token()


def test_garbage_variable_is_ignored_with_a_warning_when_a_file_works(checkin, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OIDC_ACCESS_TOKEN", "paste your token here")
    write_token(tmp_path / "egi.eu" / "access_token", checkin.login()["access_token"])
    with caplog.at_level(logging.WARNING, logger="prefect_egi.checkin"):
        token = credentials(checkin, tmp_path).get_token()
    assert token.source.startswith("token file")
    assert "Ignored a malformed token: environment variable OIDC_ACCESS_TOKEN does not contain" in caplog.text


def test_garbage_file_is_a_clear_error(checkin, tmp_path):
    write_token(tmp_path / "egi.eu" / "access_token", "<html>Session expired</html>")
    with pytest.raises(MalformedTokenError, match="does not contain an access token"):
        credentials(checkin, tmp_path).get_token()


# -- discovery, signatures, oidc-agent ----------------------------------------------------

def test_endpoints_come_from_discovery_and_the_issuer_must_match(checkin):
    client = OidcClient(checkin.issuer)
    assert client.endpoint("token_endpoint") == f"{checkin.issuer}/protocol/openid-connect/token"
    wrong = OidcClient(checkin.url + "/auth/realms/other", retry=FAST_RETRY)
    with pytest.raises(IssuerUnreachableError, match="HTTP 404"):
        wrong.discovery()


def test_signature_verification_is_available(checkin, tmp_path, monkeypatch):
    client = OidcClient(checkin.issuer)
    good = parse_token(checkin.login()["access_token"])
    client.verify_signature(good)
    header, payload, _ = good.value.split(".")
    forged = parse_token(f"{header}.{payload}.{'A' * 342}")
    with pytest.raises(TokenVerificationError, match="does not verify"):
        client.verify_signature(forged)
    monkeypatch.setenv("OIDC_ACCESS_TOKEN", forged.value)
    with pytest.raises(NoTokenError, match="does not verify"):
        credentials(checkin, tmp_path, verify_signature=True).get_token()
    assert credentials(checkin, tmp_path).get_token().value == forged.value  # off by default


def test_oidc_agent_is_skipped_with_a_clear_reason(monkeypatch):
    assert "no account configured" in _reason(OidcAgentSource(None))
    reason = _reason(OidcAgentSource("egi"))
    try:
        import liboidcagent  # noqa: F401
    except ImportError:
        assert "liboidcagent package is not installed" in reason
    else:
        assert "oidc-agent is not running (OIDC_SOCK is not set)" in reason


def _reason(source) -> str:
    from prefect_egi.tasks.checkin.sources import SourceUnavailable

    with pytest.raises(SourceUnavailable) as caught:
        source.fetch()
    return caught.value.reason + " " + caught.value.hint


def test_provider_is_usable_without_prefect_blocks(checkin):
    """Layer 1 stands alone: a provider built from sources, no block."""
    from prefect_egi.tasks.checkin.sources import ExplicitToken

    raw = checkin.login()["access_token"]
    provider = TokenProvider([ExplicitToken(raw)], margin=30)
    assert provider.get_access_token() == raw
    assert asyncio.run(provider.aget_access_token()) == raw


def test_blocks_copy_and_pickle_without_their_tokens(checkin, tmp_path):
    """Prefect copies task inputs and pickles results: a used block must survive both,
    and a pickle must not carry the access token it minted."""
    import copy
    import pickle

    import cloudpickle

    block = credentials(checkin, tmp_path, client_secret=SecretStr(checkin.client_secret),
                        refresh_token=SecretStr(checkin.login()["refresh_token"]))
    minted = block.get_access_token()
    assert minted.encode() not in cloudpickle.dumps(block)
    assert minted.encode() not in pickle.dumps(block)
    for clone in (copy.deepcopy(block), block.model_copy(deep=True), pickle.loads(pickle.dumps(block))):
        assert clone.provider is not block.provider
        assert clone.get_token().claims.username == "alice"
