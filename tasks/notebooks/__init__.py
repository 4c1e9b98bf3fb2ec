"""The EGI Notebooks hub (JupyterHub's REST API behind EGI's token front).

- access layer (plain Python, no Prefect): `client` (the hub client, the front's quirks),
  `adapter` (a server start or stop for the engine);
- `block`: the `NotebooksHub` block;
- `tasks`: who am I, list users, start and stop a server.

The public names are exported by `prefect_egi.tasks`.
"""
