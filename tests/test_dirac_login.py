"""`dirac login` from a flow: the OAuth device flow against the real DiracX server,
with our Check-in peer as its identity provider, and what the tokens it yields do
afterwards (a 401 → refresh → continue; a refresh token on a block).

Each test logs in afresh: DiracX rotates refresh tokens, and reusing an old one
revokes every refresh token of the user.
"""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import time

import httpx
import pytest
from pydantic import SecretStr

from prefect_egi.tasks import DiracJob, DiracLoginFailed, JobState, WatchPolicy, dirac_login, watch
from prefect_egi.tasks.dirac.login import DeviceCode, device_login
from prefect_egi.tasks.dirac.tasks import submit


def approve_in_a_browser(code: DeviceCode, delay: float = 0.5) -> threading.Thread:
    """What the user does: open the link; Check-in (our peer) approves the logged-in user."""
    outcome: dict = {}

    def visit() -> None:
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            page = browser.get(code.verification_uri_complete)
        outcome["hops"] = [str(r.url) for r in page.history]
        outcome["status"] = page.status_code

    browser = threading.Timer(delay, visit)
    browser.outcome = outcome  # type: ignore[attr-defined]
    browser.start()
    return browser


def logged_in_block(diracx, tmp_path, **login):
    block = diracx.block(credentials_path=str(tmp_path / "credentials.json"))
    browsers: list = []
    path = asyncio.run(device_login(block.client(), poll_seconds=0.5, on_code=lambda c: browsers.append(approve_in_a_browser(c)),
                                    **login))
    browsers[0].join()
    return block, path, browsers[0].outcome


def test_device_login_end_to_end_through_check_in(diracx, checkin, tmp_path):
    block, path, browser = logged_in_block(diracx, tmp_path)

    # the browser went DiracX → Check-in's authorization endpoint → back to DiracX
    assert browser["status"] == 200
    assert any("/protocol/openid-connect/auth?" in hop for hop in browser["hops"])
    assert any("/api/auth/device/complete?" in hop for hop in browser["hops"])
    stats = checkin.stats()
    assert stats.get("grant authorization_code") == 1  # DiracX redeemed the code once (PKCE checked)

    # the credentials file is what `dirac login` writes, private, and it works
    assert path == tmp_path / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["access_token"] and saved["refresh_token"] and saved["expires_on"] > 0
    ids = asyncio.run(submit(block, [DiracJob(executable="/bin/echo", arguments="after login")]))
    assert len(ids) == 1

    async def whoami():
        async with block.client().session() as api:
            return await api.auth.userinfo()

    me = asyncio.run(whoami())
    assert me.preferred_username == "alice" and me.vo == "egi.test"


def test_nobody_approves_the_login_ends_at_the_deadline(diracx, tmp_path):
    block = diracx.block(credentials_path=str(tmp_path / "never.json"))
    shown: list[DeviceCode] = []
    with pytest.raises(DiracLoginFailed, match="not approved within 2 s; run the login again"):
        asyncio.run(device_login(block.client(), deadline_seconds=2, poll_seconds=0.5, on_code=shown.append))
    assert shown and shown[0].user_code and shown[0].user_code in shown[0].verification_uri_complete
    assert not (tmp_path / "never.json").exists()


def test_a_block_with_a_refresh_token_needs_no_login(diracx):
    block = diracx.block(credentials_path=None, refresh_token=SecretStr("x" * 20))
    with pytest.raises(ValueError, match="refresh_token: this DiracX block already has credentials"):
        asyncio.run(device_login(block.client()))


