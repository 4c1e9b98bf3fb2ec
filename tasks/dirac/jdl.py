"""DIRAC job descriptions: a typed model rendered to JDL, checked before anything is sent.

Parametric jobs follow DIRAC (`ParametricJob.py` in DIRACCommon, the JDL reference, the
JobManagementAdvanced tutorial). A job has one or more sequences — `parameters` (`%s`,
DIRAC's `Parameters`) and `named_parameters` (`%(name)s`, DIRAC's `Parameters.name`) —
each a list of values or a `ParameterSequence` (`ParameterStart`/`ParameterStep`/
`ParameterFactor`), all as long as each other (`number_of_parameters` when no list says).
Job `n` of the batch gets, in EVERY attribute, `%s`/`%(name)s` replaced by its values and
`%n` by its index (zero-padded to the width of the last index), and the attributes
`Parameter`(`.name`) and `ParameterNumber`. We expand here, not on the server: DiracX
takes at most 20 jobs per call, leaves the jobs of a parametric JDL `Submitting`, and a
lost answer is found again by each job's own JobName.

What DIRAC's JDL readers make of text, found by submitting to DiracX 0.7, is checked
before anything is sent (`_check_text`, the one place for those rules):

- a `"` or a line break cannot be written (JDL has no escapes);
- a `;` ends the attribute, even inside quotes (`Arguments = "a;b"` was stored as `"a` and
  the attributes after it were lost);
- a `[` starts a nested ClassAd: the server's parser loops forever on it (one CPU busy,
  no answer, for every later request too);
- a `,` splits a value into a list everywhere but in Arguments, Executable, StdOutput and
  StdError (`JobName = "a,b"` was stored as `{ a, b }`: the job could not be found again);
- list items lose every space (DIRAC's list reader drops them) and cannot hold braces.

A list of one value is written as a scalar, as DIRAC's job API does (DIRAC's parser reads
`Site = {"X"}` as the site `{X}`). `extra_jdl` takes any other attribute.

No Prefect imports: this is the service-access layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, Field, field_validator, model_validator

JDLScalar = Union[str, int, float]
#: one job's value of a sequence; a list fills a whole list item with several (DIRAC's
#: `Parameters.InputData = {{a, b}, {c, d}}` with `InputData = %(InputData)s`)
ParameterValue = Union[str, int, float, list[str]]
JDLValue = Union[str, int, float, bool, list[JDLScalar]]

#: JDL attribute → DiracJob field, in the order they are written
ATTRIBUTES = {
    "Executable": "executable", "Arguments": "arguments", "JobName": "job_name", "JobGroup": "job_group",
    "JobType": "job_type", "Priority": "priority", "LogLevel": "log_level",
    "StdOutput": "stdout", "StdError": "stderr", "InputSandbox": "input_sandbox",
    "OutputSandbox": "output_sandbox", "InputData": "input_data", "OutputData": "output_data",
    "OutputSE": "output_se", "OutputPath": "output_path", "Site": "site", "BannedSites": "banned_sites",
    "Platform": "platform", "CPUTime": "cpu_time", "Tags": "tags", "NumberOfProcessors": "number_of_processors",
    "MinNumberOfProcessors": "min_number_of_processors", "MaxNumberOfProcessors": "max_number_of_processors",
}
#: the attributes DIRAC never splits at commas (DIRACCommon's `dumpCFGAsJDL`)
NEVER_LISTS = {"Executable", "Arguments", "StdOutput", "StdError"}
#: set by DiracX from the credentials, or by the expansion: never in a description
NOT_YOURS = {"Owner": "DiracX sets it from your credentials", "OwnerGroup": "DiracX sets it from your credentials",
             "OwnerDN": "DiracX sets it from your credentials",
             "VirtualOrganization": "DiracX sets it from your credentials", "JobID": "DiracX sets it",
             "JobRequirements": "DiracX sets it", "Parameter": "the expansion sets it (one value per job)",
             "ParameterNumber": "the expansion sets it (the job's index)"}
#: DIRAC's log levels (DIRAC.FrameworkSystem.private.standardLogging.LogLevels)
LOG_LEVELS = ("DEBUG", "VERBOSE", "INFO", "WARN", "NOTICE", "ERROR", "ALWAYS", "FATAL")
REFERENCE_PREFIXES = ("SB:", "LFN:")  # input sandbox entries that are not local files
ANY = "any"  # DIRAC's "no restriction" for Site and Platform, dropped as its job API does

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?")
_NAMED_PLACEHOLDER = re.compile(r"%\(([^)]*)\)s")
_PLACEHOLDERS = ("%s", "%n", "%(")
_SPACE_OR_BRACE = re.compile(r"[\s{}]")


#: DIRAC's site names: <grid or flavour>.<site>.<country or domain> (LCG.CERN.cern, EGI.SARA.nl,
#: CLOUD.CESGA.es, LCG.UKI-LT2-IC-HEP.uk: DIRAC's `getSiteName` splits them at dots, three parts)
SITE_NAME_PATTERN = r"[A-Za-z0-9]+\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.[A-Za-z0-9]+"
_SITE_NAME = re.compile(SITE_NAME_PATTERN)


def site_name_problem(name: str) -> str | None:
    """Why `name` is not a DIRAC site name, or None. (`DiracJob` itself stays lenient:
    a server may know site names of its own; the `dirac` worker targets real sites.)"""
    if _SITE_NAME.fullmatch(name.strip()):
        return None
    return (f"{name!r} is not a DIRAC site name: <grid>.<site>.<country>, e.g. EGI.SARA.nl or LCG.CERN.cern "
            "(`dirac-admin-get-site-mask` lists a server's sites)")


def _check_text(field: str, value: str, *, commas: bool = False, item: bool = False) -> str:
    """`value` as DIRAC's JDL readers will read it back, or a ValueError naming `field`
    and the fix. `commas`: the attribute is never split into a list; `item`: a list item."""
    reason = ""
    if '"' in value or "\n" in value or "\r" in value:
        reason = "no double quotes or line breaks (JDL has no escapes)"
    elif ";" in value:
        reason = "no ';' (DIRAC's parser ends the attribute there, even inside quotes)"
    elif "[" in value:
        reason = "no '[' (DiracX's parser takes it for a nested ClassAd and never finishes)"
    elif "," in value and not commas:
        reason = "no ',' (DIRAC splits this attribute into a list at commas); give a list instead"
    elif item and _SPACE_OR_BRACE.search(value):
        reason = "no spaces or braces in a list item (DIRAC's list reader drops spaces and splits at braces)"
    if reason:
        raise ValueError(f"{field}: {value!r} cannot be written into JDL: {reason}")
    return value


def _quoted(text: str) -> str:
    return f'"{text}"'


def _written(field: str, value: Any, *, commas: bool = False) -> str:
    """One attribute value as DIRAC's job API writes it: strings quoted, numbers bare, a
    list of one as a scalar, longer lists in braces."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return _quoted(_check_text(field, value, commas=commas))
    items = [_written_item(field, v) for v in value]
    return items[0] if len(items) == 1 else "{" + ", ".join(items) + "}"


