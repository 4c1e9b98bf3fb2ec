"""A fault-injecting HTTP/1.1 proxy in front of one sandbox peer.

Whole-system fault tests need the failures that happen *between* a client and
a service: a slow network, an overloaded load balancer answering 503, a
connection reset, a request swallowed by a black hole, and the ambiguous case
where the service did the work but the answer never arrived. Peers can fake
some of these themselves; a proxy fakes them the same way for every client
(httpx, diracx-client via azure-core, keystoneauth via requests) without
touching the peer.

The proxy understands HTTP/1.1 framing (Content-Length, chunked, until-close;
keep-alive) so that it counts and faults *requests*, not connections. Each
client connection gets its own upstream connection; responses are relayed
byte for byte, bodies streamed in pieces.

Faults, chosen per request by rules (first rule whose filters match decides):
- latency:       sleep `seconds`, then forward normally;
- error:         answer `status` (503) itself, never forward;
- reset:         read the request, never forward, abort with a TCP RST;
- blackhole:     read the request, never forward or answer; hold the connection
                 until the client gives up (or `seconds` pass, then close);
- drop-response: forward, read the whole response, then RST the client.

Control API (never forwarded, never faulted): `GET /_proxy/stats`,
`POST /_proxy/rules` {"rules": [...], "seed": n}, `GET /_proxy/rules`,
`POST /_proxy/reset`; `/_peer/<action>` is an alias so that
`peers.PeerProcess.stats()` and `.control("rules", ...)` work.

Run: `python fault_proxy.py --upstream http://127.0.0.1:PORT` prints one JSON
line {"url", "upstream", "control"} and serves until SIGTERM. In tests,
`FaultProxy(upstream).start()` runs the same server in a background thread.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import random
import re
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

KINDS = ("latency", "error", "reset", "blackhole", "drop-response")
TRIGGERS = ("rate", "every", "requests")
RULE_KEYS = {"kind", "method", "path", "after", "for", "seconds", "status", *TRIGGERS}
CONTROL_PREFIXES = ("/_proxy/", "/_peer/")
PIECE = 64 * 1024  # bodies are relayed in pieces of at most this size
MAX_HEAD = 64 * 1024  # request/response heads and chunk-size lines
MAX_BUFFERED = 1024 * 1024  # request bodies up to this size are kept, to resend on a stale upstream connection
MAX_CONTROL_BODY = 1024 * 1024


class ProtocolError(Exception):
    """A message that is not valid HTTP/1.1 framing (or a peer that left mid-message)."""


class UpstreamError(Exception):
    """The upstream could not be reached, or failed before its response head arrived."""


# --------------------------------------------------------------------------- HTTP/1.1 framing


@dataclass
class Head:
    """A parsed request or response head. `raw` is what is forwarded: unchanged bytes."""

    raw: bytes
    start: list[str]  # request: method, target, version; response: version, status[, reason]
    headers: list[tuple[str, str]]  # (lower-case name, value)

    @classmethod
    def parse(cls, raw: bytes, *, request: bool) -> Head:
        lines = raw[:-4].decode("latin-1").split("\r\n")
        start = lines[0].split(" ", 2)
        if len(start) < (3 if request else 2) or not start[2 if request else 0].startswith("HTTP/"):
            raise ProtocolError(f"bad start line: {lines[0][:100]!r}")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ProtocolError(f"bad header line: {line[:100]!r}")
            headers.append((name.lower(), value.strip()))
        return cls(raw, start, headers)

    def tokens(self, name: str) -> list[str]:
        """Comma-separated values of every `name` header, lower-cased (Connection, Transfer-Encoding)."""
        return [t.strip().lower() for n, v in self.headers if n == name for t in v.split(",") if t.strip()]

    @property
    def version(self) -> str:
        return self.start[0] if self.start[0].startswith("HTTP/") else self.start[2]

    @property
    def keep_alive(self) -> bool:
        """Whether the sender expects the connection to stay open after this message."""
        connection = self.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


@dataclass
class Request(Head):
    @property
    def method(self) -> str:
        return self.start[0]

    @property
    def target(self) -> str:
        return self.start[1]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def framing(self) -> tuple[str, int]:
        return body_framing(self, request=True)


@dataclass
class Response(Head):
    @property
    def status(self) -> int:
        try:
            return int(self.start[1])
        except ValueError:
            raise ProtocolError(f"bad status: {self.start[1][:20]!r}") from None


def body_framing(head: Head, *, request: bool, method: str = "", status: int = 0) -> tuple[str, int]:
    """How the body after `head` ends: ("none"|"length"|"chunked"|"close", length) per RFC 9112 §6."""
    if not request and (method == "HEAD" or 100 <= status < 200 or status in (204, 304)):
        return "none", 0
    encodings = head.tokens("transfer-encoding")
    if encodings:
        if encodings[-1] == "chunked":
            return "chunked", 0
        if request:
            raise ProtocolError("request Transfer-Encoding without chunked")
        return "close", 0
    lengths = {v.strip() for n, value in head.headers if n == "content-length" for v in value.split(",")}
    if lengths:
        length = lengths.pop()
        if lengths or not length.isdigit():
            raise ProtocolError("bad Content-Length")
        return "length", int(length)
    return ("none", 0) if request else ("close", 0)


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The next message head, or None when the peer closed cleanly between messages."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ProtocolError("connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("message head too large") from None


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a chunked body") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("chunk line too large") from None


async def _exactly(reader: asyncio.StreamReader, count: int) -> AsyncIterator[bytes]:
    while count:
        piece = await reader.read(min(count, PIECE))
        if not piece:
            raise ProtocolError("connection closed inside a body")
        count -= len(piece)
        yield piece


async def body_pieces(reader: asyncio.StreamReader, framing: tuple[str, int]) -> AsyncIterator[bytes]:
    """The raw bytes of a body as they arrive (chunk lines and trailers included), so relaying is exact."""
    kind, length = framing
    if kind == "length":
        async for piece in _exactly(reader, length):
            yield piece
    elif kind == "chunked":
        while True:
            line = await _read_line(reader)
            yield line
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line: {line[:40]!r}") from None
            if size == 0:
                break
            async for piece in _exactly(reader, size + 2):  # the chunk and its CRLF
                yield piece
        while (line := await _read_line(reader)) != b"\r\n":  # trailers, then the empty line
            yield line
        yield line
    elif kind == "close":
        while piece := await reader.read(PIECE):
            yield piece


async def read_body(reader: asyncio.StreamReader, framing: tuple[str, int], limit: int | None = None) -> bytes:
    pieces, size = [], 0
    async for piece in body_pieces(reader, framing):
        size += len(piece)
        if limit is not None and size > limit:
            raise ProtocolError("body too large")
        pieces.append(piece)
    return b"".join(pieces)


def simple_response(status: int, body: bytes, content_type: str, *, keep_alive: bool,
                    extra: tuple[str, ...] = ()) -> bytes:
    """A complete response the proxy answers itself (control API, injected errors, 502)."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected Fault"
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             *extra, "Connection: " + ("keep-alive" if keep_alive else "close")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN: SO_LINGER on with timeout 0, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


