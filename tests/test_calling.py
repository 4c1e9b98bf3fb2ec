"""Tasks work where users call them: every public task gives its result to a plain call
(a script, a sync flow, a notebook cell under the kernel's running event loop) and an
awaitable to `await` (async code, an async flow, a cell that awaits).

The mechanism (`prefect_egi.tasks.task_base.EgiTask`) is tested on a small task first,
then every public task of `prefect_egi.tasks` is called each way against the real peers.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ACCESS, ACCESS_PROJECT
from prefect import flow
from pydantic import SecretStr

import prefect_egi.tasks as public
from prefect_egi.tasks import EgiTask, egi_task
from prefect_egi.tasks.redaction import register_secret
from prefect_egi.tasks.task_base import called_from_async

pytestmark = pytest.mark.prefect


def in_a_cell(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run `source` the way IPython runs a cell: compiled with top-level `await` allowed,
    executed on the thread of a running event loop (the kernel's)."""
    code = compile(source, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    async def kernel() -> None:
        outcome = eval(code, namespace)  # a coroutine when the cell awaits
        if inspect.iscoroutine(outcome):
            await outcome

    asyncio.run(kernel())
    return namespace


# -- the mechanism ---------------------------------------------------------------------------------

@egi_task(name="test-double")
async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def test_who_is_calling():
    def sync_caller() -> bool:
        return called_from_async(sys._getframe(0))

    async def async_caller() -> list[bool]:
        here = [called_from_async(sys._getframe(0))]
        here += [called_from_async(sys._getframe(0)) for _ in range(1)]  # a comprehension inside
        here += list(called_from_async(sys._getframe(0)) for _ in range(1))  # a generator expression
        return here

    assert sync_caller() is False
    assert asyncio.run(async_caller()) == [True, True, True]


def test_a_plain_call_gives_the_result_everywhere(prefect_db):
    assert double(2) == 4  # a script

    @flow
    def sync_flow() -> int:
        return double(3)

    assert sync_flow() == 6

    def callback() -> int:  # sync code on the thread of a running loop (a callback, a cell)
        return double(4)

    async def under_a_running_loop() -> int:
        return callback()

    assert asyncio.run(under_a_running_loop()) == 8
    assert in_a_cell("result = double(5)", {"double": double})["result"] == 10


def test_async_callers_get_an_awaitable(prefect_db):
    async def caller() -> list[int]:
        single = await double(1)
        together = await asyncio.gather(*[double(i) for i in range(3)])
        return [single, *together]

    assert asyncio.run(caller()) == [2, 0, 2, 4]

    @flow
    async def async_flow() -> int:
        return await double(6)

    assert asyncio.run(async_flow()) == 12
    assert in_a_cell("result = await double(7)", {"double": double})["result"] == 14


def test_the_caller_can_force_either_side(prefect_db):
    async def forced() -> int:
        return double(1, _sync=True)  # a value, even here

    assert asyncio.run(forced()) == 2
    pending = double(2, _sync=False)
    assert inspect.isawaitable(pending) and asyncio.run(pending) == 4
    assert asyncio.run(double.aio(3)) == 6


def test_it_stays_a_prefect_task(prefect_db):
    quiet = double.with_options(name="test-double-quiet", retries=1)
    assert isinstance(quiet, EgiTask) and quiet.name == "test-double-quiet" and quiet.retries == 1
    assert quiet(4) == 8

    @flow
    def fan_out() -> list[int]:
        return [future.result() for future in double.map([1, 2, 3])]

    assert fan_out() == [2, 4, 6]
    assert asyncio.run(double.fn(5)) == 10


def test_only_async_functions_and_errors_are_redacted():
    with pytest.raises(TypeError, match="must be an async def"):
        egi_task(name="sync")(lambda: None)

    secret = f"a-secret-value-{uuid.uuid4().hex}"
    register_secret(secret)

    @egi_task(name="test-leaky", retries=0)
    async def leaky() -> None:
        raise RuntimeError(f"failed with {secret}")

    with pytest.raises(RuntimeError) as raised:
        asyncio.run(leaky.fn())
    assert secret not in str(raised.value) and "***" in str(raised.value)


# -- every public task, each way ---------------------------------------------------------------------

def public_tasks() -> list[str]:
    return sorted(name for name in public.__all__ if isinstance(getattr(public, name), EgiTask))


def test_every_public_task_is_dual_and_documented():
    names = public_tasks()
    assert len(names) >= 20, names
    for name in names:
        task = getattr(public, name)
        assert inspect.iscoroutinefunction(task.fn), name
        doc = inspect.getdoc(task.fn) or ""
        for section in ("Args:", "Returns:", "Raises:", "Example:"):
            assert section in doc or (section == "Args:" and not inspect.signature(task.fn).parameters), \
                f"{name}: its docstring has no {section}"


@pytest.fixture
def services(checkin, dataminer, diracx, openstack, notebooks, ccp, tmp_path):
    """Blocks for every service, and what each public task is called with (and how its result
    is checked). Each task is called three ways per test below."""
    from prefect_egi.sandbox.dirac_pilot import BatchPilot

    group = f"calls-{uuid.uuid4().hex[:6]}"
    pilot = BatchPilot(diracx.pilot, group, tmp_path / "pilot").start()
    dm = dataminer.block()
    dx = diracx.block()
    fc = public.FedCloud(checkin=checkin.credentials(), site_config_dirs=[], default_vo=ACCESS, timeout_seconds=5,
                         sites=[public.Site(name="CESNET-MCC", endpoint=openstack.info["sites"]["CESNET-MCC"]["auth_url"],
                                            projects={ACCESS: ACCESS_PROJECT})])
    hub = public.NotebooksHub(url=notebooks.info["api_url"], checkin=checkin.credentials())
    echo = public.DiracJob(executable="echo", arguments="%s", parameters=[1], job_group=group)
    fast = public.WatchPolicy(first_interval=0.3, max_interval=1.0, deadline=300)

    cc = ccp.block()

    def job_id() -> str:
        return asyncio.run(public.execute_process.fn(dm, "FAST_ECHO", {"text": uuid.uuid4().hex}))

    def ccp_job() -> str:
        return asyncio.run(public.execute_ccp_method.fn(cc, "ccp-write-files", {"count": 1}))

    def ccp_done_job() -> str:
        job = ccp_job()
        asyncio.run(public.wait_for_ccp_jobs.fn(cc, [job], fast))
        return job

    def dirac_ids() -> list[int]:
        from prefect_egi.tasks.dirac.tasks import submit

        return asyncio.run(submit(dx, [echo.model_copy(update={"job_name": f"call-{uuid.uuid4().hex[:6]}"})]))

    calls: dict[str, tuple[Callable[[], tuple], Callable[[Any], bool]]] = {
        "get_checkin_token": (lambda: (checkin.credentials(),), lambda r: r.get_secret_value().startswith("eyJ")),
        "aget_checkin_token": (lambda: (checkin.credentials(),), lambda r: isinstance(r, SecretStr)),
        "list_processes": (lambda: (dm,), lambda r: any(p.identifier.endswith("FAST_ECHO") for p in r)),
        "describe_process": (lambda: (dm, "FAST_ECHO"), lambda r: r.input("text") is not None),
        "execute_process": (lambda: (dm, "FAST_ECHO", {"text": uuid.uuid4().hex}), lambda r: r.startswith("http")),
        "wait_for_executions": (lambda: (dm, [job_id()], fast), lambda r: {s.state.value for s in r.values()}
                                == {"succeeded"}),
        "fetch_outputs": (lambda: (dm, wait_then(job_id(), dm), str(tmp_path / "dm")), lambda r: r.literals),
        "run_algorithm": (lambda: (dm, "FAST_ECHO", {"text": "hi", "times": 2}, str(tmp_path / "run"), fast),
                          lambda r: r.literals.get("result", "").startswith("hi hi")),
        "list_ccp_methods": (lambda: (cc,), lambda r: "ccp-progress" in {m.id for m in r}),
        "describe_ccp_method": (lambda: (cc, "ccp-progress"), lambda r: "steps" in r.inputs),
        "execute_ccp_method": (lambda: (cc, "ccp-progress", {"steps": 1, "seconds": 0}),
                               lambda r: isinstance(r, str) and len(r) > 8),
        "wait_for_ccp_jobs": (lambda: (cc, [ccp_job()], fast), lambda r: {s.state.value for s in r.values()}
                              == {"succeeded"}),
        "collect_ccp_results": (lambda: (cc, ccp_done_job(), str(tmp_path / "ccp")),
                                lambda r: r.values["rows"] == 1 and r.unpacked),
        "run_ccp_method": (lambda: (cc, "ccp-write-files", {"count": 2}, str(tmp_path / "ccp-run"), fast),
                           lambda r: r.values["rows"] == 3 and len(r.unpacked) == 3),
        "submit_jobs": (lambda: (dx, [echo.model_copy(update={"job_name": f"s-{uuid.uuid4().hex[:6]}"})]),
                        lambda r: len(r) == 1),
        "wait_for_jobs": (lambda: (dx, dirac_ids(), fast), lambda r: {s.state.value for s in r.values()}
                          == {"succeeded"}),
        "fetch_job_outputs": (lambda: (dx, done_ids(dx, dirac_ids(), fast), str(tmp_path / "dx")),
                              lambda r: r and r[0].path),
        "resubmit_jobs": (lambda: (dx, dirac_ids(), 1), lambda r: len(r) == 1),
        "kill_jobs": (lambda: (dx, dirac_ids()), lambda r: len(r) == 1),
        "run_batch": (lambda: (dx, echo.model_copy(update={"job_name": f"b-{uuid.uuid4().hex[:6]}"}), 0,
                               str(tmp_path / "batch"), fast), lambda r: r.succeeded == 1),
        "dirac_login": (lambda: (diracx.block(credentials_path=None, refresh_token=SecretStr("x" * 40)),),
                        ValueError),
        "list_servers": (lambda: (fc, "CESNET-MCC"), lambda r: r.failure is None and r.vms),
        "vm_inventory": (lambda: (fc, None, ["CESNET-MCC"], ["ACTIVE"]), lambda r: r.vms and not r.failures),
        "hub_version": (lambda: (hub,), lambda r: r == notebooks.info["hub_version"]),
        "hub_user": (lambda: (hub,), lambda r: r.name == "alice"),
        "hub_users": (lambda: (hub,), lambda r: "alice" in {u.name for u in r}),
        "start_server": (lambda: (hub, "calls", None, 120), lambda r: r.ready),
        "stop_server": (lambda: (hub, "calls", 120), lambda r: "calls" not in r.servers),
    }
    yield calls
    pilot.stop()


def wait_then(job: str, block: Any) -> str:
    asyncio.run(public.wait_for_executions.fn(block, [job], public.WatchPolicy(first_interval=0.3, deadline=300)))
    return job


def done_ids(block: Any, ids: list[int], policy: Any) -> list[int]:
    asyncio.run(public.wait_for_jobs.fn(block, ids, policy))
    return ids


def check(name: str, expected: Any, call: Callable[[], Any]) -> None:
    if isinstance(expected, type) and issubclass(expected, BaseException):
        with pytest.raises(expected):
            call()
        return
    result = call()
    assert not inspect.isawaitable(result), f"{name} gave an awaitable"
    assert expected(result), f"{name} gave {result!r}"


@pytest.mark.parametrize("name", public_tasks())
def test_every_public_task_called_plainly_awaited_and_from_a_cell(prefect_db, services, name):
    task = getattr(public, name)
    arguments, expected = services[name]

    check(name, expected, lambda: task(*arguments()))  # a script

    async def awaiting(given: tuple) -> Any:
        return await task(*given)

    check(name, expected, lambda: asyncio.run(awaiting(arguments())))  # async code

    def cell() -> Any:  # a notebook cell: sync code under the kernel's running loop
        return in_a_cell("result = task(*arguments)", {"task": task, "arguments": arguments()})["result"]

    check(name, expected, cell)
