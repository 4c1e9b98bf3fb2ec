"""A real DiracX 0.7 server on 127.0.0.1 (the recipe verified in shared notes).

uvicorn serving `diracx.testing.routers:create_app` (SQLite databases, the
job-parameters DB on SQLite too), a git configuration repository with one VO,
and moto as the S3 sandbox store. Most tests need no identity provider:
access tokens are minted with the server's own signing key and written into
DiracX credentials files (what `dirac login` writes):

- a user (NormalUser) — what flows use;
- a "pilot" (JobAdministrator) — what the local site's pilot (dirac_pilot.py) uses to move
  jobs; its ready line also names the signing keys (`keystore`), the Registry (`registry`) and
  the JobDB URL (`job_db`), which the pilot needs to act as a job's owner and read JDLs.

With `--idp-url` (our Check-in peer's issuer) and a user's Check-in `sub` in
`--vo VO:GROUP:USER:SUB`, the device-flow login (`dirac login`) works end to end.

With `--record-searches FILE` every job search (`POST /api/jobs/search`) is
appended to FILE as one JSON line — time, page, per_page and the JobIDs asked
about — so a test can count status requests per flow and per poll cycle from the
server's side, whatever the client claims.

Run: `python diracx_peer.py` prints one JSON line (URL, VO, group, credentials
files) and supervises the two servers until terminated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from prefect_egi.sandbox.peers import PORT_TAKEN


SEARCH_LOG = "DIRACX_PEER_SEARCH_LOG"  # where `recording_app` appends the searches


def recording_app():  # uvicorn --factory diracx_peer:recording_app (env: DIRACX_PEER_SEARCH_LOG=FILE)
    """The DiracX test app behind a pure ASGI layer that records each job search."""
    from urllib.parse import parse_qs

    from diracx.testing.routers import create_app

    app = create_app()
    log = open(os.environ[SEARCH_LOG], "a", buffering=1)  # noqa: SIM115 (open for the server's life)

    async def recorded(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/api/jobs/search":
            return await app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        query = parse_qs(scope.get("query_string", b"").decode())
        try:
            search = json.loads(body or b"{}").get("search") or []
        except ValueError:
            search = []
        ids = next((sorted(int(v) for v in term.get("values", [])) for term in search
                    if term.get("parameter") == "JobID" and term.get("operator") == "in"), None)
        log.write(json.dumps({"t": round(time.time(), 3), "page": int(query.get("page", ["1"])[0]),
                              "per_page": int(query.get("per_page", ["100"])[0]), "ids": ids,
                              "terms": sorted(t.get("parameter", "") for t in search)}) + "\n")
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await app(scope, replay, send)

    return recorded


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(*command: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {done.stderr[-800:]}")
    return done.stdout


def bin_path(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def mint(jwks_path: Path, issuer: str, vo: str, group: str, user: str, sub: str, properties: list[str],
         lifetime: int) -> str:
    from joserfc import jwt
    from joserfc.jwk import KeySet

    keys = KeySet.import_key_set(json.loads(jwks_path.read_text()))
    key = keys.keys[0]
    now = int(time.time())
    claims = {
        "sub": f"{vo}:{sub}", "vo": vo, "iss": issuer, "dirac_properties": properties, "jti": uuid.uuid4().hex,
        "preferred_username": user, "dirac_group": group, "exp": now + lifetime, "iat": now, "dirac_policies": {},
    }
    header = {"alg": key.alg or "EdDSA", "kid": key.kid}
    return jwt.encode(header, claims, key, algorithms=[header["alg"]])


def credentials_file(path: Path, token: str, lifetime: int) -> Path:
    path.write_text(json.dumps({"access_token": token, "refresh_token": None,
                                "expires_on": int(time.time()) + lifetime}))
    path.chmod(0o600)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workdir", help="kept across restarts (databases, config, keys)")
    parser.add_argument("--vo", action="append",
                        help="VO[:group[:user[:sub]]] to create (default egi.test:egi_user:alice); sub = the user's "
                             "subject at the identity provider")
    parser.add_argument("--idp-url", default="https://x.invalid", help="the VOs' OIDC issuer (device-flow login)")
    parser.add_argument("--idp-client-id", default="diracx", help="DiracX's client id at that issuer")
    parser.add_argument("--token-lifetime", type=int, default=7 * 24 * 3600)
    parser.add_argument("--record-searches", help="append every job search to this file (JSON lines)")
    args = parser.parse_args(argv)

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="diracx-peer-"))
    fresh = not (root / "cs" / "repo").exists()
    port = args.port or free_port()
    s3_port = free_port()
    url = f"http://127.0.0.1:{port}"
    vos = []
    for spec in args.vo or ["egi.test:egi_user:alice"]:
        vo, group, user, sub = (spec.split(":") + ["", "", ""])[:4]
        user = user or "alice"
        vos.append((vo, group or "egi_user", user, sub or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{user}@{vo}"))))
    python = sys.executable
    if fresh:
        (root / "keystore").mkdir(parents=True, exist_ok=True)
        (root / "db").mkdir(parents=True, exist_ok=True)
        run(python, "-m", "diracx.logic", "rotate-jwk", "--jwks-path", str(root / "keystore" / "jwks.json"))
        run(bin_path("dirac"), "internal", "generate-cs", str(root / "cs" / "repo"))
        for vo, group, user, sub in vos:
            run(bin_path("dirac"), "internal", "add-vo", str(root / "cs" / "repo"), f"--vo={vo}",
                f"--idp-url={args.idp_url}", f"--idp-client-id={args.idp_client_id}", f"--default-group={group}")
            run(bin_path("dirac"), "internal", "add-user", str(root / "cs" / "repo"), f"--vo={vo}",
                f"--group={group}", f"--sub={sub}", f"--preferred-username={user}")
        (root / "state.json").write_text(json.dumps({"vos": vos}))
    vos = json.loads((root / "state.json").read_text())["vos"]

    env = dict(os.environ)
    for line in run(python, "-m", "diracx.db", "generate-local-urls", str(root / "db")).splitlines():
        if line.startswith("export "):
            name, _, value = line[7:].partition("=")
            env[name] = value.strip().strip("'\"")
    from cryptography.fernet import Fernet

    state_key = root / "state-key"
    if not state_key.exists():
        state_key.write_bytes(Fernet.generate_key())
    env.update({
        "DIRACX_CONFIG_BACKEND_URL": f"git+file://{root / 'cs' / 'repo'}",
        "DIRACX_SERVICE_AUTH_TOKEN_KEYSTORE": f"file://{root / 'keystore' / 'jwks.json'}",
        "DIRACX_SERVICE_AUTH_STATE_KEY": state_key.read_text(),
        "DIRACX_SERVICE_AUTH_TOKEN_ISSUER": url,
        "DIRACX_SERVICE_AUTH_ALLOWED_REDIRECTS": json.dumps([f"{url}/docs/oauth2-redirect"]),
        "DIRACX_SANDBOX_STORE_BUCKET_NAME": "sandboxes",
        "DIRACX_SANDBOX_STORE_AUTO_CREATE_BUCKET": "true",
        "DIRACX_SANDBOX_STORE_S3_CLIENT_KWARGS": json.dumps({
            "endpoint_url": f"http://127.0.0.1:{s3_port}", "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing"}),
        "NO_PROXY": "127.0.0.1,localhost",
    })
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    children = [
        subprocess.Popen([bin_path("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], env=env,
                         stdout=(logs / "moto.log").open("ab"), stderr=subprocess.STDOUT),
        subprocess.Popen([python, "-m", "uvicorn", "--factory", *(
                            ["prefect_egi.sandbox.diracx_peer:recording_app"]
                            if args.record_searches else ["diracx.testing.routers:create_app"]),
                          "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                         env=env | ({SEARCH_LOG: str(Path(args.record_searches).resolve())}
                                    if args.record_searches else {}),
                         stdout=(logs / "uvicorn.log").open("ab"), stderr=subprocess.STDOUT),
    ]

    def stop(*_: object, code: int = 0) -> None:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
        sys.exit(code)

    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/.well-known/openid-configuration", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or any(c.poll() is not None for c in children):
            told = (logs / "uvicorn.log").read_text() + (logs / "moto.log").read_text()
            print(told[-2000:], file=sys.stderr)
            # a port chosen free was taken before the server bound it: the starter tries again
            stop(code=PORT_TAKEN if "address already in use" in told.lower() else 1)
        time.sleep(0.2)

    jwks = root / "keystore" / "jwks.json"
    credentials = {}
    for vo, group, name, sub in vos:
        user = mint(jwks, url, vo, group, name, sub, ["NormalUser"], args.token_lifetime)
        pilot = mint(jwks, url, vo, group, name, sub, ["NormalUser", "JobAdministrator"], args.token_lifetime)
        credentials[vo] = {
            "group": group,
            "username": name,
            "user": str(credentials_file(root / f"credentials-{vo}.json", user, args.token_lifetime)),
            "pilot": str(credentials_file(root / f"pilot-{vo}.json", pilot, args.token_lifetime)),
        }
    # what a site needs beside the pilot's credentials (dirac_pilot.py): the signing keys (to act as
    # a job's owner), the Registry (the owners' subjects) and the JobDB (the jobs' JDLs)
    print(json.dumps({"url": url, "vos": credentials, "workdir": str(root), "s3_port": s3_port,
                      "keystore": str(jwks), "registry": str(root / "cs" / "repo" / "default.yml"),
                      "job_db": env["DIRACX_DB_URL_JOBDB"]}), flush=True)
    while all(c.poll() is None for c in children):
        time.sleep(0.5)
    stop()


if __name__ == "__main__":
    main()