def test_a_rejected_token_is_refreshed_and_the_wait_continues(diracx, tmp_path):
    """401 → the adapter marks the token expired → diracx-client refreshes it → the wait goes on."""
    block, path, _ = logged_in_block(diracx, tmp_path)
    ids = asyncio.run(submit(block, [DiracJob(executable="/bin/true")]))
    asyncio.run(diracx.pilot.run(ids, start_after=0.0, duration=0.1))

    before = json.loads(path.read_text())
    rejected = dict(before, access_token=before["access_token"][:-8] + "AAAAAAAA")  # bad signature, not expired
    path.write_text(json.dumps(rejected))
    adapter = block.job_adapter()
    final = asyncio.run(watch(adapter, [str(i) for i in ids], WatchPolicy(first_interval=0.1)))

    assert final[str(ids[0])].state is JobState.SUCCEEDED
    after = json.loads(path.read_text())
    assert after["refresh_token"] != before["refresh_token"]  # DiracX rotated it on the refresh
    assert after["access_token"] not in (before["access_token"], rejected["access_token"])
    assert adapter.searches == 2  # the rejected search, then the one that worked


def test_a_refresh_token_from_the_login_works_on_a_block(diracx, tmp_path):
    _, path, _ = logged_in_block(diracx, tmp_path)
    refresh = json.loads(path.read_text())["refresh_token"]
    block = diracx.block(credentials_path=None, refresh_token=SecretStr(refresh))
    ids = asyncio.run(submit(block, [DiracJob(executable="/bin/echo", arguments="refreshed")]))
    assert len(ids) == 1
    private = json.loads(block.client().credentials_file().read_text())
    assert private["access_token"] and private["refresh_token"] != refresh


@pytest.mark.prefect
def test_the_login_task_shows_the_link_as_an_artifact(diracx, tmp_path, prefect_db):
    from conftest import database_bytes
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    block = diracx.block(credentials_path=str(tmp_path / "credentials.json"))
    browsers: list = []

    def watch_for_the_link() -> None:
        """Play the user: read the link from the Prefect API (the UI's artifact), then approve."""
        async def link() -> str | None:
            async with get_client() as client:
                found = await client.read_artifacts(artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["diracx-login"])))
            return found[0].data if found else None

        deadline = time.monotonic() + 60  # as long as the login waits (each look is slow on a busy machine)
        while time.monotonic() < deadline:
            url = asyncio.run(link())
            if url:
                browsers.append(url)
                with httpx.Client(follow_redirects=True, timeout=30) as browser:
                    browser.get(url.strip("()").split("](")[-1] if url.startswith("[") else url)
                return
            threading.Event().wait(0.2)

    @flow
    async def login_flow() -> str:
        return await dirac_login(block, deadline_seconds=60)

    user = threading.Thread(target=watch_for_the_link)
    user.start()
    path = asyncio.run(login_flow())
    user.join()
    assert path == str(tmp_path / "credentials.json")
    assert browsers and "user_code=" in browsers[0]
    saved = json.loads((tmp_path / "credentials.json").read_text())
    dump = database_bytes(prefect_db)
    for secret in (saved["access_token"], saved["refresh_token"]):
        assert secret.encode() not in dump


def test_egi_flows_dirac_login_prints_the_link_and_saves_credentials(diracx, tmp_path):
    """The command a researcher types: read the link it prints, approve, get the file."""
    import os
    import subprocess
    import sys

    target = tmp_path / "cli-credentials.json"
    command = [sys.executable, "-m", "prefect_egi.flows.cli", "dirac", "login", "--url", diracx.url, "--vo", diracx.vo,
               "--credentials-path", str(target), "--deadline", "60"]
    env = dict(os.environ, PYTHONPATH=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as cli:
        first = cli.stdout.readline()
        assert first.startswith("Open http://127.0.0.1"), first + cli.stderr.read()
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            assert browser.get(first.split()[1]).status_code == 200
        out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert f"credentials saved to {target}" in out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text())["refresh_token"] not in out + err


def test_egi_flows_dirac_login_needs_a_server_and_a_vo():
    from typer.testing import CliRunner

    from prefect_egi.flows.cli import app

    result = CliRunner().invoke(app, ["dirac", "login", "--vo", "biomed"])
    assert result.exit_code == 2 and "Give --block NAME, or --url and --vo." in result.output
