"""Test harness: real peers on 127.0.0.1 and a real Prefect API, no telemetry.

Environment is fixed *before* Prefect is imported: telemetry off, PREFECT_HOME in
a temporary directory (results storage lives there), quiet logging.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="prefect-egi-tests-")
os.environ.update(
    DO_NOT_TRACK="1",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_HOME=_HOME,
    PREFECT_LOGGING_LEVEL="INFO",
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    PREFECT_SERVER_LOGGING_LEVEL="WARNING",
    # tasks called outside a flow (plain calls, as a script makes them) log locally; Prefect warns each time
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
)

REPO = Path(__file__).resolve().parents[1]
# The plugin and its sandbox (prefect_egi.sandbox) are imported as installed.


import httpx  # noqa: E402
import pytest  # noqa: E402
from leak_sweep import capture_session_logs  # noqa: E402

SESSION_LOG = Path(_HOME) / "session.log"
capture_session_logs(SESSION_LOG)

from prefect_egi.sandbox.peers import PeerProcess, start_peer

TOKEN_ENV = (
    "OIDC_ACCESS_TOKEN",
    "FEDCLOUD_OIDC_ACCESS_TOKEN",
    "OIDC_REFRESH_TOKEN",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
    "OIDC_AGENT_ACCOUNT",
    "OIDC_SOCK",
    "OIDC_ISSUER",
    "MYTOKEN",
    "FEDCLOUD_MYTOKEN",
    "MYTOKEN_SERVER",
    "D4SCIENCE_TOKEN",
    "D4SCIENCE_CONTEXT",
)


def pytest_collection_modifyitems(config, items):
    """The security sweep runs last, after every flow of the session. Whole-system tests
    (`@pytest.mark.system`) run once per CI build: `.ci/run` sets EGI_SKIP_SYSTEM_TESTS=1
    for the second interpreter, whose purpose is owslib 0.36."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_security_sweep.py"))
    if os.environ.get("EGI_SKIP_SYSTEM_TESTS") == "1":
        skip = pytest.mark.skip(reason="EGI_SKIP_SYSTEM_TESTS=1 (they ran on the first interpreter)")
        for item in items:
            if "system" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_ambient_tokens(monkeypatch):
    """Tests see only the tokens they set up themselves."""
    for name in TOKEN_ENV:
        monkeypatch.delenv(name, raising=False)


class CheckinPeer:
    """The running Check-in peer plus helpers to mint logins and read counters."""

    def __init__(self, process: PeerProcess):
        self.process = process
        self.url = process.url
        self.issuer: str = process.info["issuer"]
        self.client_id = "prefect-egi"
        self.client_secret: str = process.info["clients"]["prefect-egi"]

    def login(self, user: str = "alice", **extra) -> dict:
        """A fresh login: access + refresh token, as a user would get from Check-in."""
        return self.process.control("login", user=user, **extra)

    def mytoken(self, user: str = "alice", **options) -> str:
        """A new mytoken of the peer's mytoken server (options: capabilities, rotation, expires_in)."""
        return self.process.control("mytoken", user=user, **options)["mytoken"]

    @property
    def mytoken_server(self) -> str:
        return self.url + "/mytoken"

    def stats(self) -> dict[str, int]:
        return self.process.stats()

    def credentials(self, user: str = "alice", **fields):
        """CheckinCredentials as a researcher saves them: a refresh token and the client (no env, no files)."""
        from pydantic import SecretStr

        from prefect_egi.tasks import CheckinCredentials

        refresh = self.login(user)["refresh_token"]
        return CheckinCredentials(issuer=self.issuer, client_id=self.client_id,
                                  client_secret=SecretStr(self.client_secret), refresh_token=SecretStr(refresh),
                                  use_environment=False, token_files=[], **fields)

    def refresh_grants(self) -> int:
        return self.stats().get("grant refresh_token", 0)

    def token_requests(self) -> int:
        return self.stats().get("POST /auth/realms/egi/protocol/openid-connect/token", 0)

    def fault(self, endpoint: str = "/auth/realms/egi/protocol/openid-connect/token", **fault) -> None:
        self.process.control("fault", endpoint=endpoint, **fault)

    def configure(self, **settings) -> None:
        self.process.control("config", **settings)

    def reset(self) -> None:
        self.process.control("reset")


@pytest.fixture(scope="session")
def checkin_process():
    peer = start_peer("checkin", "checkin_peer.py")
    yield peer
    peer.stop()


@pytest.fixture
def checkin(checkin_process) -> CheckinPeer:
    """The Check-in peer, with counters, faults and lifetimes reset for this test."""
    peer = CheckinPeer(checkin_process)
    peer.reset()
    yield peer
    peer.reset()


