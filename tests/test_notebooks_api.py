"""The hub client against JupyterHub's own documents and against the real hub, called directly.

Documents (tests/data/notebooks, from jupyterhub/jupyterhub): the REST API specification
`rest-api.yml`, the pagination how-to, the progress API tutorial, and the failed-spawn
event its test suite expects. The real hub is the Notebooks peer's JupyterHub 6.1,
called at its own `/hub/api` with a hub API token from its `/hub/jwt_login` (the endpoint
EGI's hub serves), and through the EGI-like front for comparison.
"""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import SecretStr

from prefect_egi.tasks import HubError, NotebooksHub, hub_users, start_server

PAGE_LIMIT = 200  # JupyterHub's api_page_max_limit default (checked against its documentation below)

DATA = Path(__file__).parent / "data" / "notebooks"


# -- JupyterHub's documents ------------------------------------------------------------------

def test_pages_are_read_as_jupyterhubs_documentation_shows_them():
    """docs/source/howto/rest.md ("Paginating API requests") and the `Pagination` schema of
    docs/source/_static/rest-api.yml: the media type, the page fields, the limits."""
    from prefect_egi.tasks.notebooks import client
    from prefect_egi.tasks.notebooks.client import PAGINATION_MEDIA_TYPE, UsersPage

    assert client.PAGE_LIMIT == PAGE_LIMIT
    howto = (DATA / "jupyterhub-howto-rest-pagination.md").read_text()
    assert f"Accept: {PAGINATION_MEDIA_TYPE}" in howto
    assert re.search(rf"`JupyterHub.api_page_max_limit` - .*\(default: {PAGE_LIMIT}\)", howto)
    example = json.loads("{" + re.search(r'("_pagination": \{.*?\n  \})', howto, re.S).group(1) + "}")
    spec = yaml.safe_load((DATA / "rest-api.yml").read_text())["components"]["schemas"]
    assert set(example["_pagination"]) == set(spec["Pagination"]["properties"])
    assert set(example["_pagination"]["next"]) == set(spec["Pagination"]["properties"]["next"]["properties"])
    assert set(spec["PaginatedList"]["properties"]) == {"items", "_pagination"}

    first = UsersPage.read({"items": [{"name": "username", "kind": "user"}], **example}, 0)
    assert [u.name for u in first.users] == ["username"] and first.next_offset == 20 and first.total == 50
    last = UsersPage.read({"items": [], "_pagination": {**example["_pagination"], "offset": 40, "next": None}}, 40)
    assert last.next_offset is None and not last.query_dropped
    # the page for offset 0 when offset 20 was asked for: the query never reached the hub
    assert UsersPage.read({"items": [], **example}, 20).query_dropped
    assert UsersPage.read([{"name": "a"}, {"name": "b"}], 0).next_offset is None  # a hub without pagination


def test_progress_events_are_read_as_jupyterhub_documents_them():
    """docs/source/tutorial/server-api.md ("Using the progress API"): `data:` lines hold JSON,
    other lines are ignored; jupyterhub/tests/test_api.py `test_progress_bad`: the one event
    of a spawn that already failed. Through EGI's front the same stream is one JSON string."""
    from prefect_egi.tasks.notebooks.client import progress_events

    tutorial = (DATA / "jupyterhub-tutorial-server-api-progress.md").read_text()
    stream = re.search(r"typical complete stream from the API:\n\n```\n(.*?)```", tutorial, re.S).group(1)
    events = progress_events(stream)
    assert [e["progress"] for e in events] == [0, 50, 100] and events[-1]["ready"] is True
    failed = json.loads((DATA / "jupyterhub-progress-failed-event.json").read_text())
    from_hub = f"\n\ndata: {json.dumps(failed)}\n\n"
    assert progress_events(from_hub) == progress_events(json.loads(json.dumps(from_hub))) == [failed]
    assert progress_events(None) == [] and progress_events("data: not json\n") == []


def test_the_documented_server_paths_are_the_ones_we_call():
    from prefect_egi.tasks.notebooks.client import HubClient

    paths = yaml.safe_load((DATA / "rest-api.yml").read_text())["paths"]
    assert "/users/{name}/server" in paths and "/users/{name}/servers/{server_name}" in paths
    assert HubClient.server_path("alice", "") == "users/alice/server"
    assert HubClient.server_path("alice", "gpu") == "users/alice/servers/gpu"
    tutorial = (DATA / "jupyterhub-tutorial-server-api-progress.md").read_text()
    assert "`:user/server/progress`" in tutorial and "/hub/api/users/:user/servers/:servername/progress" in tutorial


