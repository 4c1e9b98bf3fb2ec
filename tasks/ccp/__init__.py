"""D4Science CCP (Cloud Computing Platform): methods over OGC API – Processes.

- access layer (plain Python, no Prefect): `client` (the OGC API – Processes client:
  process list and descriptions, asynchronous Execute, job status, results, downloads,
  `output.zip`, dismiss, and the job listing that finds an Execute whose answer was lost),
  `inputs` (an Execute's inputs checked against the process description before sending);
- later: `adapter` (jobs for the engine's `watch`), `block` (the `CCP` block), `tasks`.
"""
