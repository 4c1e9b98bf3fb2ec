"""The whole local EGI-like stack, and the blocks that point at it.

One implementation for the demo, `egi-flows sandbox` and anyone who wants to
try a flow without EGI credentials: the same peer scripts the tests start,
composed —

- Check-in (our OIDC provider; also DiracX's identity provider, and D4Science's IAM:
  it grants the UMA token of a VRE to its members),
- DataMiner (PyWPS), DiracX (+ a local site whose pilot really runs the jobs, 32 at a time;
  20 % of job runs get a failing payload),
- D4Science CCP (pygeoapi behind a D4Science-like front accepting only the UMA token of
  its VRE; CCP-like methods such as `ccp-write-files`, `ccp-grid-splitter`),
- three FedCloud sites (healthy; healthy with an old Nova; one without the VO)
  and one that answers 503,
- the EGI Notebooks hub (JupyterHub behind the token front), unless `hub=False`.

`Sandbox(workdir).start()` starts them (in parallel), `save_blocks()` saves
`egi-checkin`, `dataminer`, `diracx`, `fedcloud`, `ccp` and `notebooks` in the
current Prefect API, `stop()` stops every process. `python -m prefect_egi.sandbox.stack
--state FILE` is the supervisor `egi-flows sandbox up` leaves running.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefect_egi.sandbox.peers import PeerProcess, start_peer

VO = "vo.access.egi.eu"
GROUP = "access_user"
BLOCKS = ("egi-checkin", "dataminer", "diracx", "fedcloud", "ccp", "notebooks")
#: the user whose logins the blocks hold: a member of VO and of the CCP peer's VRE
USER = "alice"


class Sandbox:
    """The stack's processes and what they announced (URLs, demo credentials)."""

    def __init__(self, workdir: str | Path, hub: bool = True, failure_rate: float = 0.2,
                 peer_args: dict[str, tuple[str, ...]] | None = None):
        """`peer_args`: more options for a peer's script, by peer name (`checkin`, `dataminer`,
        `diracx`, `openstack`, `ccp`, `notebooks`, `pilot`), given last so they override the defaults,
        e.g. `{"pilot": ("--duration", "5")}`."""
        self.workdir = Path(workdir)
        self.hub, self.failure_rate = hub, failure_rate
        self.peer_args = {name: tuple(args) for name, args in (peer_args or {}).items()}
        self.peers: dict[str, PeerProcess] = {}

    def start(self) -> dict[str, Any]:
        """Start every peer (those that do not depend on each other at once); return `info()`."""
        from prefect_egi.sandbox.checkin_peer import DEFAULT_USERS

        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.peers["checkin"] = start_peer("checkin", "checkin_peer.py", *self.peer_args.get("checkin", ()))
            issuer = self.peers["checkin"].info["issuer"]
            alice = DEFAULT_USERS["alice"]["sub"]
            starts = {
                "dataminer": ("dataminer_peer.py",),
                "diracx": ("diracx_peer.py", "--vo", f"{VO}:{GROUP}:alice:{alice}", "--idp-url", issuer,
                           "--idp-client-id", "diracx"),
                "openstack": ("openstack_peer.py", "--issuer", issuer, "--site", f"CESNET-MCC:healthy:{VO}",
                              "--site", f"IFCA-LCG2:healthy:{VO}", "--site", "BIFI:healthy:vo.other.eu",
                              "--site", "DOWN-SITE:error", "--max-microversion", "IFCA-LCG2=2.1"),
                "ccp": ("ccp_peer.py", "--issuer", issuer, "--workdir", str(self.workdir / "ccp")),
            }
            if self.hub:
                starts["notebooks"] = ("notebooks_peer.py", "--issuer", issuer)
            with ThreadPoolExecutor(len(starts)) as pool:
                futures = {name: pool.submit(start_peer, name, *args, *self.peer_args.get(name, ()), timeout=120)
                           for name, args in starts.items()}
                errors = []
                for name, future in futures.items():
                    try:
                        self.peers[name] = future.result()
                    except Exception as exc:  # collect all, then stop what did start
                        errors.append(f"{name}: {exc}")
                if errors:
                    raise RuntimeError("the sandbox did not start: " + "; ".join(errors))
            diracx = self.peers["diracx"].info
            self.peers["pilot"] = start_peer(
                "pilot", "dirac_pilot.py", "--url", diracx["url"], "--credentials", diracx["vos"][VO]["pilot"],
                "--keystore", diracx["keystore"], "--job-db", diracx["job_db"], "--registry", diracx["registry"],
                "--workdir", str(self.workdir / "pilot"), "--slots", "32", "--duration", "1", "--failure-rate",
                str(self.failure_rate), "--seed", "1", *self.peer_args.get("pilot", ()))
        except BaseException:
            self.stop()
            raise
        return self.info()

    def info(self) -> dict[str, Any]:
        return {name: peer.info for name, peer in self.peers.items()} | {
            "pids": {name: peer.process.pid for name, peer in self.peers.items()}}

    def stop(self) -> None:
        for name in reversed(list(self.peers)):
            self.peers.pop(name).stop()