# -- the real hub, called directly -----------------------------------------------------------

@pytest.fixture
def hub_token(notebooks, checkin):
    """`hub_token(user)`: a hub API token from the hub's own /hub/jwt_login, as EGI's hub hands it out."""
    def token(user: str = "alice") -> str:
        access = checkin.login(user=user)["access_token"]
        answer = httpx.get(notebooks.info["hub_url"] + "/jwt_login", headers={"Authorization": f"Bearer {access}"},
                           timeout=60)
        answer.raise_for_status()
        return answer.json()["token"]

    return token


def direct(notebooks, token: str) -> NotebooksHub:
    return NotebooksHub(url=notebooks.info["hub_api"], api_token=SecretStr(token))


def hub_client(notebooks, token: str):
    """The access-layer client on the hub's own API, sending a hub API token."""
    from prefect_egi.tasks.notebooks.client import HubClient

    async def hub_token() -> str:
        return token

    return HubClient(notebooks.info["hub_api"], hub_token)


def test_a_hubs_400_message_is_kept(notebooks, hub_token):
    """Called directly, the hub answers HTTP 400 with `{"status": 400, "message": …}`: the error
    carries the message (it used to be `HubError(400, 'POST …: HTTP 400')`)."""
    async def start_with_a_bad_option():
        async with hub_client(notebooks, hub_token("carol")) as client:
            await client.start("carol", "lab", {"display_name": 42})

    with pytest.raises(HubError) as refused:
        asyncio.run(start_with_a_bad_option())
    assert refused.value.status == 400
    assert "POST /users/carol/servers/lab: the hub answered 400: display_name must be a string" in str(refused.value)


def test_a_block_with_a_hub_api_token_talks_to_the_hub_directly(notebooks, hub_token, checkin):
    """`api_token` on the block: the hub token is sent, never a Check-in token; the same error texts."""
    block = direct(notebooks, hub_token("carol"))
    with pytest.raises(HubError, match="the hub answered 400: display_name must be a string") as refused:
        asyncio.run(start_server.fn(block, server="lab", options={"display_name": 42}, deadline_seconds=60))
    assert refused.value.hub_message == "display_name must be a string"
    assert checkin.token_requests() == 0


def test_a_token_the_hub_does_not_accept_is_named(notebooks):
    with pytest.raises(HubError, match="did not accept the API token") as refused:
        asyncio.run(hub_users.fn(direct(notebooks, "not-a-hub-token")))
    assert refused.value.status == 403


@pytest.fixture
def many_users(notebooks, hub_token):
    """More users than a page holds (PAGE_LIMIT), created with the hub's admin API, removed after."""
    token = hub_token("alice")
    api, headers = notebooks.info["hub_api"], {"Authorization": f"token {token}"}
    names = [f"crowd-{i:03d}" for i in range(PAGE_LIMIT + 30)]
    httpx.post(f"{api}/users", json={"usernames": names}, headers=headers, timeout=120).raise_for_status()
    yield names
    with httpx.Client(headers=headers, timeout=120) as client, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: client.delete(f"{api}/users/{name}"), names))


def test_every_user_page_after_page(notebooks, hub_token, checkin, many_users):
    """Directly, pages are followed to the end (before: the first page only). Through EGI's front,
    which drops the query string, the users it can reach come with an error saying so."""
    async def every_user():
        async with hub_client(notebooks, hub_token("alice")) as client:
            return await client.users()

    names = [user.name for user in asyncio.run(every_user())]
    assert set(many_users) <= set(names) and len(names) == len(set(names)) > PAGE_LIMIT
    assert [u.name for u in asyncio.run(hub_users.fn(direct(notebooks, hub_token("alice"))))] == names  # the task

    from prefect_egi.tasks import HubListingIncomplete

    through_front = NotebooksHub(url=notebooks.info["api_url"], checkin=checkin.credentials("alice"))
    with pytest.raises(HubListingIncomplete, match=f"Only {PAGE_LIMIT} of the hub's {len(names)} users") as partial:
        asyncio.run(hub_users.fn(through_front))
    assert len(partial.value.users) == PAGE_LIMIT and partial.value.total == len(names)
    assert "drops the query string" in str(partial.value) and "api_token" in str(partial.value)
