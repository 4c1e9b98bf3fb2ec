"""`egi-flows token check|vos` as a user runs it: the installed console script,
in a subprocess, against the Check-in peer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EGI_FLOWS = Path(sys.executable).with_name("egi-flows")


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OIDC_", "FEDCLOUD_", "MYTOKEN"))}
    return subprocess.run(
        [str(EGI_FLOWS), *args], input=stdin, capture_output=True, text=True, timeout=60,
        env={**clean, **(env or {})},
    )


def no_files(tmp_path: Path) -> list[str]:
    return ["--token-file", str(tmp_path / "absent")]


def test_help_teaches_the_sources():
    result = run("token", "--help")
    assert result.returncode == 0
    for expected in ("OIDC_ACCESS_TOKEN", "FEDCLOUD_OIDC_ACCESS_TOKEN", "/var/run/secrets/egi.eu/access_token",
                     "OIDC_REFRESH_TOKEN", "MYTOKEN", "FEDCLOUD_MYTOKEN", "--mytoken", "oidc-agent", "--block"):
        assert expected in result.stdout
    check_help = run("token", "check", "--help").stdout
    assert "Exit codes: 0 valid, 1 expired or no token found, 2 malformed" in check_help


def test_check_a_valid_token_from_the_environment(checkin, tmp_path):
    token = checkin.login()["access_token"]
    result = run("token", "check", *no_files(tmp_path), env={"OIDC_ACCESS_TOKEN": token})
    assert result.returncode == 0, result.stderr
    assert "Source:   environment variable OIDC_ACCESS_TOKEN" in result.stdout
    assert "Subject:  0f4b2a0c8d3e4e1b9f5a6c7d8e9f0a1b@egi.eu" in result.stdout
    assert f"Issuer:   {checkin.issuer}" in result.stdout
    assert "VOs:      eosc-synergy.eu, vo.access.egi.eu, vo.notebooks.egi.eu" in result.stdout
    assert "Token is valid until " in result.stdout and "(expires in 3" in result.stdout
    assert token not in result.stdout + result.stderr


def test_check_a_pasted_token_on_stdin_as_json(checkin, tmp_path):
    token = checkin.login()["access_token"]
    result = run("token", "check", "--token", "-", "--json", *no_files(tmp_path), stdin=token + "\n")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == "the explicit token"
    assert report["username"] == "alice" and 3500 < report["expires_in_seconds"] <= 3600


def test_expired_token_exits_1_with_its_expiry(checkin, tmp_path):
    token = checkin.login(access_token_lifetime=-30)["access_token"]
    result = run("token", "check", "--token", token, *no_files(tmp_path))
    assert result.returncode == 1
    assert "expired at" in result.stderr and token not in result.stderr


def test_no_token_exits_1_and_says_how_to_fix_it(tmp_path):
    result = run("token", "check", *no_files(tmp_path))
    assert result.returncode == 1
    assert "No EGI Check-in access token could be obtained" in result.stderr
    assert "export OIDC_ACCESS_TOKEN" in result.stderr


@pytest.mark.parametrize("garbage", ["not a token", "   ", "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln"])
def test_malformed_token_exits_2(tmp_path, garbage):
    result = run("token", "check", *no_files(tmp_path), env={"OIDC_ACCESS_TOKEN": garbage})
    assert result.returncode == 2
    assert "Malformed token" in result.stderr and "Traceback" not in result.stderr


def test_token_file_is_read(checkin, tmp_path):
    path = tmp_path / "access_token"
    path.write_text(checkin.login()["access_token"])
    path.chmod(0o600)
    result = run("token", "check", "--token-file", str(path))
    assert result.returncode == 0 and f"Source:   token file {path}" in result.stdout


def test_refresh_token_from_the_environment(checkin, tmp_path):
    env = {"OIDC_REFRESH_TOKEN": checkin.login()["refresh_token"], "OIDC_CLIENT_ID": checkin.client_id,
           "OIDC_CLIENT_SECRET": checkin.client_secret, "OIDC_ISSUER": checkin.issuer}
    result = run("token", "check", *no_files(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert f"Source:   refresh token grant at {checkin.issuer}" in result.stdout
    assert checkin.refresh_grants() == 1


def test_vos_come_from_userinfo_of_the_configured_issuer(checkin, tmp_path):
    token = checkin.login()["access_token"]
    result = run("token", "vos", "--issuer", checkin.issuer, *no_files(tmp_path), env={"OIDC_ACCESS_TOKEN": token})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["eosc-synergy.eu", "vo.access.egi.eu", "vo.notebooks.egi.eu"]
    assert checkin.stats()["GET /auth/realms/egi/protocol/openid-connect/userinfo"] == 1


def test_vos_never_send_the_token_to_an_issuer_it_was_not_issued_by(checkin, tmp_path):
    token = checkin.login()["access_token"]
    result = run("token", "vos", "--issuer", checkin.url + "/auth/realms/other", *no_files(tmp_path),
                 env={"OIDC_ACCESS_TOKEN": token})
    assert result.returncode == 0
    assert result.stdout.split() == ["eosc-synergy.eu", "vo.access.egi.eu", "vo.notebooks.egi.eu"]
    assert "GET /auth/realms/egi/protocol/openid-connect/userinfo" not in checkin.stats()


def test_check_with_a_saved_block(prefect_db, checkin, tmp_path):
    from prefect.settings import PREFECT_API_URL
    from pydantic import SecretStr

    from prefect_egi.tasks import CheckinCredentials

    CheckinCredentials(issuer=checkin.issuer, client_id=checkin.client_id,
                       client_secret=SecretStr(checkin.client_secret),
                       refresh_token=SecretStr(checkin.login()["refresh_token"]),
                       token_files=[]).save("cli-block", overwrite=True)
    result = run("token", "check", "--block", "cli-block", env={"PREFECT_API_URL": PREFECT_API_URL.value()})
    assert result.returncode == 0, result.stderr
    assert f"Source:   refresh token grant at {checkin.issuer}" in result.stdout


def test_check_and_vos_read_the_entitlements_claim(checkin, tmp_path):
    """Check-in's Keycloak releases a user's groups as `entitlements` (EGI-Federation/documentation#799,
    tests/data/checkin/egi-docs-checkin-groups-claims.md); `token check` used to show `"vos": []`."""
    from prefect_egi.tasks import parse_token

    checkin.configure(entitlement_claims=["entitlements"])  # the `checkin` fixture restores both after
    token = checkin.login()["access_token"]
    assert "eduperson_entitlement" not in json.loads(base64_payload(token))
    result = run("token", "check", "--json", *no_files(tmp_path), env={"OIDC_ACCESS_TOKEN": token})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["vos"] == ["eosc-synergy.eu", "vo.access.egi.eu", "vo.notebooks.egi.eu"]
    listed = run("token", "vos", "--issuer", checkin.issuer, *no_files(tmp_path), env={"OIDC_ACCESS_TOKEN": token})
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["eosc-synergy.eu", "vo.access.egi.eu", "vo.notebooks.egi.eu"]
    assert parse_token(token).claims.vos  # the same rule in the library


def base64_payload(token: str) -> str:
    import base64

    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()


def test_check_a_mytoken_from_the_environment(checkin, tmp_path):
    """fedcloudclient reads FEDCLOUD_MYTOKEN (tests/data/checkin/fedcloudclient-usage-mytoken.rst);
    MYTOKEN is read first. The mytoken is redeemed at the server it names."""
    for variable in ("MYTOKEN", "FEDCLOUD_MYTOKEN"):
        mytoken = checkin.mytoken()
        result = run("token", "check", *no_files(tmp_path), env={variable: mytoken, "OIDC_ISSUER": checkin.issuer})
        assert result.returncode == 0, result.stderr
        assert f"Source:   mytoken at {checkin.mytoken_server}" in result.stdout
        assert "VOs:      eosc-synergy.eu, vo.access.egi.eu, vo.notebooks.egi.eu" in result.stdout
        assert mytoken not in result.stdout + result.stderr
    pasted = run("token", "check", "--json", "--mytoken", "-", "--issuer", checkin.issuer, *no_files(tmp_path),
                 stdin=checkin.mytoken() + "\n")
    assert pasted.returncode == 0, pasted.stderr
    assert json.loads(pasted.stdout)["source"] == f"mytoken at {checkin.mytoken_server}"
