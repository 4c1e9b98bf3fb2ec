"""DIRAC job descriptions against DIRAC's own documents, parsers and server.

Documents: the JDLs in tests/data/dirac/ (their sources in its README.md) — DIRAC's
tutorials and JDL unit tests, DIRAC's job API outputs, DiracX's router test JDLs. Each
is expanded by DIRAC's own code (DIRACCommon's `generateParametricJobs`, which DiracX runs
on a parametric JDL) and by `DiracJob`, and both are read back with DIRAC's ClassAd parser
(what DiracX reads JDLs with); the DiracX peer (the real DiracX 0.7 server) stores both.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import uuid
import zlib
from pathlib import Path

import pytest
from DIRACCommon.Core.Utilities.ClassAd.ClassAdLight import ClassAd
from DIRACCommon.Core.Utilities.JDL import loadJDLAsCFG
from DIRACCommon.WorkloadManagementSystem.Utilities.ParametricJob import (
    generateParametricJobs,
    getParameterVectorLength,
)
from pydantic import ValidationError

from prefect_egi.tasks import DiracJob, ParameterSequence
from prefect_egi.tasks.dirac.tasks import submit

DATA = Path(__file__).parent / "data" / "dirac"
UPLOADED = "SB:SandboxSE|/S3/sandboxes/egi.test/egi_user/alice/sha256:0.tar.zst"  # what an upload returns
#: local files the documents' InputSandbox names
LOCAL_FILES = ("testJob.sh", "testParametericJob.sh", "jobDescription.xml")


def run(coro):
    return asyncio.run(coro)


def document(name: str) -> str:
    return (DATA / name).read_text()


def classad(jdl: str) -> ClassAd:
    body = jdl.strip()
    return ClassAd(body if body.startswith("[") else f"[{body}]")


def read_back(jdl: str) -> dict[str, list[str]]:
    """Every attribute as DIRAC's ClassAd parser reads it: a list as a list, a scalar as a
    list of one (DIRAC reads list attributes given as a scalar the same way)."""
    ad = classad(jdl)
    return {name: ad.getListFromExpression(name) if ad.isAttributeList(name) else [ad.getAttributeString(name)]
            for name in ad.getAttributes()}


def dirac_expansion(jdl: str) -> list[str]:
    """The jobs DIRAC makes of `jdl` (DiracX runs this on a parametric JDL it is sent)."""
    ad = classad(jdl)
    count = getParameterVectorLength(ad)
    assert count["OK"], count["Message"]
    if not count["Value"]:
        return [ad.asJDL()]
    expanded = generateParametricJobs(ad)
    assert expanded["OK"], expanded["Message"]
    return expanded["Value"]


def with_local_files(folder: Path) -> Path:
    for name in LOCAL_FILES:
        (folder / name).write_text("#!/bin/sh\necho hi\n")
    return folder


def as_dirac_submits(attributes: dict[str, list[str]]) -> dict[str, list[str]]:
    """What `dirac-wms-job-submit` sends for a JDL DIRAC expanded: its local input sandbox files
    uploaded and replaced by the sandbox's SB: reference (we upload them once, for every job);
    `Site = ANY` is no site at all (DIRAC's job API leaves it out)."""
    expected = dict(attributes)
    if "InputSandbox" in expected:
        references = [p for p in expected["InputSandbox"] if p.startswith(("SB:", "LFN:"))]
        expected["InputSandbox"] = [UPLOADED, *references]
    if expected.get("Site") == ["ANY"]:
        del expected["Site"]
    return expected


EXPANDED_DOCUMENTS = [
    "dirac-tutorial-parametric-list.jdl", "dirac-tutorial-parametric-sequence.jdl",
    "dirac-parametricjob-simple.jdl", "dirac-parametricjob-bunch.jdl", "dirac-parametricjob-progression.jdl",
    "dirac-parametricjob-multi.jdl", "dirac-parametricjob-no-parameters.jdl", "dirac-jobapi-testWF.jdl",
    "diracx-routers-test-parametric.jdl", "diracx-routers-test.jdl", "dirac-tutorial-simple.jdl",
    "dirac-tutorial-sandboxes.jdl", "dirac-tutorial-lfn-inputsandbox.jdl", "dirac-tutorial-lfn-inputdata.jdl",
]


@pytest.mark.parametrize("name", EXPANDED_DOCUMENTS)
def test_documents_become_the_jobs_dirac_makes_of_them(name, tmp_path):
    """Each document (tests/data/dirac/README.md) read by `DiracJob.from_jdl` gives, job for job,
    every attribute DIRAC's own expansion gives — `%s`, `%(name)s` and `%n` everywhere,
    `Parameter`(`.name`), `ParameterNumber`, Start/Step/Factor sequences, lists of lists —
    as DIRAC's ClassAd parser reads them back."""
    text = document(name)
    job = DiracJob.from_jdl(text, folder=with_local_files(tmp_path))
    theirs = [as_dirac_submits(read_back(jdl)) for jdl in dirac_expansion(text)]
    ours = [read_back(jdl) for jdl in job.to_jdls(UPLOADED if job.local_inputs() else None)]
    if not job.local_inputs():
        theirs = [{k: v for k, v in t.items() if k != "InputSandbox" or v != [UPLOADED]} for t in theirs]
    assert len(ours) == len(theirs) == job.job_count()
    assert ours == theirs


def test_the_tutorials_parametric_job_described_in_fields(tmp_path):
    """DIRAC's JobManagementAdvanced tutorial (dirac-tutorial-parametric-list.jdl) with
    `StdOutput = "StdOut_%s"` and `JobName = "%n_parametric"`: the same job given as fields
    makes the jobs DIRAC makes of the document (before, `%s` was replaced only in Arguments
    and JobName, `%n` nowhere, and `ParameterNumber` was missing)."""
    script = with_local_files(tmp_path) / "testJob.sh"
    job = DiracJob(executable="testJob.sh", job_name="%n_parametric", arguments="%s",
                   parameters=["first", "second", "third", "fourth", "fifth"], stdout="StdOut_%s",
                   stderr="StdErr_%s", input_sandbox=[str(script)], output_sandbox=["StdOut_%s", "StdErr_%s"])
    theirs = [as_dirac_submits(read_back(j)) for j in dirac_expansion(document("dirac-tutorial-parametric-list.jdl"))]
    ours = [read_back(j) for j in job.to_jdls(UPLOADED)]
    assert ours == theirs
    assert ours[3]["JobName"] == ["3_parametric"] and ours[3]["StdOutput"] == ["StdOut_fourth"]
    assert ours[3]["ParameterNumber"] == ["3"]


def test_sequences_and_named_lists_as_dirac_counts_them():
    """DIRAC's ParametricJob unit test (dirac-parametricjob-multi.jdl): `Parameters = 3`,
    `ParameterStart.A = 1; ParameterStep.A = 1; ParameterFactor.A = 2`, `Parameters.B = {a, b, c}`
    give Arguments "1 a", "3 b", "7 c"; %n is zero-padded to the width of the last index."""
    job = DiracJob(executable="my_executable", arguments="%(A)s %(B)s", job_name="Test_%n", number_of_parameters=3,
                   named_parameters={"A": ParameterSequence(start=1, step=1, factor=2), "B": ["a", "b", "c"]})
    jobs = [read_back(j) for j in job.to_jdls()]
    assert [j["Arguments"] for j in jobs] == [["1 a"], ["3 b"], ["7 c"]]
    assert [j["Parameter.A"] for j in jobs] == [["1"], ["3"], ["7"]] and jobs[2]["Parameter.B"] == ["c"]
    wide = DiracJob(executable="x", job_name="run-%n", parameters=ParameterSequence(start=0.5, step=0.5),
                    number_of_parameters=11)
    names = [read_back(j)["JobName"][0] for j in wide.to_jdls()]
    assert names[0] == "run-00" and names[10] == "run-10"
    assert read_back(wide.to_jdls()[1])["Parameter"] == ["1.0"]  # 0.5 + 0.5, a float as DIRAC writes it


def test_a_single_site_is_written_as_a_scalar_dirac_reads_back():
    """DIRAC's job API writes one destination site as a scalar (Test_JobAPI's setDestination
    cases); a one-item list `Site = {"X"}` is read by DIRAC's parser (the Site column DIRAC's
    JobDB fills with `getAttributeString("Site")`) as the site `{X}`. Several sites stay a list."""
    (one,) = DiracJob(executable="x", site=["LCG.CERN.cern"]).to_jdls()
    assert classad(one).getAttributeString("Site") == "LCG.CERN.cern"
    (many,) = DiracJob(executable="x", site="LCG.CERN.cern", banned_sites=["A.B.c", "D.E.f"]).to_jdls()
    assert read_back(many)["BannedSites"] == ["A.B.c", "D.E.f"]
    assert classad(many).getAttributeString("Site") == "LCG.CERN.cern"
    (anywhere,) = DiracJob(executable="x", site=["ANY"]).to_jdls()
    assert "Site" not in read_back(anywhere)  # DIRAC's job API leaves "ANY" out


RICH = dict(
    executable="analyse.sh", arguments="--in %s --seed %(seed)s", job_name="ana-%n", job_type="User", priority=3,
    log_level="debug", input_data=["/egi.test/user/a/alice/in-%s.csv"], output_data=["out.csv"],
    output_se=["SE-USER", "SE-DISK"], output_path="results/run1", site=["EGI.CESGA.es"], banned_sites=["EGI.BAD.xx"],
    cpu_time=3600, tags=["GPU", "8GB"], min_number_of_processors=2, max_number_of_processors=8,
    parameters=["a", "b"], named_parameters={"seed": [11, 12]},
    extra_jdl={"InputDataPolicy": "DIRAC.WorkloadManagementSystem.Client.DownloadInputData",
               "GridCE": "ce.example.org", "ExecutionEnvironment": ["MODE=%s", "N=2"]},
)


def test_every_attribute_reads_back_through_diracs_parsers():
    """The attributes real JDLs use (DIRAC's JDL reference and job API): JobType, Priority,
    LogLevel, InputData, OutputData, OutputSE, OutputPath, Tags, processors, named lists and
    any other attribute (`extra_jdl`), read back by both parsers DiracX runs on a JDL
    (DIRACCommon's JobManifest CFG loader, then its ClassAd)."""
    second = DiracJob(**RICH).to_jdls()[1]
    ad = read_back(second)
    assert ad["Arguments"] == ["--in b --seed 12"] and ad["JobName"] == ["ana-1"]
    assert ad["JobType"] == ["User"] and ad["Priority"] == ["3"] and ad["LogLevel"] == ["DEBUG"]
    assert ad["InputData"] == ["/egi.test/user/a/alice/in-b.csv"] and ad["OutputData"] == ["out.csv"]
    assert ad["OutputSE"] == ["SE-USER", "SE-DISK"] and ad["OutputPath"] == ["results/run1"]
    assert ad["Tags"] == ["GPU", "8GB"] and ad["CPUTime"] == ["3600"]
    assert (ad["MinNumberOfProcessors"], ad["MaxNumberOfProcessors"]) == (["2"], ["8"])
    assert ad["ExecutionEnvironment"] == ["MODE=b", "N=2"] and ad["GridCE"] == ["ce.example.org"]
    assert (ad["Parameter"], ad["Parameter.seed"], ad["ParameterNumber"]) == (["b"], ["12"], ["1"])
    manifest = loadJDLAsCFG(f"[{second}]")
    assert manifest["OK"], manifest["Message"]
    cfg = manifest["Value"][0]
    assert cfg["JobName"] == "ana-1" and cfg["OutputSE"] == "SE-USER, SE-DISK" and cfg["Priority"] == "3"


@pytest.mark.parametrize(("fields", "expected"), [
    ({"number_of_processors": 4}, {"NumberOfProcessors": ["4"], "MaxNumberOfProcessors": ["4"]}),
    ({"min_number_of_processors": 2, "max_number_of_processors": 8},
     {"MinNumberOfProcessors": ["2"], "MaxNumberOfProcessors": ["8"]}),
    ({"min_number_of_processors": 1}, {"MinNumberOfProcessors": ["1"]}),
    ({"max_number_of_processors": 8}, {"MinNumberOfProcessors": ["1"], "MaxNumberOfProcessors": ["8"]}),
    ({"min_number_of_processors": 8, "max_number_of_processors": 8},
     {"NumberOfProcessors": ["8"], "MaxNumberOfProcessors": ["8"]}),
])
def test_processors_as_diracs_job_api_writes_them(fields, expected):
    """DIRAC's `Job.setNumberOfProcessors` cases (Test_JobAPI.test_setNumberOfProcessors_successful)."""
    (jdl,) = DiracJob(executable="x", **fields).to_jdls()
    written = {k: v for k, v in read_back(jdl).items() if "NumberOfProcessors" in k}
    assert written == expected


@pytest.mark.parametrize(("fields", "message"), [
    ({"arguments": "a;b"}, "arguments: 'a;b' cannot be written into JDL: no ';'"),
    ({"arguments": "--range [1,2]"}, r"arguments: .* no '\['"),
    ({"job_name": "a,b"}, "job_name: 'a,b' cannot be written into JDL: no ','"),
    ({"job_name": "  "}, "job_name: give the jobs a name"),
    ({"output_sandbox": ["my file.txt"]}, "output_sandbox: 'my file.txt' .* no spaces"),
    ({"job_group": "g-%j"}, "job_group: no %j"),
    ({"arguments": "%(sed)s", "named_parameters": {"seed": [1]}}, r"arguments: %\(sed\)s names no sequence"),
    ({"parameters": [1, 2], "named_parameters": {"b": [1, 2, 3]}}, "the sequences differ in length"),
    ({"parameters": ParameterSequence(start=0, step=1)}, "number_of_parameters: give the number of jobs"),
    ({"parameters": ["x%sy"]}, r"parameters\[0\]: 'x%sy': a value is put in as it is"),
    ({"job_name": "n-%s", "parameters": ["a,b"]}, "job_name: 'n-a,b' cannot be written into JDL: no ','"),
    ({"number_of_processors": 4, "max_number_of_processors": 8}, "number_of_processors: give either"),
    ({"min_number_of_processors": 8, "max_number_of_processors": 4}, "max_number_of_processors: 4 is less"),
    ({"log_level": "chatty"}, "log_level: 'chatty' is not a DIRAC log level"),
    ({"priority": 11}, "priority"),
    ({"input_data": ["data.txt"]}, "input_data: 'data.txt' is not an LFN"),
    ({"extra_jdl": {"JobName": "x"}}, "extra_jdl: JobName is the field job_name"),
    ({"extra_jdl": {"Owner": "eve"}}, "extra_jdl: Owner cannot be set: DiracX sets it"),
    ({"extra_jdl": {"Parameters.x": [1]}}, "extra_jdl: Parameters.x: give sequences as parameters"),
    ({"named_parameters": {"a.b": [1]}}, "named_parameters: 'a.b' is not a parameter name"),
])
def test_bad_values_are_refused_naming_the_field(fields, message):
    """What DiracX 0.7 does with such values (see the quirks test below and jdl.py): nothing
    is sent, the error names the field and the fix."""
    with pytest.raises(ValidationError, match=message):
        DiracJob(executable="x", **fields)


@pytest.mark.parametrize(("name", "message"), [
    ("dirac-jobapi-testWFSIO.jdl", "Owner: DiracX sets it from your credentials; remove it from the JDL"),
    ("dirac-parametricjob-multi-bad.jdl", r"the sequences differ in length \(named_parameters\[B\]: 4, "
                                          r"number_of_parameters: 3\)"),
])
def test_documents_dirac_would_refuse_are_refused(name, message):
    """DIRAC's job API output with Owner/OwnerGroup (a job whose owner differs from the
    submitter's token fails 'Wrong Owner in JDL') and DIRAC's inconsistent parametric JDL."""
    with pytest.raises((ValueError, ValidationError), match=message):
        DiracJob.from_jdl(document(name))


# -- on the real server -------------------------------------------------------------------------


def stored(diracx, ids: list[int]) -> dict[int, dict[str, list[str]]]:
    """What the DiracX peer stored as each job's JDL (its JobDB, after its own checks), read back."""
    database = Path(diracx.process.info["workdir"]) / "db" / "jobdb.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute(f"SELECT JobID, JDL FROM JobJDLs WHERE JobID IN ({','.join('?' * len(ids))})",
                                  [int(i) for i in ids]).fetchall()
    jdls = {}
    for job_id, jdl in rows:
        text = jdl.decode() if isinstance(jdl, bytes) else jdl
        jdls[int(job_id)] = read_back(text if text.startswith("[") else zlib.decompress(base64.b64decode(text)).decode())
    return jdls


