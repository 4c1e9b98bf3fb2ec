"""Every block of prefect-egi, defined (and so registered with Prefect) on import.

The `prefect.collections` entry point: Prefect imports it before it looks a block
type up by slug (a worker loading a block document, `Block.load("data-miner/…")`).
Also `prefect block register -m tasks.blocks`.
"""

from tasks.checkin.block import CheckinCredentials
from tasks.dataminer import DataMiner
from tasks.dirac import DiracX
from tasks.notebooks import NotebooksHub
from tasks.openstack import FedCloud

__all__ = ["CheckinCredentials", "DataMiner", "DiracX", "FedCloud", "NotebooksHub"]
