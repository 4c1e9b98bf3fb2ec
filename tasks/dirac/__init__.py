"""DIRAC grid jobs through DiracX.

- access layer (plain Python, no Prefect): `jdl` (`DiracJob`, rendered to JDL),
  `client` (the DiracX client: sessions, credentials, errors), `adapter` (jobs for the
  engine: one bulk search per poll), `submission` (chunks of 20, exactly once),
  `outputs` (output sandboxes), `login` (the device flow);
- `block`: the `DiracX` block;
- `tasks`: submit, wait, fetch outputs, resubmit, kill, log in, and `run_batch` for a
  whole batch.

The public names are exported by `prefect_egi.tasks`.
"""