def save_blocks(info: dict[str, Any]) -> dict[str, str]:
    """Save the blocks every flow uses by default, pointing at the running stack."""
    import httpx
    from pydantic import SecretStr

    from prefect_egi.tasks import CCP, CheckinCredentials, DataMiner, DiracX, FedCloud, NotebooksHub, Site

    checkin = info["checkin"]

    def login() -> dict[str, Any]:  # a login of its own per block: refresh tokens may rotate
        return httpx.post(f"{checkin['url']}/_peer/login", json={"user": USER}, timeout=10).json()

    credentials = CheckinCredentials(issuer=checkin["issuer"], client_id="prefect-egi",
                                     client_secret=SecretStr(checkin["clients"]["prefect-egi"]),
                                     refresh_token=SecretStr(login()["refresh_token"]),
                                     use_environment=False, token_files=[])
    credentials.save("egi-checkin", overwrite=True)
    credentials = CheckinCredentials.load("egi-checkin")
    DataMiner(url=info["dataminer"]["wps_url"], gcube_token=SecretStr(info["dataminer"]["token"])
              ).save("dataminer", overwrite=True)
    diracx = info["diracx"]
    DiracX(url=diracx["url"], vo=VO, group=diracx["vos"][VO]["group"],
           credentials_path=diracx["vos"][VO]["user"]).save("diracx", overwrite=True)
    sites = [Site(name=name, endpoint=site["auth_url"]) for name, site in info["openstack"]["sites"].items()]
    FedCloud(checkin=credentials, default_vo=VO, sites=sites, site_config_dirs=[], timeout_seconds=5
             ).save("fedcloud", overwrite=True)
    saved = {"egi-checkin": checkin["issuer"], "dataminer": info["dataminer"]["wps_url"], "diracx": diracx["url"],
             "fedcloud": ", ".join(s.name for s in sites)}
    if "ccp" in info:  # a supervisor's state written before the sandbox had a CCP peer has none
        ccp = info["ccp"]
        CCP(url=ccp["api_url"], context=ccp["context"], issuer=checkin["issuer"], client_id="prefect-egi",
            client_secret=SecretStr(checkin["clients"]["prefect-egi"]),
            refresh_token=SecretStr(login()["refresh_token"]), use_environment=False).save("ccp", overwrite=True)
        saved["ccp"] = f"{ccp['api_url']} (VRE {ccp['context']})"
    if "notebooks" in info:
        NotebooksHub(url=info["notebooks"]["api_url"], checkin=credentials).save("notebooks", overwrite=True)
        saved["notebooks"] = info["notebooks"]["api_url"]
    return saved


def describe(info: dict[str, Any]) -> list[tuple[str, str]]:
    """Where everything listens, for humans."""
    rows = [("Check-in (OIDC)", info["checkin"]["issuer"]),
            ("DataMiner (WPS)", info["dataminer"]["wps_url"]),
            ("DiracX", info["diracx"]["url"] + f"  (VO {VO}, site LCG.Sandbox.local running its jobs)")]
    rows += [(f"FedCloud site {name}", f"{site['auth_url']}  ({site['mode']})")
             for name, site in info["openstack"]["sites"].items()]
    if "ccp" in info:
        rows.append(("D4Science CCP", f"{info['ccp']['api_url']}  (VRE {info['ccp']['context']})"))
    if "notebooks" in info:
        rows.append(("EGI Notebooks API", info["notebooks"]["api_url"]))
    return rows


def serve(state: Path, workdir: Path, hub: bool) -> None:
    """Start the stack, write its info to `state`, keep it up until SIGTERM/SIGINT."""
    sandbox = Sandbox(workdir, hub=hub)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        info = sandbox.start()
        temporary = state.with_suffix(".tmp")
        temporary.write_text(json.dumps(info | {"supervisor": os.getpid(), "workdir": str(workdir)}))
        temporary.replace(state)
        while not done.wait(1.0):
            if any(peer.process.poll() is not None for peer in sandbox.peers.values()):
                break  # a peer died: take the rest down, `sandbox status` will say so
    finally:
        sandbox.stop()
        state.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", required=True, help="JSON file written once everything listens")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--no-hub", action="store_true", help="skip the EGI Notebooks hub")
    args = parser.parse_args(argv)
    started = time.monotonic()
    serve(Path(args.state), Path(args.workdir), hub=not args.no_hub)
    print(f"sandbox stopped after {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
