"""Source 5 against a real oidc-agent (Debian's oidc-agent-cli) whose account was
generated with a refresh token of the Check-in peer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest

from prefect_egi.tasks import CheckinCredentials, NoTokenError, TokenProvider
from prefect_egi.tasks.checkin.sources import ExplicitToken, OidcAgentSource

REQUIRED = os.environ.get("EGI_REQUIRE_OIDC_AGENT") == "1"  # .ci/run installs it and sets this


@pytest.fixture
def oidc_agent(checkin, tmp_path, monkeypatch):
    if shutil.which("oidc-agent") is None or shutil.which("oidc-gen") is None:
        if REQUIRED:
            pytest.fail("oidc-agent is required here (EGI_REQUIRE_OIDC_AGENT=1) but not installed")
        pytest.skip("oidc-agent not installed (apt-get install oidc-agent-cli)")
    pytest.importorskip("liboidcagent")
    env = {**os.environ, "HOME": str(tmp_path), "OIDC_ENCRYPTION_PW": "test-password"}
    started = subprocess.run(["oidc-agent", "--no-autoload", "--json"], env=env, capture_output=True,
                             text=True, timeout=30, check=True)
    agent = json.loads(started.stdout)
    env["OIDC_SOCK"] = agent["socket"]
    try:
        subprocess.run(
            ["oidc-gen", "egi-test", f"--issuer={checkin.issuer}", f"--client-id={checkin.client_id}",
             f"--client-secret={checkin.client_secret}", "--rt-env=PEER_REFRESH_TOKEN",
             "--scope=openid profile eduperson_entitlement offline_access",
             "--pw-env", "--prompt=none", "--confirm-default"],
            env={**env, "PEER_REFRESH_TOKEN": checkin.login()["refresh_token"]},
            capture_output=True, text=True, timeout=60, check=True,
        )
        monkeypatch.setenv("OIDC_SOCK", agent["socket"])
        yield "egi-test"
    finally:
        os.kill(int(agent["dpid"]), signal.SIGTERM)


def test_token_comes_from_a_running_oidc_agent(oidc_agent, checkin, tmp_path):
    token = OidcAgentSource(oidc_agent).fetch()
    assert token.claims.username == "alice" and token.source == "oidc-agent account egi-test"
    assert token.claims.issuer == checkin.issuer
    assert checkin.refresh_grants() >= 1  # the agent redeemed its refresh token at the peer
    egi = CheckinCredentials(issuer=checkin.issuer, oidc_agent_account=oidc_agent,
                             use_environment=False, token_files=[])
    assert egi.get_token().source == "oidc-agent account egi-test"


def test_unknown_account_is_a_clear_reason(oidc_agent):
    from prefect_egi.tasks.checkin.sources import SourceUnavailable

    with pytest.raises(SourceUnavailable, match="oidc-agent refused"):
        OidcAgentSource("no-such-account").fetch()
    provider = TokenProvider([ExplicitToken(None), OidcAgentSource("no-such-account")])
    with pytest.raises(NoTokenError, match="oidc-agent refused"):
        provider.get_token()
