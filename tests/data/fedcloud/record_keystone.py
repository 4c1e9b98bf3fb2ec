"""Record what a real Keystone answers to EGI Check-in federation (the source of
`keystone-30-federation.json`).

Runs OpenStack Keystone 30.0.0 (PyPI `keystone`) on SQLite in this process, configured
the way EGI's provider guide configures a FedCloud site
(docs.egi.eu/providers/cloud-compute/openstack/aai and .../vo-config): identity provider
`egi.eu` whose remote id is the Check-in issuer, `[openid] remote_id_attribute =
HTTP_OIDC_ISS`, one group per VO with the `member` role on the VO's project, and a
mapping whose rules match `OIDC-eduperson_entitlement` against the entitlement that
fedcloud-catchall-operations' `vo-mappings.yaml` lists for the VO. A small WSGI
middleware stands in for mod_auth_openidc (`OIDCClaimPrefix "OIDC-"`,
`OIDCClaimDelimiter ;`): it sets the claims of the bearer token into the environment.

Then it plays what keystoneauth1's `v3.OidcAccessToken` sends (federate, list projects,
rescope) for a user the mapping maps and one it does not, and writes the exchanges
(tokens replaced by placeholders) to `keystone-30-federation.json`.

Run (not part of the test suite; needs a virtual environment with `keystone==30.0.0`):
    python -m venv /tmp/ks && /tmp/ks/bin/pip install keystone==30.0.0
    /tmp/ks/bin/python tests/data/fedcloud/record_keystone.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

ISSUER = "https://aai.egi.eu/auth/realms/egi"
FEDERATION = "/v3/OS-FEDERATION/identity_providers/egi.eu/protocols/openid/auth"
# vo-mappings.yaml (fedcloud-catchall-operations be0106b): vo.access.egi.eu → role=vm_operator
ACCESS_ENTITLEMENT = "urn:mace:egi.eu:group:vo.access.egi.eu:role=vm_operator#aai.egi.eu"
# The claims mod_auth_openidc would have from introspecting each bearer token.
CLAIMS = {
    "token-of-alice": {"sub": "0f4b2a0c8d3e4e1b9f5a6c7d8e9f0a1b@egi.eu", "email": "alice@example.org",
                       "eduperson_entitlement": ["urn:mace:egi.eu:group:vo.access.egi.eu:role=member#aai.egi.eu",
                                                 ACCESS_ENTITLEMENT]},
    # a valid token, a member of the VO — but not a vm_operator: no rule matches
    "token-of-carol": {"sub": "c4r01c4r01c4r01c4r01c4r01c4r01c4@egi.eu", "email": "carol@example.org",
                       "eduperson_entitlement": ["urn:mace:egi.eu:group:vo.access.egi.eu:role=member#aai.egi.eu"]},
}
HERE = Path(__file__).resolve().parent


def oidc_front(app):
    """What mod_auth_openidc (AuthType oauth20, OIDCClaimPrefix "OIDC-", OIDCClaimDelimiter ;)
    hands Keystone for the federation location: the token's claims in the environment."""
    def middleware(environ, start_response):
        if environ.get("PATH_INFO") == FEDERATION:
            bearer = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").strip()
            claims = CLAIMS.get(bearer)
            if claims is None:
                start_response("401 Unauthorized", [("WWW-Authenticate", 'Bearer error="invalid_token"')])
                return [b""]
            environ.update({"REMOTE_USER": claims["sub"], "HTTP_OIDC_ISS": ISSUER, "HTTP_OIDC_SUB": claims["sub"],
                            "HTTP_OIDC_EMAIL": claims["email"],
                            "OIDC-eduperson_entitlement": ";".join(claims["eduperson_entitlement"])})
        return app(environ, start_response)
    return middleware


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def call(base: str, method: str, path: str, body=None, token: str | None = None, bearer: str | None = None):
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(base + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(request) as answer:
            status, got, text = answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        status, got, text = error.code, dict(error.headers), error.read()
    return status, got, json.loads(text) if text else None


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="keystone-30-"))
    conf = work / "keystone.conf"
    conf.write_text(f"""[DEFAULT]
[database]
connection = sqlite:///{work}/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = {work}/fernet-keys
[fernet_receipts]
key_repository = {work}/fernet-keys
[credential]
key_repository = {work}/credential-keys
[auth]
methods = password,token,openid,application_credential
[openid]
remote_id_attribute = HTTP_OIDC_ISS
""")
    manage = [str(Path(sys.executable).with_name("keystone-manage")), "--config-file", str(conf)]
    user = os.environ.get("USER", "root")
    for step in (["db_sync"], ["fernet_setup", "--keystone-user", user, "--keystone-group", user],
                 ["credential_setup", "--keystone-user", user, "--keystone-group", user]):
        subprocess.run(manage + step, check=True, capture_output=True)
    server = make_server("127.0.0.1", 0, lambda e, s: app(e, s), handler_class=Quiet)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    subprocess.run(manage + ["bootstrap", "--bootstrap-password", "admin-password",
                             "--bootstrap-public-url", f"{base}/v3", "--bootstrap-region-id", "RegionOne"],
                   check=True, capture_output=True)
    os.environ["OS_KEYSTONE_CONFIG_FILES"] = str(conf)
    from keystone.server.wsgi import initialize_public_application

    app = oidc_front(initialize_public_application())
    threading.Thread(target=server.serve_forever, daemon=True).start()

    # the site's administrator configures federation as EGI's guide says
    _, headers, _ = call(base, "POST", "/v3/auth/tokens", {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": "admin-password"}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
    admin = headers["X-Subject-Token"]
    call(base, "PUT", "/v3/OS-FEDERATION/identity_providers/egi.eu",
         {"identity_provider": {"remote_ids": [ISSUER], "enabled": True}}, admin)
    project = call(base, "POST", "/v3/projects", {"project": {"name": "vo.access.egi.eu", "domain_id": "default"}},
                   admin)[2]["project"]
    group = call(base, "POST", "/v3/groups", {"group": {"name": "vo.access.egi.eu", "domain_id": "default"}}, admin)[2]["group"]
    member = next(r for r in call(base, "GET", "/v3/roles?name=member", token=admin)[2]["roles"])
    call(base, "PUT", f"/v3/projects/{project['id']}/groups/{group['id']}/roles/{member['id']}", token=admin)
    rules = [{"local": [{"user": {"name": "{0}", "email": "{1}"}, "group": {"id": group["id"]}}],
              "remote": [{"type": "HTTP_OIDC_SUB"}, {"type": "HTTP_OIDC_EMAIL"},
                         {"type": "HTTP_OIDC_ISS", "any_one_of": [ISSUER]},
                         {"type": "OIDC-eduperson_entitlement", "regex": True,
                          "any_one_of": [f"^{ACCESS_ENTITLEMENT}$"]}]}]
    call(base, "PUT", "/v3/OS-FEDERATION/mappings/egi-mapping", {"mapping": {"rules": rules}}, admin)
    call(base, "PUT", "/v3/OS-FEDERATION/identity_providers/egi.eu/protocols/openid",
         {"protocol": {"mapping_id": "egi-mapping"}}, admin)

    placeholders: dict[str, str] = {}

    def hide(value: str, name: str) -> str:
        return placeholders.setdefault(value, f"<{name}>")

    exchanges = []

    def record(title: str, method: str, path: str, body=None, token=None, bearer=None, token_name="token"):
        status, headers, answer = call(base, method, path, body, token, bearer)
        subject = headers.get("X-Subject-Token")
        kept = {k: v for k, v in headers.items() if k.lower() in ("www-authenticate", "content-type")}
        if subject:
            kept["X-Subject-Token"] = hide(subject, token_name)
        request = {"method": method, "path": path}
        if bearer:
            request["headers"] = {"Authorization": "Bearer <Check-in access token>"}
        if token:
            request["headers"] = {"X-Auth-Token": placeholders[token]}
        if body is not None:
            request["body"] = json.loads(json.dumps(body).replace(token or "\0", placeholders.get(token, "")))
        exchanges.append({"title": title, "request": request,
                          "response": {"status": status, "headers": kept, "body": answer}})
        return status, subject, answer

    started = time.time()
    _, unscoped, _ = record("federation: a token whose entitlement the mapping maps", "POST", FEDERATION,
                            bearer="token-of-alice", token_name="unscoped token")
    record("the projects the unscoped token may scope to", "GET", "/v3/auth/projects", token=unscoped)
    record("rescoping the unscoped token to the VO's project (keystoneauth's second step)", "POST",
           "/v3/auth/tokens", {"auth": {"identity": {"methods": ["token"], "token": {"id": unscoped}},
                                        "scope": {"project": {"id": project["id"]}}}},
           token=unscoped, token_name="scoped token")
    record("federation: a valid token whose entitlements match no rule (member, not vm_operator)", "POST",
           FEDERATION, bearer="token-of-carol")
    document = {
        "source": "OpenStack Keystone 30.0.0 (PyPI keystone), SQLite, fernet tokens, recorded by record_keystone.py",
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "keystone_token_expiration_seconds": 3600,
        "mapping": {"rules": rules, "note": "group id as created on this Keystone"},
        "exchanges": exchanges,
    }
    (HERE / "keystone-30-federation.json").write_text(json.dumps(document, indent=2) + "\n")
    server.shutdown()


if __name__ == "__main__":
    main()
