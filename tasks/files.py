"""What a remote job's files became on this side: one model for every service's results.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import re

from pydantic import BaseModel


class OutputFile(BaseModel):
    """A file an execution produced, downloaded (or not, with the reason)."""

    name: str
    description: str = ""
    mime_type: str = ""
    url: str
    path: str | None = None
    size: int | None = None
    error: str | None = None


def safe_name(text: str) -> str:
    """`text` as one file or folder name: no separators, no dot-names, nothing empty."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "output"