def _written_item(field: str, value: JDLScalar) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return _quoted(_check_text(field, str(value), item=True))


def _line(attribute: str, field: str, value: Any, *, commas: bool = False) -> str:
    return f"{attribute} = {_written(field, value, commas=commas or attribute in NEVER_LISTS)};"


def _as_text(value: ParameterValue) -> str:
    """A value as DIRAC puts it into an attribute's text (a list: `{a,b}`)."""
    return "{" + ",".join(value) + "}" if isinstance(value, list) else str(value)


class ParameterSequence(BaseModel):
    """DIRAC's `ParameterStart`/`ParameterStep`/`ParameterFactor`: the first value is
    `start`, each next one the previous × `factor` + `step` (DIRAC's defaults: 1, 0, 1)."""

    start: int | float = 1
    step: int | float = 0
    factor: int | float = 1

    def values(self, count: int) -> list[int | float]:
        # the first value has the type of the ones after it, as in DIRAC (1 with factor 1.5 is 1.0)
        value = self.start * type(self.factor)(1) + type(self.step)(0)
        values = [value]
        while len(values) < count:
            value = value * self.factor + self.step
            values.append(value)
        return values


#: one sequence of a parametric job: a value per job, or start/step/factor (DIRAC's Parameters*)
ParameterValues = Union[list[ParameterValue], ParameterSequence]


