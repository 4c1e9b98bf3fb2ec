"""The security sweep, run after every other test of the session (conftest orders it
last): with the token values every peer minted or holds, nothing a run leaves behind —
the Prefect databases (runs, parameters, logs, artifacts, events, blocks), result
storage, the session's log and the real stacks' process logs — contains any of them."""

from __future__ import annotations

from conftest import SESSION_LOG, sweep_roots
from leak_sweep import credential_file_tokens, minted_by_peer, sweep


def known_secrets(checkin_process, dataminer_process, diracx_process, openstack_process) -> list[str]:
    secrets = minted_by_peer(checkin_process.url) + minted_by_peer(openstack_process.url)
    secrets.append(dataminer_process.info["token"])
    secrets += credential_file_tokens(vo["user"] for vo in diracx_process.info["vos"].values())
    return secrets


def test_no_token_of_the_session_is_stored_anywhere(prefect_db, checkin_process, dataminer_process,
                                                   diracx_process, openstack_process):
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    secrets = known_secrets(checkin_process, dataminer_process, diracx_process, openstack_process)
    assert len(secrets) >= 4 and SESSION_LOG.exists()
    leaks = sweep(secrets, sweep_roots(prefect_db))
    assert not leaks, "\n".join(leaks)


def test_the_sweep_finds_a_planted_token(checkin_process, tmp_path):
    """The sweep is not blind: a minted token written where a run could store it is found."""
    token = checkin_process.control("login")["refresh_token"]
    assert token in minted_by_peer(checkin_process.url)
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "result.json").write_text(f'{{"value": "{token}"}}')
    assert len(sweep([token], [tmp_path])) == 1