def attributes(diracx, ids: list[int]) -> list[dict]:
    async def search():
        async with diracx.block().client().session() as api:
            return await api.jobs.search(parameters=None, search=[
                {"parameter": "JobID", "operator": "in", "values": ids}], per_page=1000)

    return sorted(run(search()), key=lambda row: row["JobID"])


def comparable(jdl: dict[str, list[str]]) -> dict[str, list[str]]:
    """A stored JDL without what differs between any two jobs (ids, sandbox, the group)."""
    return {k: v for k, v in jdl.items() if k not in ("JobID", "JobRequirements", "InputSandbox", "JobGroup")}


@pytest.mark.parametrize("name", ["dirac-tutorial-parametric-list.jdl", "dirac-tutorial-parametric-sequence.jdl",
                                  "dirac-parametricjob-multi.jdl"])
def test_the_server_stores_our_jobs_as_it_stores_its_own_expansion(diracx, name, tmp_path):
    """The document sent as ONE parametric JDL makes DiracX expand it itself (its jobs stay
    `Submitting`); our expansion of the same document, sent as ordinary jobs, is stored with
    the same attributes, job for job (the peer's JobDB read back)."""
    group = f"doc-{uuid.uuid4().hex[:6]}"
    text = document(name).strip().rstrip("]").lstrip("[").strip() + f'\nJobGroup = "{group}-dirac";'

    async def dirac_expands() -> list[int]:
        async with diracx.block().client().session() as api:
            return [j.job_id for j in await api.jobs.submit_jdl_jobs([text])]

    theirs = run(dirac_expands())
    job = DiracJob.from_jdl(document(name), folder=with_local_files(tmp_path)).model_copy(
        update={"job_group": f"{group}-ours"})
    ours = run(submit(diracx.block(), [job]))
    assert len(ours) == len(theirs) == job.job_count()
    their_jdls, our_jdls = stored(diracx, theirs), stored(diracx, ours)
    assert [comparable(our_jdls[j]) for j in ours] == [comparable(their_jdls[j]) for j in theirs]
    their_rows, our_rows = attributes(diracx, theirs), attributes(diracx, ours)
    assert [r["JobName"] for r in our_rows] == [r["JobName"] for r in their_rows]
    assert {r["Status"] for r in their_rows} == {"Submitting"} and {r["Status"] for r in our_rows} == {"Received"}


