"""DIRAC job descriptions: a typed model rendered to JDL, checked before anything is sent.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator


def _quote(field: str, value: str) -> str:
    if '"' in value or "\n" in value or "\r" in value:
        raise ValueError(f"{field}: {value!r} cannot be written into JDL (no double quotes or newlines)")
    return f'"{value}"'


def _jdl_list(field: str, values: Sequence[str]) -> str:
    return "{" + ", ".join(_quote(field, v) for v in values) + "}"


class DiracJob(BaseModel):
    """One job, or one per parameter (`parameters` + `%s` in `arguments`/`job_name`)."""

    executable: str = Field(description="Program or script to run (put a script in input_sandbox).")
    arguments: str = Field(default="", description="Command-line arguments; %s is replaced by the parameter.")
    input_sandbox: list[str] = Field(default_factory=list,
                                     description="Local files to upload, or existing SB:… / LFN: references.")
    output_sandbox: list[str] = Field(default_factory=lambda: ["std.out", "std.err"],
                                      description="Files to bring back.")
    stdout: str = "std.out"
    stderr: str = "std.err"
    job_name: str = Field(default="prefect-egi", description="Name; %s is replaced by the parameter.")
    job_group: str | None = None
    site: list[str] = Field(default_factory=list, description="Sites to run at (empty: any).")
    banned_sites: list[str] = Field(default_factory=list)
    cpu_time: int | None = Field(default=None, gt=0, description="CPU time in seconds.")
    tags: list[str] = Field(default_factory=list)
    platform: str | None = None
    parameters: list[str | int | float] = Field(default_factory=list, description="One job per parameter.")

    @field_validator("executable")
    @classmethod
    def _executable_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("executable: give the program or script to run")
        return value

    @model_validator(mode="after")
    def _checked(self) -> "DiracJob":
        for path in self.local_inputs():
            if not path.is_file():
                raise ValueError(f"input_sandbox: {path} does not exist (or is not a file)")
        for name in ("executable", "arguments", "stdout", "stderr", "job_name", "job_group", "platform"):
            value = getattr(self, name)
            if value:
                _quote(name, str(value))
        for name in ("output_sandbox", "site", "banned_sites", "tags"):
            _jdl_list(name, getattr(self, name))
        _jdl_list("parameters", [str(p) for p in self.parameters])
        return self

    def local_inputs(self) -> list[Path]:
        return [Path(p).expanduser() for p in self.input_sandbox if not p.startswith(("SB:", "LFN:"))]

    def to_jdls(self, uploaded: str | None = None) -> list[str]:
        """One JDL per parameter (or one). `uploaded` is the SB: reference of the local inputs."""
        references = [p for p in self.input_sandbox if p.startswith(("SB:", "LFN:"))]
        if uploaded:
            references.insert(0, uploaded)
        parameters: list[str | None] = [str(p) for p in self.parameters] or [None]
        return [self._jdl(p, references) for p in parameters]

    def _jdl(self, parameter: str | None, sandbox: list[str]) -> str:
        def fill(text: str) -> str:
            return text.replace("%s", parameter) if parameter is not None else text

        # (JDL attribute, field named in errors, value); empty values are left out
        attributes: list[tuple[str, str, Any]] = [
            ("Executable", "executable", self.executable),
            ("JobName", "job_name", fill(self.job_name)),
            ("StdOutput", "stdout", self.stdout),
            ("StdError", "stderr", self.stderr),
            ("OutputSandbox", "output_sandbox", self.output_sandbox),
            ("Arguments", "arguments", fill(self.arguments)),
            ("InputSandbox", "input_sandbox", sandbox),
            ("JobGroup", "job_group", self.job_group),
            ("Site", "site", self.site),
            ("BannedSites", "banned_sites", self.banned_sites),
            ("CPUTime", "cpu_time", self.cpu_time),
            ("Tags", "tags", self.tags),
            ("Platform", "platform", self.platform),
            ("Parameter", "parameters", parameter),
        ]
        lines = []
        for attribute, field, value in attributes:
            if value is None or value == "" or value == []:
                continue
            if isinstance(value, list):
                text = _jdl_list(field, value)
            elif isinstance(value, int):
                text = str(value)
            else:
                text = _quote(field, str(value))
            lines.append(f"{attribute} = {text};")
        return "\n".join(lines)
