"""The fault proxy against a real tiny upstream and real httpx clients: relays byte for byte,
keeps connections alive, and injects each kind of fault exactly when its rules say."""

from __future__ import annotations

import json
import random
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from prefect_egi.sandbox.fault_proxy import FaultProxy
from prefect_egi.sandbox.peers import start_peer

SMALL = b'{"ok": true, "service": "upstream"}'
CHUNKS = [b"alpha-", b"beta-" * 300, b"gamma"]
LARGE = random.Random(1).randbytes(5 * 1024 * 1024)


@dataclass
class Upstream:
    url: str
    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, route: str) -> int:
        with self.lock:
            return self.counts[route]


def make_handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version, sys_version = "TinyUpstream/1.0", ""
        disable_nagle_algorithm = True  # else each head+body answer waits ~40 ms for a delayed ACK

        def log_message(self, *args: Any) -> None:
            pass

        def date_time_string(self, timestamp: float | None = None) -> str:
            return "Thu, 01 Jan 2026 00:00:00 GMT"  # fixed, so raw responses compare byte for byte

        def count(self) -> None:
            with upstream.lock:
                upstream.counts[f"{self.command} {self.path.split('?')[0]}"] += 1

        def reply(self, body: bytes, content_type: str = "application/json", head: bool = False) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.count()
            self.reply(SMALL, head=True)

        def do_GET(self) -> None:
            self.count()
            path = self.path.split("?")[0]
            if path == "/small":
                self.reply(SMALL)
            elif path == "/large":
                self.reply(LARGE, "application/octet-stream")
            elif path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in CHUNKS:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            elif path == "/until-close":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(SMALL * 3)
                self.close_connection = True
            elif path == "/empty":
                self.send_response(204)
                self.end_headers()
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            self.count()
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.reply(body, "application/octet-stream")

    return Handler


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    state = Upstream(f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = make_handler(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def running_proxy(upstream):
    proxy = FaultProxy(upstream.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxy(running_proxy, upstream):
    running_proxy.reset()
    with upstream.lock:
        upstream.counts.clear()
    return running_proxy


def raw_get(url: str, target: str) -> bytes:
    """One request on a fresh socket, the response read until the server closes."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        pieces = []
        while piece := sock.recv(65536):
            pieces.append(piece)
    return b"".join(pieces)


def faulted_numbers(client: httpx.Client, count: int, path: str = "/small") -> list[int]:
    return [n for n in range(1, count + 1) if client.get(path).status_code != 200]


# --------------------------------------------------------------------------- pass-through


@pytest.mark.parametrize("target", ["/small", "/chunked", "/large", "/until-close", "/empty", "/missing?x=1"])
def test_responses_are_relayed_byte_for_byte(proxy, upstream, target):
    direct = raw_get(upstream.url, target)
    assert raw_get(proxy.url, target) == direct
    assert len(direct) > (len(LARGE) if target == "/large" else 0)


def test_bodies_through_httpx_and_keep_alive(proxy, upstream):
    upload = random.Random(2).randbytes(3 * 1024 * 1024)  # larger than the proxy buffers: streamed
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        assert client.get("/small").content == SMALL
        chunked = client.get("/chunked")
        assert chunked.content == b"".join(CHUNKS) and chunked.headers["transfer-encoding"] == "chunked"
        assert client.get("/large").content == LARGE
        assert client.post("/echo", content=b"hello").content == b"hello"
        assert client.post("/echo", content=upload).content == upload
        assert client.post("/echo", content=iter([b"chunk-1;", b"chunk-2"])).content == b"chunk-1;chunk-2"
        head = client.head("/small")
        assert head.content == b"" and head.headers["content-length"] == str(len(SMALL))
        assert client.get("/empty").status_code == 204
        assert client.get("/small?format=json").content == SMALL
    stats = proxy.stats()
    assert stats["connections"] == 1  # nine requests, one client connection
    assert stats["requests"] == stats["forwarded"] == 9
    assert set(stats["faulted"].values()) == {0}
    assert stats["by_route"]["GET /small"] == {"seen": 2, "faulted": 0}
    assert stats["by_route"]["POST /echo"] == {"seen": 3, "faulted": 0}
    assert upstream.seen("POST /echo") == 3 and upstream.seen("HEAD /small") == 1


def test_unreachable_upstream_is_a_502():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        response = httpx.get(f"{proxy.url}/small", timeout=5)
    assert response.status_code == 502 and response.headers["x-fault-proxy"] == "bad-gateway"


# --------------------------------------------------------------------------- fault kinds


def test_latency_delays_then_forwards(proxy, upstream):
    proxy.set_rules([{"kind": "latency", "seconds": 0.4, "path": "^/small"}])
    started = time.monotonic()
    response = httpx.get(f"{proxy.url}/small", timeout=5)
    assert time.monotonic() - started >= 0.4
    assert response.content == SMALL and upstream.seen("GET /small") == 1
    stats = proxy.stats()
    assert stats["forwarded"] == 1 and stats["faulted"]["latency"] == 1


def test_error_is_answered_by_the_proxy_alone(proxy, upstream):
    proxy.set_rules([{"kind": "error", "requests": [1]}])
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        response = client.get("/small")
        assert response.status_code == 503 and "injected 503" in response.text
        assert client.get("/small").status_code == 200  # the connection stays usable
    assert upstream.seen("GET /small") == 1
    stats = proxy.stats()
    assert stats["connections"] == 1 and stats["forwarded"] == 1 and stats["faulted"]["error"] == 1


def test_reset_aborts_the_connection_unforwarded(proxy, upstream):
    proxy.set_rules([{"kind": "reset"}])
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.post(f"{proxy.url}/echo", content=b"work", timeout=5)
    assert upstream.seen("POST /echo") == 0
    assert proxy.stats()["forwarded"] == 0 and proxy.stats()["faulted"]["reset"] == 1


def test_blackhole_never_answers(proxy, upstream):
    proxy.set_rules([{"kind": "blackhole"}])
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{proxy.url}/small", timeout=httpx.Timeout(5, read=0.3))
    assert time.monotonic() - started < 3
    proxy.set_rules([{"kind": "blackhole", "seconds": 0.3}])  # holds, then closes without a word
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{proxy.url}/small", timeout=5)
    assert upstream.seen("GET /small") == 0 and proxy.stats()["faulted"]["blackhole"] == 2


def test_drop_response_after_the_upstream_did_the_work(proxy, upstream):
    proxy.set_rules([{"kind": "drop-response", "method": "POST"}])
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.post(f"{proxy.url}/echo", content=b"submit job", timeout=5)
    assert upstream.seen("POST /echo") == 1
    stats = proxy.stats()
    assert stats["forwarded"] == 1 and stats["faulted"]["drop-response"] == 1


# --------------------------------------------------------------------------- rules


def test_rate_is_reproducible_with_a_seed(proxy, upstream):
    runs = []
    for seed in (42, 42, 7):
        proxy.set_rules([{"kind": "error", "rate": 0.2}], seed=seed)
        with httpx.Client(base_url=proxy.url, timeout=5) as client:
            runs.append(faulted_numbers(client, 200))
    assert runs[0] == runs[1] != runs[2]
    assert 24 <= len(runs[0]) <= 56
    assert upstream.seen("GET /small") == 600 - sum(map(len, runs))


def test_every_and_request_schedules_are_exact(proxy):
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        proxy.set_rules([{"kind": "error", "every": 3}])
        assert faulted_numbers(client, 10) == [3, 6, 9]
        proxy.set_rules([{"kind": "error", "requests": [2, 4, 5]}])
        assert faulted_numbers(client, 8) == [2, 4, 5]


def test_method_and_path_filters_and_first_match(proxy, upstream):
    proxy.set_rules([
        {"kind": "error", "method": ["post"], "path": "^/echo"},
        {"kind": "error", "status": 429, "path": r"format=xml"},
        {"kind": "error", "status": 500, "path": "^/small", "every": 2},
        {"kind": "error", "status": 502},
    ])
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        assert client.post("/echo", content=b"x").status_code == 503
        assert client.get("/chunked?format=xml").status_code == 429
        # The first rule that matches decides alone: /small request 1 does not fire and passes.
        assert [client.get("/small").status_code for _ in range(3)] == [200, 500, 200]
        assert client.get("/large").status_code == 502
    stats = proxy.stats()
    assert stats["by_route"]["GET /small"] == {"seen": 3, "faulted": 1}
    assert stats["by_route"]["GET /chunked"] == {"seen": 1, "faulted": 1}
    assert upstream.seen("POST /echo") == 0 and upstream.seen("GET /small") == 2


def test_time_window(proxy):
    # seconds, not fractions: each request is 1-2 s from an edge of the window even on a busy machine
    proxy.set_rules([{"kind": "error", "after": 2, "for": 2}])
    origin = time.monotonic()
    statuses = []
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        for at in (0.0, 3.0, 5.0):
            time.sleep(max(0.0, origin + at - time.monotonic()))
            statuses.append(client.get("/small").status_code)
    assert statuses == [200, 503, 200]


def test_control_api(proxy):
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        bad = client.post("/_proxy/rules", json={"rules": [{"kind": "explode"}]})
        assert bad.status_code == 400 and "kind" in bad.json()["error"]
        assert client.post("/_proxy/rules", json={"rules": [{"kind": "error", "evry": 2}]}).status_code == 400
        rules = [{"kind": "error", "requests": [1], "status": 418}]
        assert client.post("/_proxy/rules", json={"rules": rules, "seed": 5}).json() == {"ok": True, "rules": 1}
        assert client.get("/_proxy/rules").json() == {"rules": rules, "seed": 5}
        assert client.get("/small").status_code == 418
        assert client.get("/_peer/stats").json()["faulted"]["error"] == 1  # alias for PeerProcess
        assert client.get("/_proxy/nothing").status_code == 404
        assert client.post("/_peer/reset").json() == {"ok": True}
        stats = client.get("/_proxy/stats").json()
    assert stats["requests"] == 0 and stats["by_route"] == {} and proxy.stats()["requests"] == 0
    with httpx.Client(base_url=proxy.url, timeout=5) as client:
        assert client.get("/small").status_code == 200  # rules were cleared too


# --------------------------------------------------------------------------- the CLI process


def test_cli_process(upstream):
    rules = json.dumps([{"kind": "error", "requests": [1]}])
    peer = start_peer("fault-proxy", "fault_proxy.py", "--upstream", upstream.url, "--rules", rules, "--seed", "3")
    try:
        assert peer.url.startswith("http://127.0.0.1:")
        assert peer.info == {"url": peer.url, "upstream": upstream.url, "control": f"{peer.url}/_proxy"}
        with httpx.Client(base_url=peer.url, timeout=5) as client:
            assert [client.get("/small").status_code for _ in range(2)] == [503, 200]
        stats = peer.stats()
        assert stats["requests"] == 2 and stats["faulted"]["error"] == 1 and stats["connections"] == 1
        assert peer.control("rules", rules=[{"kind": "error", "status": 429}], seed=1)["ok"]
        assert httpx.get(f"{peer.url}/small", timeout=5).status_code == 429
        peer.control("reset")
        assert peer.stats()["requests"] == 0
    finally:
        peer.stop()
    assert peer.process.returncode == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{peer.url}/small", timeout=2)


def test_cli_terminates_tls(upstream, certificate):
    peer = start_peer("fault-proxy-tls", "fault_proxy.py", "--upstream", upstream.url,
                      "--tls-cert", certificate[0], "--tls-key", certificate[1])
    try:
        assert peer.url.startswith("https://127.0.0.1:")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{peer.url}/small", timeout=5)
        context = ssl.create_default_context(cafile=certificate[0])
        with httpx.Client(base_url=peer.url, verify=context, timeout=10) as client:
            assert client.get("/large").content == LARGE
            assert client.post("/_proxy/rules", json={"rules": [{"kind": "reset"}]}).status_code == 200
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                client.get("/small")
            stats = client.get("/_proxy/stats").json()
        assert stats["forwarded"] == 1 and stats["faulted"]["reset"] == 1
    finally:
        peer.stop()
