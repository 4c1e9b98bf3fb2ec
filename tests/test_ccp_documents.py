"""The CCP client's readers against real OGC API – Processes documents, as the OGC publishes
them (tests/data/ccp/README.md names each file's repository, path and commit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect_egi.tasks.ccp.client import (
    JobInfo,
    ProcessDescription,
    ProcessSummary,
    Results,
    next_link,
)
from prefect_egi.tasks.remote import JobState

DATA = Path(__file__).parent / "data" / "ccp"


def document(name: str):
    return json.loads((DATA / name).read_text())


def test_process_list():
    """opengeospatial/ogcapi-processes core/examples/json/ProcessList.json: one summary, no next page."""
    page = document("ogc-ProcessList.json")
    [echo] = [ProcessSummary.of(item) for item in page["processes"]]
    assert echo.id == "EchoProcess" and echo.version == "1.0.0" and echo.runs_async
    assert next_link(page, "https://processing.example.org/oapi-p/processes") is None


def test_process_description_keeps_the_raw_json_schema():
    """opengeospatial/ogcapi-processes (1.0.0-maintenance) core/examples/json/ProcessDescription.json."""
    raw = document("ogc-ProcessDescription.json")
    described = ProcessDescription.of(raw)
    assert described.id == "EchoProcess"
    assert len(described.inputs) == len(raw["inputs"]) == 10 and len(described.outputs) == 10
    for name, body in raw["inputs"].items():
        assert described.inputs[name].schema == body["schema"]  # as the server sent it
    assert described.inputs["stringInput"].schema["enum"] == ["Value1", "Value2", "Value3"]
    maximum = raw["inputs"]["arrayInput"].get("maxOccurs", 1)
    assert described.inputs["arrayInput"].max_occurs == (None if maximum == "unbounded" else maximum)


@pytest.mark.parametrize("name, status, state", [("ogc-StatusInfo.json", "accepted", JobState.QUEUED),
                                                 ("ogc-StatusInfo-dismissed.json", "dismissed", JobState.CANCELLED)])
def test_status_info(name, status, state):
    """opengeospatial/ogcapi-processes core/examples/json/StatusInfo.json and StatusInfo-dismissed.json."""
    raw = document(name)
    job = JobInfo.of(raw)
    assert job.job_id == "81574318-1eb1-4d7c-af61-4b3fbcf33c4f"
    assert job.status == status and job.state is state and job.progress == raw["progress"]
    assert job.message == raw["message"] and job.marker is None
    if "created" in raw:  # "2021-05-04T10:13:00+05:00": the offset is kept
        assert job.created is not None and job.created.utcoffset().total_seconds() == 5 * 3600


def test_job_list():
    """opengeospatial/ogcapi-processes core/examples/json/JobList.json: running, successful, failed…"""
    raw = document("ogc-JobList.json")
    jobs = [JobInfo.of(item) for item in raw["jobs"]]
    assert [job.job_id for job in jobs] == [item["jobID"] for item in raw["jobs"]]
    assert jobs[0].process_id == "Voronoi" and jobs[0].state is JobState.RUNNING and jobs[0].progress == 50
    assert {job.state for job in jobs} >= {JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED}
    engine = jobs[0].as_job_status()  # what the engine's adapter hands to `watch`
    assert (engine.job_id, engine.state, engine.progress, engine.message) == (
        jobs[0].job_id, JobState.RUNNING, 50.0, "Perform step 1/2")
    assert engine.detail["status"] == "running"


def test_results_document():
    """opengeospatial/ogcapi-processes core/examples/json/Result.json: literal values, qualified
    values (with `mediaType`), an array, a bounding box and files by reference."""
    raw = document("ogc-Result.json")
    results = Results.of(raw)
    assert results.values["stringOutput"] == "Value2" and results.values["doubleOutput"] == "3.14159"
    assert results.values["arrayOutput"] == [1, 2, 3, 4, 5, 6]
    assert results.values["measureOutput"] == {"measurement": "10.3", "uom": "m",
                                               "reference": "https://ucum.org/ucum-essence.xml"}
    assert len(results.values["geometryOutput"]) == 2
    assert results.media_types["geometryOutput"].startswith("application/")
    images = [ref for ref in results.references if ref.output == "imagesOutput"]
    assert images and all(ref.href.startswith("https://www.someserver.com/") for ref in images)
    assert {ref.href for ref in images} == {item["href"] for item in raw["imagesOutput"] if "href" in item}