# --------------------------------------------------------------------------- rules


@dataclass
class Rule:
    """Which requests get a fault. Filters (method, path, time window) decide whether the rule
    matches; the trigger (rate, every, requests; none = always) decides whether it fires."""

    kind: str
    methods: frozenset[str] | None = None
    path: re.Pattern[str] | None = None
    after: float = 0.0
    duration: float | None = None  # "for"
    rate: float | None = None
    every: int | None = None
    requests: frozenset[int] | None = None
    seconds: float | None = None
    status: int = 503
    matched: int = 0  # matching requests so far (1-based numbers for `every` and `requests`)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Rule:
        """Validate strictly: a typo in a rule would otherwise silently test nothing."""
        if not isinstance(spec, dict):
            raise ValueError(f"a rule is a JSON object, not {spec!r}")
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ValueError(f"unknown rule keys {sorted(unknown)}; known: {sorted(RULE_KEYS)}")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"rule kind must be one of {list(KINDS)}, not {kind!r}")
        if sum(key in spec for key in TRIGGERS) > 1:
            raise ValueError(f"a rule takes at most one of {list(TRIGGERS)}")
        if "seconds" in spec and kind not in ("latency", "blackhole"):
            raise ValueError("'seconds' applies to latency and blackhole rules only")
        if "status" in spec and kind != "error":
            raise ValueError("'status' applies to error rules only")
        if kind == "latency" and "seconds" not in spec:
            raise ValueError("a latency rule needs 'seconds'")
        rule = cls(kind)
        if "method" in spec:
            methods = [spec["method"]] if isinstance(spec["method"], str) else spec["method"]
            rule.methods = frozenset(str(m).upper() for m in methods)
        if "path" in spec:
            rule.path = re.compile(spec["path"])
        rule.after = _number(spec, "after", 0.0)
        rule.duration = _number(spec, "for", None)
        rule.seconds = _number(spec, "seconds", None)
        if "rate" in spec:
            rule.rate = _number(spec, "rate", None)
            if not 0 <= rule.rate <= 1:
                raise ValueError("'rate' is a probability between 0 and 1")
        if "every" in spec:
            if not isinstance(spec["every"], int) or spec["every"] < 1:
                raise ValueError("'every' is a positive integer")
            rule.every = spec["every"]
        if "requests" in spec:
            numbers = spec["requests"]
            if not isinstance(numbers, list) or not all(isinstance(n, int) and n >= 1 for n in numbers):
                raise ValueError("'requests' is a list of 1-based request numbers")
            rule.requests = frozenset(numbers)
        if "status" in spec:
            if not isinstance(spec["status"], int) or not 100 <= spec["status"] <= 599:
                raise ValueError("'status' is an HTTP status code")
            rule.status = spec["status"]
        return rule

    def matches(self, method: str, target: str, elapsed: float) -> bool:
        if self.methods is not None and method.upper() not in self.methods:
            return False
        if self.path is not None and not self.path.search(target):
            return False
        if elapsed < self.after:
            return False
        return self.duration is None or elapsed < self.after + self.duration

    def fires(self, dice: random.Random) -> bool:
        """Count one more matching request; decide whether it is faulted."""
        self.matched += 1
        if self.rate is not None:
            return dice.random() < self.rate
        if self.every is not None:
            return self.matched % self.every == 0
        if self.requests is not None:
            return self.matched in self.requests
        return True


