"""The Check-in layer inside real Prefect runs: the block, the task, and the leak check
(a flow that logs, prints and raises with the token leaves no trace of it)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from conftest import database_bytes
from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from pydantic import SecretStr

from prefect_egi.tasks import CheckinCredentials, aget_checkin_token, get_checkin_token, redact_errors

pytestmark = pytest.mark.prefect


def save_block(checkin, **fields) -> str:
    name = f"checkin-{uuid.uuid4().hex[:8]}"
    CheckinCredentials(
        issuer=checkin.issuer,
        client_id=checkin.client_id,
        client_secret=SecretStr(checkin.client_secret),
        refresh_token=SecretStr(checkin.login()["refresh_token"]),
        use_environment=False,
        token_files=[],
        **fields,
    ).save(name, overwrite=True)
    return name


def test_block_is_registered_through_the_entry_point(prefect_db):
    from prefect.blocks.core import Block
    from prefect.plugins import load_prefect_collections

    assert "prefect_egi" in load_prefect_collections()
    assert Block.get_block_class_from_key("egi-checkin-credentials") is CheckinCredentials


def test_block_round_trip_keeps_secrets_secret(prefect_db, checkin):
    name = save_block(checkin, margin_seconds=90)
    loaded = CheckinCredentials.load(name)
    assert loaded.margin_seconds == 90 and isinstance(loaded.refresh_token, SecretStr)
    assert "**********" in repr(loaded.refresh_token)
    token = loaded.get_token()
    assert token.claims.username == "alice"
    # Block documents are encrypted at rest: the refresh token is not in the database file.
    assert loaded.refresh_token.get_secret_value().encode() not in database_bytes(prefect_db)


def test_task_returns_a_secret_that_is_never_persisted(prefect_db, checkin):
    name = save_block(checkin)

    @flow
    def use_token(block_name: str) -> bool:
        secret = get_checkin_token(CheckinCredentials.load(block_name))
        assert isinstance(secret, SecretStr)
        return secret.get_secret_value().startswith("eyJ")

    assert use_token(name) is True
    assert get_checkin_token.persist_result is False and aget_checkin_token.persist_result is False


def test_async_flow_gets_the_token_without_blocking(prefect_db, checkin):
    name = save_block(checkin)

    @flow
    async def async_use(block_name: str) -> str:
        credentials = await CheckinCredentials.aload(block_name)
        secret = await aget_checkin_token(credentials)
        return secret.get_secret_value()[:3]

    assert asyncio.run(async_use(name)) == "eyJ"


@task(log_prints=True)
@redact_errors
def leaky_task(token: SecretStr) -> None:
    value = token.get_secret_value()
    print("task prints", value)
    get_run_logger().warning("task logs %s", value)


@flow(log_prints=True)
@redact_errors
def leaky_flow(block_name: str) -> None:
    credentials = CheckinCredentials.load(block_name)
    secret = get_checkin_token(credentials)
    value = secret.get_secret_value()
    logger = get_run_logger()
    logger.info("the token is %s", value)
    logger.info(f"an f-string with {value}")
    print("printed:", value)
    leaky_task(secret)
    try:
        raise RuntimeError(f"inner failure carrying {value}")
    except RuntimeError:
        logger.exception("caught and logged with a traceback")
    raise ValueError(f"the flow failed with {value}")


def test_a_flow_that_leaks_the_token_leaves_no_trace(prefect_db, checkin, capfd):
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    name = save_block(checkin)
    state = leaky_flow(name, return_state=True)
    assert state.is_failed()
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    flow_run_id = state.state_details.flow_run_id

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        run = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))[0]
        events = _events_of(client, flow_run_id)
    text = "\n".join(log.message for log in logs)
    # What was leaked reached Prefect, masked.
    assert "the token is ***" in text and "an f-string with ***" in text
    assert "printed: ***" in text and "task prints ***" in text and "task logs ***" in text
    assert "inner failure carrying ***" in text
    assert run.state.message.endswith("ValueError: the flow failed with ***")
    assert any(e["event"] == "prefect.flow-run.Failed" for e in events)

    captured = capfd.readouterr()
    secrets = _registered_secrets()  # every token and block secret this test process handled
    assert any(s.startswith("eyJ") for s in secrets)
    for value in secrets:
        assert value not in text
        assert value not in run.state.message
        assert value not in str(events)
        assert value not in captured.out + captured.err
        assert value.encode() not in database_bytes(prefect_db)
        assert not _grep_tree(Path(_prefect_home()), value)


def _registered_secrets() -> list[str]:
    from prefect_egi.tasks import redaction

    return list(redaction._ordered)


def _events_of(client, flow_run_id) -> list[dict]:
    deadline = time.monotonic() + 20
    body = {"filter": {"any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}, "occurred": {
        "since": "2000-01-01T00:00:00Z"}}, "limit": 50}
    while True:
        response = client._client.post("/events/filter", json=body)
        response.raise_for_status()
        events = response.json()["events"]
        if any(e["event"] == "prefect.flow-run.Failed" for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def _prefect_home() -> str:
    from prefect.settings import PREFECT_HOME

    return str(PREFECT_HOME.value())


def _grep_tree(root: Path, needle: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    return hits


def test_identity_flow_publishes_who_not_the_token(prefect_db, checkin):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from prefect_egi.flows import egi_identity

    name = save_block(checkin)
    state = egi_identity(name, return_state=True)
    report = state.result()
    assert report.username == "alice" and report.vos_from == "userinfo"
    assert report.vos == ["eosc-synergy.eu", "vo.access.egi.eu", "vo.notebooks.egi.eu"]
    assert 3500 < report.expires_in_seconds <= 3600
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    assert artifact.key == "egi-identity"
    assert "| VOs (userinfo) | `eosc-synergy.eu`, `vo.access.egi.eu`, `vo.notebooks.egi.eu` |" in artifact.data
    assert "eyJ" not in artifact.data


def test_identity_flow_names_a_missing_block(prefect_db):
    from prefect_egi.flows import egi_identity

    state = egi_identity("no-such-block", return_state=True)
    assert state.is_failed()
    assert "credentials_block: there is no EGI Check-in Credentials block named 'no-such-block'. Create it" in state.message


def test_token_task_retries_an_unreachable_issuer_only(prefect_db, checkin):
    name = save_block(checkin)
    credentials = CheckinCredentials.load(name)
    quick = get_checkin_token.with_options(retry_delay_seconds=0)

    @flow
    def fetch(credentials: CheckinCredentials) -> str:
        return quick(credentials).get_secret_value()[:3]

    credentials.provider.oidc.discovery()  # discovery cached: only the token endpoint fails
    checkin.fault(status=503, count=4)  # one task attempt = 4 requests with backoff
    assert fetch(credentials) == "eyJ"
    assert checkin.token_requests() == 5

    broken = CheckinCredentials.load(name)
    broken.refresh_token = SecretStr("not-a-refresh-token-we-issued")
    before = checkin.token_requests()
    state = fetch(broken, return_state=True)
    assert state.is_failed() and "invalid_grant" in state.message
    assert checkin.token_requests() == before + 1  # a bad grant is not retried


def test_blocks_load_and_save_as_values_under_a_running_loop(prefect_db, checkin):
    """A Jupyter cell runs inside an event loop, where Prefect's `Block.load`/`save` return
    coroutines; ours give the block and save it, as written — and `aload`/`asave` still work."""
    import asyncio
    import uuid

    from prefect_egi.tasks import DataMiner, DiracX, FedCloud, NotebooksHub

    name = f"cell-{uuid.uuid4().hex[:8]}"

    async def cell() -> None:
        saved = DataMiner(url="https://dataminer.example.org/wps/WebProcessingService").save(name, overwrite=True)
        assert isinstance(saved, uuid.UUID)
        loaded = DataMiner.load(name)
        assert isinstance(loaded, DataMiner) and loaded.url.startswith("https://dataminer.example.org")
        again = await DataMiner.aload(name)
        assert again.url == loaded.url
        FedCloud(default_vo="vo.access.egi.eu").save(name, overwrite=True)
        assert FedCloud.load(name).default_vo == "vo.access.egi.eu"
        assert isinstance(CheckinCredentials.load(save_block(checkin)), CheckinCredentials)
        for block_class in (DiracX, NotebooksHub):
            assert not asyncio.iscoroutinefunction(block_class.load)

    asyncio.run(cell())
    assert DataMiner.load(name).url.startswith("https://")  # and in plain sync code