@pytest.fixture(scope="session")
def prefect_db():
    """A real Prefect API (the test harness) for the whole session; yields its SQLite path."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
            db = Path(url.split("///", 1)[1])
            yield db
            _sweep_for_secrets(db)


@pytest.fixture
def prefect_api_proxy(prefect_db):
    """The fault proxy (`deployments/sandbox/fault_proxy.py`) between this process and the
    real Prefect API: PREFECT_API_URL points through it for the test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_egi.sandbox.fault_proxy import FaultProxy

    origin, _, path = PREFECT_API_URL.value().partition("/api")
    with FaultProxy(origin) as proxy, temporary_settings({PREFECT_API_URL: f"{proxy.url}/api{path}"}):
        yield proxy


def database_bytes(db: Path) -> bytes:
    """The SQLite database with its WAL: everything Prefect stored."""
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def sweep_roots(db: Path) -> list[Path]:
    """Everywhere this session's runs stored something: the harness database, PREFECT_HOME
    (results, the session log) and every real Prefect stack a test started."""
    from leak_sweep import STACK_ROOTS

    return [db.parent, Path(_HOME), *STACK_ROOTS]


def _sweep_for_secrets(db: Path) -> None:
    """After every flow of the session ran: no secret our code handled in this process
    (the redaction registry) is stored anywhere a run leaves things."""
    from leak_sweep import sweep
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from prefect_egi.tasks import redaction

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    leaks = sweep(redaction._ordered, sweep_roots(db))
    assert not leaks, leaks


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (its own CA): (cert path, key path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture
def http() -> httpx.Client:
    with httpx.Client(timeout=10) as client:
        yield client


class DataMinerPeer:
    """The running DataMiner peer (PyWPS behind a DataMiner-like front)."""

    def __init__(self, process: PeerProcess):
        self.process = process
        self.url = process.url
        self.wps_url: str = process.info["wps_url"]
        self.token: str = process.info["token"]
        self.foreign_url: str = process.info["foreign_url"]

    def stats(self) -> dict:
        return self.process.stats()

    def control(self, action: str, **payload) -> dict:
        return self.process.control(action, **payload)

    def block(self, **fields):
        from pydantic import SecretStr

        from prefect_egi.tasks import DataMiner

        fields.setdefault("gcube_token", SecretStr(self.token))
        return DataMiner(url=self.wps_url, **fields)


@pytest.fixture(scope="session")
def dataminer_process():
    peer = start_peer("dataminer", "dataminer_peer.py")
    yield peer
    peer.stop()


@pytest.fixture
def dataminer(dataminer_process) -> DataMinerPeer:
    peer = DataMinerPeer(dataminer_process)
    peer.control("reset")
    peer.control("restore", token=peer.token)
    yield peer
    peer.control("reset")
    peer.control("restore", token=peer.token)


class DiracXPeer:
    """The running DiracX server, its VO credentials and the local site's pilot identity."""

    def __init__(self, process: PeerProcess):
        self.process = process
        self.url: str = process.info["url"]
        self.vos: dict = process.info["vos"]
        (self.vo, creds), *_ = self.vos.items()
        self.group: str = creds["group"]
        self.credentials: str = creds["user"]
        from prefect_egi.sandbox.dirac_pilot import Pilot

        self.pilot = Pilot(self.url, creds["pilot"], keystore=process.info["keystore"],
                           job_db=process.info["job_db"], registry=process.info["registry"])

    def block(self, vo: str | None = None, **fields):
        from prefect_egi.tasks import DiracX

        vo = vo or self.vo
        fields.setdefault("credentials_path", self.vos[vo]["user"])
        return DiracX(url=self.url, vo=vo, group=self.vos[vo]["group"], **fields)

    def job_count(self) -> int:
        """Jobs the server holds for our user (to prove nothing was submitted twice)."""
        import asyncio

        async def count() -> int:
            async with self.pilot.client() as api:
                rows = await api.jobs.summary(grouping=["Status"], search=[])
            return sum(r["count"] for r in rows)

        return asyncio.run(count())


@pytest.fixture(scope="session")
def diracx_process(checkin_process):
    """A real DiracX server; its users log in through our Check-in peer (alice has her Check-in sub)."""
    from prefect_egi.sandbox.checkin_peer import DEFAULT_USERS

    alice = DEFAULT_USERS["alice"]["sub"]
    peer = start_peer("diracx", "diracx_peer.py", "--vo", f"egi.test:egi_user:alice:{alice}",
                      "--vo", "vo.second.eu:second_user:bob", "--idp-url", checkin_process.info["issuer"],
                      "--idp-client-id", "diracx", timeout=120)
    yield peer
    peer.stop()


@pytest.fixture
def diracx(diracx_process) -> DiracXPeer:
    return DiracXPeer(diracx_process)


@pytest.fixture(scope="session")
def notebooks_process(checkin_process):
    """A real JupyterHub behind an EGI-like `/services/jwt` front that trusts our Check-in peer; its
    error pages are EGI's (tests/data/notebooks/egi-templates), its front's timeouts generous (a busy machine)."""
    peer = start_peer("notebooks", "notebooks_peer.py", "--issuer", checkin_process.info["issuer"],
                      "--spawn-seconds", "1.0", "--template-path", str(REPO / "tests" / "data" / "notebooks" /
                                                                        "egi-templates"),
                      "--login-timeout", "60", "--api-timeout", "60", "--slow-stop-timeout", "1", timeout=60)
    yield peer
    peer.stop()


@pytest.fixture
def notebooks(notebooks_process, checkin) -> PeerProcess:
    """The Notebooks peer with its counters (and the front's hub-token cache) reset."""
    notebooks_process.control("reset")
    return notebooks_process


# FedCloud sites of the OpenStack peer: one healthy with the VO (its project named differently,
# as sites do; a second region WAW4-1; the notebooks VO mapped for role=member), one without the
# VO, one old Nova (2.1) whose project is found by name, one answering 503, one that never answers.
# Mapping rules are per VO and role, as sites configure them (default role=vm_operator).
ACCESS = "vo.access.egi.eu"
ACCESS_PROJECT = "d1f3a2b4c5e6f708192a3b4c5d6e7f80"
SERVERS = 5


@pytest.fixture(scope="session")
def openstack_process(checkin_process):
    peer = start_peer(
        "openstack", "openstack_peer.py", "--issuer", checkin_process.info["issuer"],
        "--site", f"CESNET-MCC:healthy:{ACCESS}={ACCESS_PROJECT}/egi-access,vo.notebooks.egi.eu",
        "--site", "IFCA-LCG2:healthy:some.other.vo",
        "--site", f"OLD-CLOUD:healthy:{ACCESS}",
        "--site", "BROKEN:error", "--site", "BLACKHOLE:hang",
        "--max-microversion", "OLD-CLOUD=2.1", "--servers", str(SERVERS),
        "--rule", "CESNET-MCC:vo.notebooks.egi.eu=urn:mace:egi.eu:group:vo.notebooks.egi.eu:role=member#aai.egi.eu",
        "--region", "CESNET-MCC=RegionOne,WAW4-1",
    )
    yield peer
    peer.stop()


@pytest.fixture
def openstack(openstack_process):
    """The OpenStack peer with counters, faults and modes reset for this test."""
    openstack_process.control("reset")
    yield openstack_process
    openstack_process.control("reset")


# -- D4Science CCP: pygeoapi behind a D4Science-like front that accepts only the VRE's UMA token --------

class CCPPeer:
    """The running CCP peer, and UMA tokens for its VRE from the Check-in peer."""

    def __init__(self, process: PeerProcess, checkin: CheckinPeer):
        self.process = process
        self.checkin = checkin
        self.url: str = process.info["api_url"]
        self.context: str = process.info["context"]

    def control(self, action: str, **payload) -> dict:
        return self.process.control(action, **payload)

    def stats(self) -> dict[str, int]:
        return self.process.stats()

    def uma(self, user: str = "alice", audience: str | None = None, access_token: str | None = None) -> httpx.Response:
        """The UMA grant as D4Science's documentation sends it: the user's token as the bearer."""
        access_token = access_token or self.checkin.login(user)["access_token"]
        return httpx.post(f"{self.checkin.issuer}/protocol/openid-connect/token", timeout=10,
                          data={"grant_type": "urn:ietf:params:oauth:grant-type:uma-ticket",
                                "audience": audience or self.context},
                          headers={"Authorization": f"Bearer {access_token}"})

    def rpt(self, user: str = "alice") -> str:
        response = self.uma(user)
        response.raise_for_status()
        return response.json()["access_token"]

    def block(self, user: str = "alice", **fields):
        """A CCP block as a D4Science user saves one: the VRE, a refresh token and its client."""
        from pydantic import SecretStr

        from prefect_egi.tasks import CCP

        fields.setdefault("refresh_token", SecretStr(self.checkin.login(user)["refresh_token"]))
        fields.setdefault("url", self.url)
        return CCP(context=self.context, issuer=self.checkin.issuer, client_id=self.checkin.client_id,
                   client_secret=SecretStr(self.checkin.client_secret), use_environment=False, **fields)

    def client(self, token: str | None = None, **options):
        """A CCPClient calling the peer with a fixed token (the UMA token of alice by default)."""
        from prefect_egi.tasks.ccp.client import CCPClient

        token = token or self.rpt()

        async def bearer() -> str:
            return token

        options.setdefault("context", self.context)
        return CCPClient(self.url, bearer, **options)


@pytest.fixture(scope="session")
def ccp_process(checkin_process):
    peer = start_peer("ccp", "ccp_peer.py", "--issuer", checkin_process.info["issuer"], timeout=90)
    yield peer
    peer.stop()


@pytest.fixture
def ccp(ccp_process, checkin) -> CCPPeer:
    """The CCP peer with its counters and faults reset for this test."""
    peer = CCPPeer(ccp_process, checkin)
    peer.control("reset")
    yield peer
    peer.control("reset")
