"""Every block of prefect-egi and its worker type, defined (and so registered with Prefect) on import.

The `prefect.collections` entry point: Prefect imports it before it looks a block
type up by slug (a worker loading a block document, `Block.load("egi-dataminer/…")`,
the job ledger's hooks). Also `prefect block register -m prefect_egi.tasks.blocks`.

`BLOCKS` is derived from the public API's index (each service's `block` module), so
there is one list of blocks: `prefect_egi.tasks._PUBLIC`.
"""

from importlib import import_module

from prefect_egi.tasks import _PUBLIC

BLOCKS: tuple[type, ...] = tuple(
    getattr(import_module(module), name) for module, names in _PUBLIC.items() if module.endswith(".block")
    for name in names)

globals().update({block.__name__: block for block in BLOCKS})  # what `prefect block register -m` walks

# the `dirac` worker type: defining the class registers it, so that `prefect work-pool create
# --type dirac` and `prefect worker start --pool …` find it once the collection is loaded
from prefect_egi.tasks.dirac.worker import DiracWorker  # noqa: E402, F401
