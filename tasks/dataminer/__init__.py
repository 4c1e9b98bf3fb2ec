"""D4Science DataMiner: algorithms over OGC WPS 1.0.

- access layer (plain Python, no Prefect): `client` (the WPS client: descriptions,
  input validation, Execute, status documents, downloads), `adapter` (executions for
  the engine; DataMiner's ids and pacing), `outputs` (what an execution returned);
- `block`: the `DataMiner` block;
- `tasks`: list, describe, execute, wait, fetch, and `run_algorithm` for all of them.

The public names are exported by `prefect_egi.tasks`.
"""
