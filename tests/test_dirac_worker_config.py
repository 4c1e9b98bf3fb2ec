"""The `dirac` worker's job variables and job files, without a server: what is refused
before anything is submitted, what the pool's form holds, and what the job's script does
(run here with bash, as the node runs it)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from prefect_egi.tasks import DiracJobConfiguration, DiracVariables, DiracWorker, on_dirac
from prefect_egi.tasks.dirac.jdl import site_name_problem
from prefect_egi.tasks.dirac.worker import ENV_FILE, SCRIPT, SETUP_FAILED_EXIT, write_job_files

DATA = Path(__file__).parent / "data" / "dirac"


def real_site_names() -> list[str]:
    return [line.strip() for line in (DATA / "egi-dirac-sites.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_every_site_name_of_egis_dirac_service_is_accepted():
    """The 65 European site names EGI's DIRAC service reports (see the data file's header)."""
    names = real_site_names()
    assert len(names) == 65
    assert [n for n in names if site_name_problem(n)] == []
    DiracVariables(site=names[:3], banned_sites=names[3:5])


@pytest.mark.parametrize("name", ["CERN", "EGI.SARA", "EGI..nl", "EGI.SARA.nl;rm", "EGI SARA nl", ".EGI.SARA.nl"])
def test_a_name_that_is_not_a_dirac_site_is_refused_naming_the_field(name):
    with pytest.raises(ValidationError, match="site: .* is not a DIRAC site name"):
        DiracVariables(site=[name])
    with pytest.raises(ValidationError, match="banned_sites: .* is not a DIRAC site name"):
        DiracJobConfiguration(banned_sites=[name])


def test_the_pools_schema_carries_the_same_site_rule_the_server_checks():
    import re

    schema = DiracWorker.get_default_base_job_template()["variables"]["properties"]
    pattern = re.compile(schema["site"]["items"]["pattern"])
    names = real_site_names()
    assert all(pattern.match(n) for n in names)
    assert not pattern.match("CERN") and not pattern.match("EGI.SARA")


@pytest.mark.parametrize("bad, field", [({"cpu_time": -1}, "cpu_time"), ({"cpu_time": 0}, "cpu_time"),
                                        ({"priority": 11}, "priority"), ({"site": ["CERN"]}, "site")])
def test_the_decorator_refuses_bad_variables_before_binding(bad, field):
    with pytest.raises(ValueError, match=field):
        on_dirac(work_pool="grid", **bad)


def test_the_decorator_names_an_unknown_variable_and_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"setup: not a job variable of a dirac pool \(.*setup_command"):
        on_dirac(work_pool="grid", setup="source x")


def test_an_extra_input_file_must_exist_on_the_workers_machine(tmp_path):
    with pytest.raises(ValidationError, match="input_sandbox: .*missing.py is not a file on the worker's machine"):
        DiracJobConfiguration(input_sandbox=[str(tmp_path / "missing.py")])


def test_the_job_configuration_template_fills_every_field_from_its_variable():
    template = DiracWorker.get_default_base_job_template()
    configuration, variables = template["job_configuration"], template["variables"]["properties"]
    for name in ("diracx_block", "site", "banned_sites", "cpu_time", "tags", "platform", "priority", "job_group",
                 "setup_command", "input_sandbox", "output_sandbox", "fetch_outputs_to"):
        assert configuration[name] == "{{ " + name + " }}" and name in variables


def _files(tmp_path: Path, **fields) -> tuple[Path, list[Path]]:
    folder = tmp_path / "job"
    folder.mkdir()
    configuration = DiracJobConfiguration(env={"PREFECT_API_URL": "http://api.example/api",
                                               "PREFECT_API_KEY": "pnu_secret value's"}, **fields)
    return folder, write_job_files(folder, configuration)


def test_the_environment_file_is_private_and_the_script_deletes_it_before_the_setup_runs(tmp_path):
    folder, files = _files(tmp_path, setup_command="test ! -e prefect-egi.env && echo setup-saw-no-env-file",
                           command="python3 -c \"import os; print('key=' + os.environ['PREFECT_API_KEY'])\"")
    env_file = folder / ENV_FILE
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / SCRIPT).stat().st_mode) == 0o755
    done = subprocess.run(["bash", str(folder / SCRIPT)], cwd=folder, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    assert "key=pnu_secret value's" in done.stdout  # quoted as the shell reads it back
    assert "setup-saw-no-env-file" in done.stdout  # gone before the setup command ran
    assert not env_file.exists()
    assert "pnu_secret" not in (folder / SCRIPT).read_text()  # the script itself holds no secret


def test_a_failing_setup_command_ends_the_job_with_its_own_exit_code_and_the_shells_words(tmp_path):
    folder, _ = _files(tmp_path, setup_command="no-such-setup-tool --init", command="echo never")
    done = subprocess.run(["bash", str(folder / SCRIPT)], cwd=folder, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"]})
    assert done.returncode == SETUP_FAILED_EXIT
    assert "no-such-setup-tool: command not found" in done.stderr
    assert "the setup command failed (exit 127)" in done.stderr and "never" not in done.stdout


def test_the_default_command_runs_the_engine_in_the_jobs_folder(tmp_path):
    folder, _ = _files(tmp_path)
    script = (folder / SCRIPT).read_text()
    assert script.rstrip().endswith("exec python -m prefect.engine")
