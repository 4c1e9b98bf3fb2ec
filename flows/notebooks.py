"""`notebooks-server`: see, start or stop my EGI Notebooks server.

    from prefect_egi.flows import notebooks_server
    notebooks_server("start")                  # waits until it is ready
    notebooks_server("status").servers         # {"": HubServer(ready=True, url=…)}
    notebooks_server("stop")

The hub is reached with the Check-in identity of the `NotebooksHub` block; the
result is the hub's view of me (name, groups, servers, last activity).
"""

from typing import Annotated, Any, Literal

from pydantic import Field

from prefect_egi.flows.base import egi_flow, load_block
from prefect_egi.tasks import HubUser, NotebooksHub, hub_user, start_server, stop_server


@egi_flow(name="notebooks-server")
def notebooks_server(
    action: Literal["status", "start", "stop"] = "status",
    server: str = "",
    options: dict[str, Any] = {},  # noqa: B006 - Prefect copies parameters; shown as {} in the UI form
    hub_block: str = "notebooks",
    deadline_minutes: Annotated[float, Field(gt=0)] = 10.0,
) -> HubUser:
    """See, start or stop my EGI Notebooks server, waiting until it is ready or gone.

    Args:
        action: status, start (and wait until ready) or stop (and wait until gone).
        server: A named server; empty for the default one.
        options: Spawner options for a start (e.g. the image to use).
        hub_block: Name of the EGI Notebooks Hub block to use.
        deadline_minutes: How long a start or stop may take.
    """
    hub = load_block(NotebooksHub, hub_block, "hub_block")
    if action == "start":
        start_server(hub, server, options or None, deadline_minutes * 60)
    elif action == "stop":
        stop_server(hub, server, deadline_minutes * 60)
    return hub_user(hub)