def test_the_server_keeps_every_attribute(diracx):
    """The rich description submitted: DiracX stores JobType, UserPriority (from Priority),
    Site, JobName and JobGroup in its job table, and the rest in the JDL it keeps."""
    job = DiracJob(**{**RICH, "job_group": f"rich-{uuid.uuid4().hex[:6]}"})
    ids = run(submit(diracx.block(), [job]))
    rows = attributes(diracx, ids)
    assert [(r["JobName"], r["JobType"], r["UserPriority"], r["Site"]) for r in rows] == [
        ("ana-0", "User", 3, "EGI.CESGA.es"), ("ana-1", "User", 3, "EGI.CESGA.es")]
    kept = stored(diracx, ids)[ids[1]]
    for name in ("LogLevel", "InputData", "OutputData", "OutputSE", "OutputPath", "Tags", "BannedSites",
                 "MinNumberOfProcessors", "MaxNumberOfProcessors", "InputDataPolicy", "GridCE",
                 "ExecutionEnvironment", "Parameter", "Parameter.seed", "ParameterNumber"):
        assert kept[name] == read_back(job.to_jdls()[1])[name], name


def test_a_platform_refusal_says_what_to_do(diracx):
    """DiracX 0.7 refuses every JDL with a Platform with 400 "JDL syntax error" (its platform
    check fails: no compatible platform configured, or — when there is one — a TypeError in
    DIRACCommon's checkAndPrepareJob); the error says so instead of blaming the syntax."""
    from prefect_egi.tasks import SubmissionIncomplete

    job = DiracJob(executable="echo", platform="Linux_x86_64_glibc-2.17", job_group=f"p-{uuid.uuid4().hex[:6]}")
    with pytest.raises(SubmissionIncomplete, match="HTTP 400: JDL syntax error .*every JDL with a Platform"):
        run(submit(diracx.block(), [job]))


