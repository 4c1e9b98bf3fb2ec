"""D4Science CCP (Cloud Computing Platform): methods over OGC API – Processes.

- access layer (plain Python, no Prefect): `client` (the OGC API – Processes client:
  process list and descriptions, asynchronous Execute, job status, results, downloads,
  `output.zip`, dismiss, and the job listing that finds an Execute whose answer was lost);
  `identity` (the VRE's UMA token), `inputs` (JSON Schema checks before anything is sent),
  `adapter` (jobs for the engine's `watch`), `outputs` (values, files, `output.zip`);
- `block`: the `CCP` block (endpoint, VRE, identity);
- `tasks`: list, describe, execute, wait, collect, run.
"""