def _number(spec: dict[str, Any], key: str, default: float | None) -> float | None:
    if key not in spec:
        return default
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"'{key}' is a non-negative number")
    return float(value)


def parse_rules(rules: Any) -> list[Rule]:
    if not isinstance(rules, list):
        raise ValueError("'rules' is a list of rule objects")
    return [Rule.from_dict(spec) for spec in rules]


# --------------------------------------------------------------------------- the proxy


class _Upstream:
    """The upstream connection of one client connection, (re)opened when needed."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> bool:
        """Make sure a live connection exists; True when an existing one is reused."""
        reader, writer = self.reader, self.writer
        if reader and writer and not writer.is_closing() and not reader.at_eof() and reader.exception() is None:
            return True
        self.close()
        try:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=MAX_HEAD)
        except OSError as exc:
            raise UpstreamError(f"cannot connect to upstream {self.host}:{self.port}: {exc}") from None
        return False

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError as exc:
            raise UpstreamError(f"upstream connection failed while sending: {exc}") from None

    async def response_head(self) -> Response:
        assert self.reader is not None
        try:
            raw = await read_head(self.reader)
            if raw is None:
                raise UpstreamError("upstream closed the connection without answering")
            return Response.parse(raw, request=False)
        except (OSError, ProtocolError) as exc:
            raise UpstreamError(f"upstream failed before answering: {exc}") from None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class FaultProxy:
    """The proxy's server and state. `start()` runs it on its own event loop in a thread;
    rules and stats are shared with that thread under a lock."""

    def __init__(self, upstream: str, *, port: int = 0, host: str = "127.0.0.1",
                 rules: list[dict[str, Any]] | None = None, seed: int = 0,
                 tls_cert: str | None = None, tls_key: str | None = None):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = f"http://{parts.hostname}:{parts.port}"
        self._upstream_address = (parts.hostname, parts.port)
        self.host, self.port = host, port
        self._tls: ssl.SSLContext | None = None
        if tls_cert or tls_key:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(tls_cert or "", tls_key)
        self._lock = threading.Lock()
        self._rule_specs: list[dict[str, Any]] = []
        self._rules: list[Rule] = []
        self._seed = seed
        self._dice = random.Random(seed)
        self._origin = time.monotonic()
        self._clear_stats()
        self.set_rules(rules or [], seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- public API

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> FaultProxy:
        """Serve from a background thread; return once the port is listening."""
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("fault proxy did not start listening")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def set_rules(self, rules: list[dict[str, Any]], seed: int = 0) -> None:
        """Replace the rules; restart the time origin, the per-rule counters and the dice."""
        parsed = parse_rules(rules)
        with self._lock:
            self._rule_specs, self._rules, self._seed = list(rules), parsed, seed
            self._dice = random.Random(seed)
            self._origin = time.monotonic()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self._requests, "forwarded": self._forwarded, "faulted": dict(self._faulted),
                    "by_route": {route: dict(counts) for route, counts in self._routes.items()},
                    "connections": self._connections}

    def reset(self) -> None:
        """Clear stats and rules (back to a transparent proxy)."""
        self.set_rules([], 0)
        with self._lock:
            self._clear_stats()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every open connection, then end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- state

    def _clear_stats(self) -> None:
        self._requests = self._forwarded = self._connections = 0
        self._faulted = dict.fromkeys(KINDS, 0)
        self._routes: dict[str, dict[str, int]] = {}

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)

    def _decide(self, request: Request) -> Rule | None:
        """Record the request; return the rule whose fault it gets, if any. The first rule whose
        filters match decides alone: if its trigger does not fire, the request passes through."""
        with self._lock:
            self._requests += 1
            route = self._routes.setdefault(f"{request.method} {request.path}", {"seen": 0, "faulted": 0})
            route["seen"] += 1
            elapsed = time.monotonic() - self._origin
            rule = next((r for r in self._rules if r.matches(request.method, request.target, elapsed)), None)
            if rule is None or not rule.fires(self._dice):
                return None
            self._faulted[rule.kind] += 1
            route["faulted"] += 1
            return rule

    # ---- event loop

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(asyncio.start_server(
                self._serve_client, self.host, self.port, ssl=self._tls, limit=MAX_HEAD))
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: requests in turn (keep-alive), each answered before the next is read."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream = _Upstream(*self._upstream_address)
        counted = False
        try:
            while True:
                try:
                    raw = await read_head(reader)
                    if raw is None:
                        return
                    request = Request.parse(raw, request=True)
                    request.framing()
                except ProtocolError as exc:
                    writer.write(simple_response(400, f"fault-proxy: {exc}\n".encode(), "text/plain",
                                                 keep_alive=False))
                    await writer.drain()
                    return
                if request.path.startswith(CONTROL_PREFIXES):
                    keep_alive = await self._answer_control(request, reader, writer)
                else:
                    if not counted:
                        counted = True
                        self._count("_connections")
                    self._answer_expect(request, writer)
                    keep_alive = await self._exchange(request, self._decide(request), reader, writer, upstream)
                if not keep_alive:
                    return
        except (OSError, ProtocolError, UpstreamError, asyncio.TimeoutError):
            pass  # a client or upstream that left mid-message: nothing left to tell anyone
        finally:
            upstream.close()
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    def _answer_expect(request: Request, writer: asyncio.StreamWriter) -> None:
        """Say `100 Continue` ourselves: the body is read before the upstream sees the request."""
        if "100-continue" in request.tokens("expect") and request.framing() != ("none", 0):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _exchange(self, request: Request, rule: Rule | None, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, upstream: _Upstream) -> bool:
        """Apply the fault (if any) to one request; True if the client connection stays open."""
        kind = rule.kind if rule else None
        if rule is not None and kind in ("error", "reset", "blackhole"):
            async for _ in body_pieces(reader, request.framing()):
                pass  # read and dropped: the upstream never sees it
            if kind == "error":
                body = f"fault-proxy: injected {rule.status}\n".encode()
                writer.write(simple_response(rule.status, body, "text/plain; charset=utf-8",
                                             keep_alive=request.keep_alive, extra=("X-Fault-Proxy: error",)))
                await writer.drain()
                return request.keep_alive
            if kind == "reset":
                abort_with_reset(writer)
                return False
            await self._hold(reader, rule.seconds)
            return False
        if rule is not None and kind == "latency":
            await asyncio.sleep(rule.seconds or 0)
        return await self._forward(request, reader, writer, upstream, drop=kind == "drop-response")

    @staticmethod
    async def _hold(reader: asyncio.StreamReader, seconds: float | None) -> None:
        """A black hole: swallow whatever the client sends until it leaves (or `seconds` pass)."""
        async def swallow() -> None:
            while await reader.read(PIECE):
                pass
        try:
            await asyncio.wait_for(swallow(), seconds)
        except (asyncio.TimeoutError, OSError):
            pass

    async def _forward(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       upstream: _Upstream, *, drop: bool) -> bool:
        """Send the request upstream and relay the response (or, with `drop`, read it and RST)."""
        framing = request.framing()
        body: bytes | None = None
        if framing[0] == "none" or (framing[0] == "length" and framing[1] <= MAX_BUFFERED):
            body = await read_body(reader, framing)
        try:
            response = await self._send(request, body, reader, upstream)
        except UpstreamError as exc:
            upstream.close()
            writer.write(simple_response(502, f"fault-proxy: {exc}\n".encode(), "text/plain",
                                         keep_alive=False, extra=("X-Fault-Proxy: bad-gateway",)))
            await writer.drain()
            return False
        expected_continue = "100-continue" in request.tokens("expect")
        while 100 <= response.status < 200 and response.status != 101:
            if not drop and not (expected_continue and response.status == 100):  # we said 100 already
                writer.write(response.raw)
            response = await upstream.response_head()
        if not drop:
            writer.write(response.raw)
        assert upstream.reader is not None
        response_framing = body_framing(response, request=False, method=request.method, status=response.status)
        try:
            async for piece in body_pieces(upstream.reader, response_framing):
                if not drop:
                    writer.write(piece)
                    await writer.drain()
        except (ProtocolError, OSError):
            upstream.close()
            abort_with_reset(writer)  # the response is cut: the client must not take it as complete
            return False
        reusable = response_framing[0] != "close" and response.status != 101
        if not (reusable and request.keep_alive and response.keep_alive):
            upstream.close()
        if drop:
            abort_with_reset(writer)
            return False
        await writer.drain()
        return reusable and request.keep_alive and response.keep_alive

    async def _send(self, request: Request, body: bytes | None, reader: asyncio.StreamReader,
                    upstream: _Upstream) -> Response:
        """Send one request; return the response head. A kept-alive upstream connection the upstream
        closed meanwhile (idle timeout) is retried once on a new one, if the body was kept."""
        for attempt in (1, 2):
            reused = await upstream.open()
            if attempt == 1:
                self._count("_forwarded")
            try:
                if body is not None:
                    await upstream.send(request.raw + body)
                else:
                    await upstream.send(request.raw)
                    async for piece in body_pieces(reader, request.framing()):
                        await upstream.send(piece)
                return await upstream.response_head()
            except UpstreamError:
                upstream.close()
                if not (reused and body is not None and attempt == 1):
                    raise
        raise AssertionError("unreachable")

    async def _answer_control(self, request: Request, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> bool:
        body = await read_body(reader, request.framing(), MAX_CONTROL_BODY)
        action = request.path.split("/", 2)[2].strip("/")
        status, answer = self._control(request.method, action, body)
        writer.write(simple_response(status, json.dumps(answer).encode(), "application/json",
                                     keep_alive=request.keep_alive))
        await writer.drain()
        return request.keep_alive

    def _control(self, method: str, action: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if action == "stats":
            return 200, self.stats()
        if action == "rules" and method == "GET":
            with self._lock:
                return 200, {"rules": self._rule_specs, "seed": self._seed}
        if action in ("rules", "reset") and method != "POST":
            return 405, {"error": f"POST /_proxy/{action}"}
        if action == "reset":
            self.reset()
            return 200, {"ok": True}
        if action == "rules":
            try:
                payload = json.loads(body or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError('the body is {"rules": [...], "seed": n}')
                seed = payload.get("seed", 0)
                if not isinstance(seed, int):
                    raise ValueError("'seed' is an integer")
                self.set_rules(payload.get("rules", []), seed)
            except (ValueError, re.error) as exc:
                return 400, {"error": str(exc)}
            return 200, {"ok": True, "rules": len(self._rules)}
        return 404, {"error": f"unknown control action {action!r}; known: stats, rules, reset"}


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="the peer to front, http://127.0.0.1:PORT")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rules", default="[]", help='JSON: a list of rules, or {"rules": [...], "seed": n}')
    parser.add_argument("--seed", type=int, default=None, help="seed of the dice for `rate` rules (default 0)")
    parser.add_argument("--tls-cert", help="PEM certificate: terminate TLS for clients (upstream stays http)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    rules = json.loads(args.rules)
    seed = 0
    if isinstance(rules, dict):
        rules, seed = rules.get("rules", []), rules.get("seed", 0)
    if args.seed is not None:
        seed = args.seed
    try:
        proxy = FaultProxy(args.upstream, port=args.port, rules=rules, seed=seed,
                           tls_cert=args.tls_cert, tls_key=args.tls_key)
    except ValueError as exc:
        parser.error(str(exc))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    proxy.start()
    print(json.dumps({"url": proxy.url, "upstream": proxy.upstream, "control": f"{proxy.url}/_proxy"}), flush=True)
    while not stopping.wait(1.0):
        pass
    proxy.stop()


if __name__ == "__main__":
    main()