def test_the_server_quirks_the_checks_guard_against(diracx):
    """Why `;` and `,` are refused (jdl.py): DiracX 0.7 takes these JDLs and stores them
    wrong. After `Arguments = "a;b"` the JobName is lost (`Unknown`) — and so is the name of
    the other job sent in the same call (the other way round the whole call is refused as a
    "JDL syntax error"); `JobName = "a,b"` is stored as a list. Such jobs could never be found
    again by their names. (A `[` is not sent here: the server's parser never finishes on it.)"""
    group = f"q-{uuid.uuid4().hex[:6]}"

    async def send(*jdls: str) -> list[int]:
        async with diracx.block().client().session() as api:
            return [j.job_id for j in await api.jobs.submit_jdl_jobs(list(jdls))]

    semicolon = run(send(f'Executable = "echo";\nArguments = "a;b";\nJobName = "kept";\nJobGroup = "{group}";',
                         f'Executable = "echo";\nJobName = "neighbour";\nJobGroup = "{group}";'))
    assert [r["JobName"] for r in attributes(diracx, semicolon)] == ["Unknown", "Unknown"]
    (comma,) = attributes(diracx, run(send(f'Executable = "echo";\nJobName = "a,b";\nJobGroup = "{group}";')))
    assert comma["JobName"].startswith("{") and comma["JobName"].replace(" ", "") == "{a,b}"