class DiracJob(BaseModel):
    """One DIRAC job, or one per parameter: see the module's text for what a parametric
    job becomes (DIRAC's rules). Every value is checked before anything is sent."""

    executable: str = Field(description="Program or script to run (put a script in input_sandbox).")
    arguments: str = Field(default="", description="Command-line arguments; %s, %(name)s and %n are replaced "
                                                   "per job.")
    input_sandbox: list[str] = Field(default_factory=list,
                                     description="Local files to upload, or existing SB:… / LFN: references.")
    output_sandbox: list[str] = Field(default_factory=lambda: ["std.out", "std.err"],
                                      description="Files to bring back.")
    stdout: str = Field(default="std.out", description="StdOutput: the file the job's standard output goes to.")
    stderr: str = Field(default="std.err", description="StdError: the file the job's standard error goes to.")
    job_name: str = Field(default="prefect-egi", description="JobName; %s, %(name)s, %n replaced per job. "
                                                             "Required: a lost submission is found again by it.")
    job_group: str | None = Field(default=None, description="JobGroup (default: one naming the flow run "
                                                            "and the batch).")
    job_type: str | None = Field(default=None, description="JobType (e.g. User), as the server allows it.")
    priority: int | None = Field(default=None, ge=0, le=10, description="Priority among your jobs, 0–10.")
    log_level: str | None = Field(default=None, description=f"LogLevel of the job wrapper: {', '.join(LOG_LEVELS)}.")
    input_data: list[str] = Field(default_factory=list, description="InputData: LFNs the job reads "
                                                                    "(/vo/… or LFN:/vo/…).")
    output_data: list[str] = Field(default_factory=list, description="OutputData: files to upload to a storage "
                                                                     "element.")
    output_se: list[str] = Field(default_factory=list, description="OutputSE: storage elements for output_data, "
                                                                   "tried in turn.")
    output_path: str | None = Field(default=None, description="OutputPath: where output_data goes in your home "
                                                              "in the file catalog.")
    site: list[str] = Field(default_factory=list, description="Sites to run at (empty or ANY: any).")
    banned_sites: list[str] = Field(default_factory=list, description="Sites never to run at.")
    platform: list[str] = Field(default_factory=list, description="Platforms the job can run on (empty or ANY: "
                                                                  "any); the server must know them.")
    cpu_time: int | None = Field(default=None, gt=0, description="CPU time in seconds.")
    tags: list[str] = Field(default_factory=list, description="Tags the resource must have (e.g. GPU, 8GB).")
    number_of_processors: int | None = Field(default=None, ge=1, description="Exactly this many processors.")
    min_number_of_processors: int | None = Field(default=None, ge=1, description="At least this many processors.")
    max_number_of_processors: int | None = Field(default=None, ge=1, description="At most this many processors.")
    parameters: ParameterValues = Field(default_factory=list, description="One job per value (%s), or a "
                                                                    "ParameterSequence.")
    named_parameters: dict[str, ParameterValues] = Field(default_factory=dict,
                                                   description="More sequences, %(name)s: name → values.")
    number_of_parameters: int | None = Field(default=None, ge=1,
                                             description="How many jobs, when no list of values says (DIRAC's "
                                                         "Parameters = N).")
    extra_jdl: dict[str, JDLValue] = Field(default_factory=dict,
                                           description="Any other JDL attribute: name → value (strings quoted, "
                                                       "lists in braces, as DIRAC writes them).")

    @field_validator("site", "banned_sites", "platform", "tags", "input_data", "output_data", "output_se",
                     "input_sandbox", "output_sandbox", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # DIRAC's job API takes a string or a list

    @field_validator("site", "platform")
    @classmethod
    def _any_is_no_restriction(cls, value: list[str]) -> list[str]:
        return [v for v in value if v.strip() and v.strip().lower() != ANY]

    @field_validator("executable", "job_name")
    @classmethod
    def _given(cls, value: str, info: Any) -> str:
        if not value.strip():
            hint = ("give the program or script to run" if info.field_name == "executable"
                    else "give the jobs a name: a lost submission is found again by it")
            raise ValueError(f"{info.field_name}: {hint}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level: {value!r} is not a DIRAC log level ({', '.join(LOG_LEVELS)})")
        return value.upper() if value is not None else None

    @field_validator("job_group")
    @classmethod
    def _group_known_before_submission(cls, value: str | None) -> str | None:
        if value is not None and "%j" in value:
            raise ValueError("job_group: no %j (the job id) in the group: the group is how a lost submission "
                             "is found again, so it must be known before the server answers")
        return value

    @field_validator("named_parameters")
    @classmethod
    def _names(cls, value: dict[str, ParameterValues]) -> dict[str, ParameterValues]:
        for name in value:
            if not _NAME.fullmatch(name):
                raise ValueError(f"named_parameters: {name!r} is not a parameter name (letters, digits, _)")
        return value

    @field_validator("extra_jdl")
    @classmethod
    def _extra(cls, value: dict[str, JDLValue]) -> dict[str, JDLValue]:
        for name in value:
            if not _ATTRIBUTE.fullmatch(name):
                raise ValueError(f"extra_jdl: {name!r} is not a JDL attribute name")
            if name in ATTRIBUTES:
                raise ValueError(f"extra_jdl: {name} is the field {ATTRIBUTES[name]}; set it there")
            if name in NOT_YOURS:
                raise ValueError(f"extra_jdl: {name} cannot be set: {NOT_YOURS[name]}")
            if name.split(".")[0] in ("Parameters", "ParameterStart", "ParameterStep", "ParameterFactor"):
                raise ValueError(f"extra_jdl: {name}: give sequences as parameters / named_parameters")
        return value

    @model_validator(mode="after")
    def _checked(self) -> "DiracJob":
        for path in self.local_inputs():
            if any(p in str(path) for p in _PLACEHOLDERS):
                raise ValueError(f"input_sandbox: {path}: a local file cannot change with the parameter (they are "
                                 "uploaded once, for every job); name SB:/LFN: references for per-job inputs")
            if not path.is_file():
                raise ValueError(f"input_sandbox: {path} does not exist (or is not a file)")
        for item in self.input_data:
            if not item.startswith(("/", "LFN:/", "%")):
                raise ValueError(f"input_data: {item!r} is not an LFN (an absolute path in the file catalog, "
                                 "e.g. /biomed/user/a/alice/data.txt or LFN:/biomed/…)")
        self._check_processors()
        known = set(self.named_parameters)
        for attribute, _field, value in self._templates():
            for text in ([value] if isinstance(value, str) else value if isinstance(value, list) else []):
                for name in _NAMED_PLACEHOLDER.findall(str(text)):
                    if name not in known:
                        raise ValueError(f"{_field}: %({name})s names no sequence of named_parameters "
                                         f"({', '.join(sorted(known)) or 'there are none'})")
        self.to_jdls("SB:check")  # every value of every job, as it will be sent
        return self

    def _check_processors(self) -> None:
        exact, low, high = self.number_of_processors, self.min_number_of_processors, self.max_number_of_processors
        if exact is not None and any(bound is not None and bound != exact for bound in (low, high)):
            raise ValueError("number_of_processors: give either the exact number, or min/max_number_of_processors")
        if low is not None and high is not None and high < low:
            raise ValueError(f"max_number_of_processors: {high} is less than min_number_of_processors ({low})")

    # -- reading a JDL

    @classmethod
    def from_jdl(cls, text: str, *, folder: str | Path | None = None) -> "DiracJob":
        """The description a DIRAC JDL (`dirac-wms-job-submit` input) gives, checked like any
        other; attributes without a field go to `extra_jdl`. Local input sandbox files are
        looked up in `folder` (default: the current directory). A JDL without JobName gets
        ours: a lost submission is found again by it."""
        attributes = parse_jdl(text)
        fields: dict[str, Any] = {"output_sandbox": [], "stdout": "", "stderr": ""}
        sequences: dict[str, dict[str, Any]] = {}
        extra: dict[str, JDLValue] = {}
        for name, value in attributes.items():
            base, _, suffix = name.partition(".")
            if base in ("Parameters", "ParameterStart", "ParameterStep", "ParameterFactor"):
                sequences.setdefault(suffix, {})[base] = value
            elif name in ATTRIBUTES:
                fields[ATTRIBUTES[name]] = value
            elif name in NOT_YOURS:
                raise ValueError(f"{name}: {NOT_YOURS[name]}; remove it from the JDL")
            else:
                extra[name] = value
        for field in ("input_sandbox", "output_sandbox", "input_data", "output_data", "output_se", "site",
                      "banned_sites", "platform", "tags"):
            if field in fields and not isinstance(fields[field], list):
                fields[field] = [str(fields[field])]
        for field in ("arguments", "executable", "stdout", "stderr", "job_name", "job_group", "job_type",
                      "log_level", "output_path"):
            if field in fields and not isinstance(fields[field], str):
                fields[field] = str(fields[field])
        if folder is not None and fields.get("input_sandbox"):
            fields["input_sandbox"] = [p if p.startswith(REFERENCE_PREFIXES) else str(Path(folder) / p)
                                       for p in fields["input_sandbox"]]
        for suffix, parts in sequences.items():
            count = parts.pop("Parameters", None)
            where = f"Parameters.{suffix}" if suffix else "Parameters"
            if isinstance(count, list):
                if parts:
                    raise ValueError(f"{where}: a list of values and {', '.join(parts)} at once")
                values: Any = [v if isinstance(v, list) else str(v) for v in count]
            elif count is not None and suffix:
                raise ValueError(f"{where}: a named sequence is a list of values (the number of jobs is "
                                 "Parameters = N)")
            else:
                if count is not None:
                    if isinstance(count, bool) or not isinstance(count, int):
                        raise ValueError(f"Parameters: {count!r} is neither a number of jobs nor a list of values")
                    fields["number_of_parameters"] = count
                values = ParameterSequence(**{k.removeprefix("Parameter").lower(): v for k, v in parts.items()})
            if suffix:
                fields.setdefault("named_parameters", {})[suffix] = values
            elif isinstance(values, list) or values != ParameterSequence():  # `Parameters = N` alone: the count
                fields["parameters"] = values
        fields["extra_jdl"] = extra
        fields.setdefault("job_name", cls.model_fields["job_name"].default)
        return cls(**fields)

    # -- writing JDLs

    def local_inputs(self) -> list[Path]:
        return [Path(p).expanduser() for p in self.input_sandbox if not p.startswith(REFERENCE_PREFIXES)]

    def job_count(self) -> int:
        """How many jobs this description makes (1 when it is not parametric)."""
        return self._sequences()[0] or 1

    def to_jdls(self, uploaded: str | None = None) -> list[str]:
        """One JDL per job, in the order of the parameters. `uploaded` is the SB: reference
        of the local input files (uploaded once, shared by every job).

        An attribute without a placeholder is written once for every job: a batch of 10,000
        costs little more than its Arguments, JobName and parameter lines."""
        sandbox = [p for p in self.input_sandbox if p.startswith(REFERENCE_PREFIXES)]
        if uploaded:
            sandbox.insert(0, uploaded)
        count, sequences = self._sequences()
        lines: list[str | tuple[str, str, Any]] = []  # a written line, or a template to fill per job
        for attribute, field, value in self._templates(sandbox):
            if value is None or value == "" or value == []:
                continue
            if count and any(isinstance(text, str) and "%" in text
                             for text in (value if isinstance(value, list) else [value])):
                lines.append((attribute, field, value))
            else:
                lines.append(_line(attribute, field, value))
        if not count:
            return ["\n".join(line for line in lines if isinstance(line, str))]
        width = len(str(count - 1))
        return [self._render(lines, str(n).zfill(width), n, {k: v[n] for k, v in sequences.items()})
                for n in range(count)]

    def _sequences(self) -> tuple[int, dict[str, list[ParameterValue]]]:
        """How many jobs (0: not parametric) and each sequence's values ("" is the `%s` one)."""
        given: dict[str, ParameterValues] = dict(self.named_parameters)
        if self.parameters or self.number_of_parameters is not None:
            # DIRAC's `Parameters = N` alone is its default sequence (1, 1, 1 …)
            given = {"": self.parameters or ParameterSequence(), **given}
        lengths = {("parameters" if k == "" else f"named_parameters[{k}]"): len(v)
                   for k, v in given.items() if isinstance(v, list)}
        if self.number_of_parameters is not None:
            lengths["number_of_parameters"] = self.number_of_parameters
        if len(set(lengths.values())) > 1:
            raise ValueError("parameters: the sequences differ in length ("
                             + ", ".join(f"{k}: {n}" for k, n in lengths.items()) + "); every job needs one "
                             "value of each")
        if given and not lengths:
            raise ValueError("number_of_parameters: give the number of jobs (no list of values says how many "
                             "a ParameterSequence makes)")
        count = next(iter(lengths.values()), 0)
        values: dict[str, list[ParameterValue]] = {}
        for key, sequence in given.items():
            field = "parameters" if key == "" else f"named_parameters[{key}]"
            values[key] = sequence.values(count) if isinstance(sequence, ParameterSequence) else list(sequence)
            for index, value in enumerate(values[key]):
                for text in value if isinstance(value, list) else [str(value)]:
                    if any(p in text for p in _PLACEHOLDERS):
                        raise ValueError(f"{field}[{index}]: {text!r}: a value is put in as it is, it cannot hold "
                                         "%s, %n or %(name)s itself")
        return count, values

    def _templates(self, sandbox: Sequence[str] = ()) -> list[tuple[str, str, Any]]:
        """(attribute, field named in errors, value before substitution) for every attribute."""
        values: dict[str, Any] = {field: getattr(self, field) for field in ATTRIBUTES.values()}
        values["input_sandbox"] = list(sandbox)
        exact = self.number_of_processors
        if exact is None and self.min_number_of_processors is not None \
                and self.min_number_of_processors == self.max_number_of_processors:
            exact = self.min_number_of_processors
        if exact is not None:  # DIRAC's job API: the exact number is also the most the job may use
            values.update(number_of_processors=exact, max_number_of_processors=exact, min_number_of_processors=None)
        elif self.max_number_of_processors is not None:  # at most N: at least one
            values["min_number_of_processors"] = self.min_number_of_processors or 1
        templates = [(attribute, field, values[field]) for attribute, field in ATTRIBUTES.items()]
        templates += [(name, f"extra_jdl[{name}]", value) for name, value in self.extra_jdl.items()]
        return templates

    @staticmethod
    def _render(lines: list[str | tuple[str, str, Any]], padded: str, index: int,
                values: Mapping[str, ParameterValue]) -> str:
        """Job `index`'s JDL: its templates filled (`%n` = `padded`, each sequence's value),
        then its `Parameter`(`.name`) and `ParameterNumber` lines."""
        def fill(text: str) -> str:
            text = text.replace("%n", padded)
            for key, value in values.items():
                text = text.replace("%s" if key == "" else f"%({key})s", _as_text(value))
            return text

        def fill_items(items: list[Any]) -> Iterator[Any]:
            for item in items:
                if not isinstance(item, str):
                    yield item
                    continue
                whole = item.replace("%n", padded)
                key = "" if whole == "%s" else whole[2:-2] if _NAMED_PLACEHOLDER.fullmatch(whole) else None
                if key is not None and isinstance(values.get(key), list):
                    yield from values[key]  # a list value fills the whole item with its items, as DIRAC splices
                else:
                    yield fill(item)

        written = []
        for line in lines:
            if isinstance(line, str):
                written.append(line)
                continue
            attribute, field, value = line
            value = fill(value) if isinstance(value, str) else list(fill_items(value))
            if value != "" and value != []:
                written.append(_line(attribute, field, value))
        for key, value in values.items():
            # commas allowed: a value may hold them for Arguments; DiracX then stores Parameter as a
            # list, as it does for DIRAC's own expansion
            written.append(_line("Parameter" if key == "" else f"Parameter.{key}",
                                 "parameters" if key == "" else f"named_parameters[{key}]",
                                 value if isinstance(value, list) else str(value), commas=True))
        written.append(f"ParameterNumber = {index};")
        return "\n".join(written)


def parse_jdl(text: str) -> dict[str, JDLValue | list[Any]]:
    """The attributes of a JDL (`Name = value;` …, optionally in `[ ]`): strings, numbers,
    booleans, bare words (as strings) and lists (of lists). Nested ClassAds are refused."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    attributes: dict[str, Any] = {}
    for statement in _split(body, ";"):
        if not statement.strip():
            continue
        name, equals, value = statement.partition("=")
        name = name.strip()
        if not equals or not _ATTRIBUTE.fullmatch(name):
            raise ValueError(f"JDL: {statement.strip()[:60]!r} is not an attribute (Name = value;)")
        if name in attributes:
            raise ValueError(f"JDL: {name} is given twice")
        attributes[name] = _parse_value(name, value.strip())
    return attributes


def _split(text: str, separator: str) -> list[str]:
    """`text` cut at `separator` outside quotes and braces."""
    parts, current, depth, quoted = [], [], 0, False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "{":
            depth += 1
        elif not quoted and char == "}":
            depth -= 1
        if char == separator and not quoted and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted or depth:
        raise ValueError(f"JDL: unbalanced quotes or braces in {text.strip()[:60]!r}")
    parts.append("".join(current))
    return parts


def _parse_value(name: str, value: str) -> Any:
    if not value:
        raise ValueError(f"JDL: {name} has no value")
    if value.startswith("["):
        raise ValueError(f"JDL: {name}: nested ClassAds are not supported")
    if value.startswith("{"):
        if not value.endswith("}"):
            raise ValueError(f"JDL: {name}: a list must end with '}}'")
        return [_parse_value(name, item.strip()) for item in _split(value[1:-1], ",") if item.strip()]
    if value.startswith('"'):
        if not value.endswith('"') or len(value) < 2 or '"' in value[1:-1]:
            raise ValueError(f"JDL: {name}: {value[:60]!r} is not one quoted string")
        return value[1:-1]
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for number in (int, float):
        try:
            return number(value)
        except ValueError:
            pass
    return value  # a bare word, as DIRAC reads it (JobName = Name;)

