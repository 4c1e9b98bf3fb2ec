"""What real WPS servers and DataMiner send, end to end against the local DataMiner
(PyWPS 4.8 behind a DataMiner-like front, its result block written as gCube's template
writes it: tests/data/dataminer/README.md): required inputs, allowed ranges, bounding
boxes, references POSTed with a body, and DataMiner's result block."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from prefect_egi.tasks import InputValidationError, WatchPolicy

FAST = WatchPolicy(first_interval=0.2, max_interval=1.0, error_backoff=0.2, max_error_backoff=1.0)
GET_FEATURE = ('<wfs:GetFeature xmlns:wfs="http://www.opengis.net/wfs" service="WFS" version="1.1.0" '
               'outputFormat="csv"><wfs:Query typeName="sample:stations"/></wfs:GetFeature>')


def run(coro):
    return asyncio.run(coro)


def run_algorithm(dataminer, process, inputs, destination):
    from prefect_egi.tasks import run_algorithm as task

    return run(task.fn(dataminer.block(), process, inputs, destination=str(destination), policy=FAST))


def test_a_required_table_left_out_is_refused_before_anything_is_sent(dataminer):
    """PyWPS answers MissingParameterValue to an Execute without its required table; the
    client sent it, taking the table for optional (its default *format* read as a default)."""
    from prefect_egi.tasks import describe_process
    from prefect_egi.tasks.dataminer.tasks import submit_execution

    table = run(describe_process.fn(dataminer.block(), "CSV_SUMMARY")).input("table")
    assert (table.required, table.default, table.mime_types) == (True, None, ("text/csv",))
    with pytest.raises(InputValidationError) as caught:
        run(submit_execution(dataminer.block(), "CSV_SUMMARY", {}))
    assert caught.value.problems == ["table: missing (complex input, required)"]
    assert "post-execute" not in dataminer.stats()


def test_a_value_in_a_second_allowed_range_is_accepted(dataminer, tmp_path):
    """PyWPS describes `level` with two ranges, 1–10 and 100–200: 150 is allowed (the
    client kept only the first range and refused it), 50 is not."""
    from prefect_egi.tasks import describe_process
    from prefect_egi.tasks.dataminer.tasks import submit_execution

    level = run(describe_process.fn(dataminer.block(), "LEVEL_CHECK")).input("level")
    assert [(r.minimum, r.maximum, r.closure) for r in level.allowed_ranges] == [
        (1.0, 10.0, "closed"), (100.0, 200.0, "closed")]
    result = run_algorithm(dataminer, "LEVEL_CHECK", {"level": 150}, tmp_path)
    assert result.literals == {"level": 150}
    with pytest.raises(InputValidationError) as caught:
        run(submit_execution(dataminer.block(), "LEVEL_CHECK", {"level": 50}))
    assert caught.value.problems == ["level: 50 is outside the allowed ranges 1…10, 100…200"]
    assert dataminer.stats()["post-execute"] == 1


def test_a_bounding_box_goes_in_and_comes_back(dataminer, tmp_path):
    """BOUNDING_BOX takes a BoundingBoxData input and returns a BoundingBoxOutput and the
    box's area (a literal)."""
    from prefect_egi.tasks import BoundingBox, describe_process

    described = run(describe_process.fn(dataminer.block(), "BOUNDING_BOX"))
    assert described.input("bbox").crs == ("epsg:4326", "epsg:3035")
    assert [(o.identifier, o.kind) for o in described.outputs] == [
        ("bbox", "bbox"), ("area", "literal"), ("non_deterministic_output", "complex")]
    box = BoundingBox((4321000.0, 3210000.0), (4322000.0, 3212000.0), crs="EPSG:3035")
    result = run_algorithm(dataminer, "BOUNDING_BOX", {"bbox": box}, tmp_path)
    assert result.state == "succeeded" and set(result.literals) == {"bbox", "area"}
    assert result.literals["area"] == 2_000_000.0
    back = result.literals["bbox"]
    assert isinstance(back, BoundingBox) and "3035" in back.crs
    # PyWPS reads EPSG axes in their declared order (3035: northing first) and writes x first
    assert sorted(back.lower + back.upper) == sorted(box.lower + box.upper)
    assert not result.files


def test_a_table_fetched_by_a_post_request_with_a_body(dataminer, tmp_path):
    """The table is a WFS GetFeature POSTed by the server to another host (as USGS' portal
    sends feature collections, tests/data/dataminer/wps_USGSExecuteRequest1.xml); a GET
    to the same URL is an error there."""
    from prefect_egi.tasks import Reference

    wfs = dataminer.process.info["wfs_url"]
    result = run_algorithm(dataminer, "CSV_SUMMARY",
                           {"table": Reference(wfs, body=GET_FEATURE, mime_type="text/csv")}, tmp_path)
    assert result.state == "succeeded", result.message
    summary = next(f for f in result.files if f.name == "summary.csv")
    assert Path(summary.path).read_text().splitlines() == ["column,count,sum", "depth,3,60", "temperature,3,33"]
    stats = dataminer.stats()
    assert stats["wfs-post"] == 1 and "wfs-get" not in stats
    assert stats["foreign_credentials"] == []


def test_dataminer_values_reach_the_literals(dataminer, tmp_path):
    """CSV_CORRELATION returns values only: DataMiner writes each value itself into its
    result block, as text/plain, where a file would have its URL (gCube's
    OutputsManager). They are values, not files to download; the log is a file."""
    table = tmp_path / "xy.csv"
    table.write_text("x,y\n1,2\n2,4\n3,7\n")
    result = run_algorithm(dataminer, "CSV_CORRELATION", {"table": table}, tmp_path / "out")
    assert result.state == "succeeded"
    assert result.literals == {"Pearson correlation": "0.9934", "Rows": "3"}
    assert [(f.name, f.description, f.mime_type, f.error) for f in result.files] == [
        ("01-" + Path(result.files[0].url).name, "Log of the computation", "text/plain", None)]
    assert Path(result.files[0].path).read_text() == "correlated x and y over 3 rows\n"
    assert "| Pearson correlation | `0.9934` |" in result.markdown()


def test_a_declared_file_listed_again_in_the_result_block_is_downloaded_once(dataminer, tmp_path):
    """DataMiner lists each declared file output a second time in its result block (its
    description: the output's title): CSV_SUMMARY's `summary`. One download, under the
    output's own name; the block's other files keep their numbers."""
    table = tmp_path / "in.csv"
    table.write_text("a,b\n1,2\n3,4\n")
    result = run_algorithm(dataminer, "CSV_SUMMARY", {"table": table}, tmp_path / "out")
    assert [f.name[:3] for f in result.files] == ["sum", "01-", "02-", "03-"]
    assert [f.description for f in result.files[1:]] == [
        "Log of the computation", "Summary table", "Copy on the shared storage"]
    assert all(f.path and f.error is None for f in result.files)
    assert dataminer.stats()["output"] == 3  # summary, log, summary table: each once (the copy is elsewhere)


def test_an_empty_result_block_adds_no_literal(dataminer, tmp_path):
    """Every DataMiner algorithm declares the result block; FAST_ECHO writes nothing there
    (gCube's template then returns no document): the literals are the algorithm's own."""
    result = run_algorithm(dataminer, "FAST_ECHO", {"text": "hi"}, tmp_path)
    assert result.literals == {"result": "hi | tags= | scale=1"}
    assert result.files == []
