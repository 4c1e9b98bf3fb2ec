"""Reading tokens: claims without signature check, VOs, and clear errors for garbage."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from prefect_egi.tasks import MalformedTokenError, parse_token
from prefect_egi.tasks.checkin.tokens import vos_from_entitlements

DATA = Path(__file__).parent / "data" / "checkin"
NOTEBOOKS_MEMBER = "urn:mace:egi.eu:group:vo.notebooks.egi.eu:role=member#aai.egi.eu"


def unsigned_jwt(claims: dict, header: dict | None = None) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part(header or {'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_claims_of_a_checkin_jwt_are_read_without_signature(checkin):
    raw = checkin.login()["access_token"]
    token = parse_token(raw, "test")
    assert token.is_jwt
    assert token.claims.issuer == checkin.issuer
    assert token.claims.subject.endswith("@egi.eu")
    assert token.claims.username == "alice"
    assert 3500 < token.seconds_left() <= 3600
    assert token.claims.vos == ["eosc-synergy.eu", "vo.access.egi.eu", "vo.notebooks.egi.eu"]


def test_vos_follow_fedcloudclient_entitlement_rule():
    entitlements = [
        "urn:mace:egi.eu:group:vo.access.egi.eu:role=member#aai.egi.eu",
        "urn:mace:egi.eu:group:vo.access.egi.eu:role=vm_operator#aai.egi.eu",
        "urn:mace:egi.eu:group:biomed:team:sub:role=member#aai.egi.eu",
        "urn:mace:egi.eu:group:other:role=manager#aai.egi.eu",
        "urn:mace:example.org:group:x:role=member#aai.egi.eu",
    ]
    assert vos_from_entitlements(entitlements) == ["biomed", "vo.access.egi.eu"]


def test_bearer_prefix_and_whitespace_are_tolerated():
    raw = unsigned_jwt({"sub": "s", "exp": int(time.time()) + 100})
    token = parse_token(f"  Bearer {raw}\n", "pasted")
    assert token.value == raw
    assert isinstance(token.secret, SecretStr)
    assert raw not in repr(token)


def test_opaque_tokens_are_accepted_with_unknown_expiry():
    token = parse_token("2YotnFZFEjr1zCsicMWpAA", "opaque")
    assert not token.is_jwt
    assert token.expires_at is None and token.seconds_left() is None
    assert token.is_fresh(margin=10_000) and not token.is_expired()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "is empty"),
        ("   \n\t ", "is empty"),
        (None, "is empty"),
        ("not a token at all", "does not contain an access token"),
        ('{"access_token": "x"}', "does not contain an access token"),
        ("eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln", "payload is not base64url JSON"),
        ("eyJhbGciOiJSUzI1NiJ9.WzEsMl0.c2ln", "payload is not a JSON object"),
    ],
)
def test_garbage_gets_a_clear_error_naming_the_source(raw, expected):
    with pytest.raises(MalformedTokenError) as caught:
        parse_token(raw, "environment variable OIDC_ACCESS_TOKEN")
    message = str(caught.value)
    assert "environment variable OIDC_ACCESS_TOKEN" in message
    assert expected in message
    if raw and raw.strip():
        assert raw.strip() not in message  # the value itself is never echoed


def test_jwt_without_alg_or_with_bad_exp_is_malformed():
    with pytest.raises(MalformedTokenError, match="no 'alg'"):
        parse_token(unsigned_jwt({"sub": "x"}, header={"typ": "JWT"}), "t")
    with pytest.raises(MalformedTokenError, match="'exp' claim is not a number"):
        parse_token(unsigned_jwt({"exp": "tomorrow"}), "t")


def test_the_groups_are_read_from_both_documented_claims():
    """EGI's guide for Service Providers names `eduperson_entitlement` the claim of a user's groups;
    EGI-Federation/documentation#799 deprecates it for `entitlements`, which real Check-in tokens
    and userinfo answers carry (both quoted in tests/data/checkin/egi-docs-checkin-groups-claims.md).
    A token with either claim has its VOs read."""
    text = (DATA / "egi-docs-checkin-groups-claims.md").read_text()
    documented = set(re.findall(r"\*\*OIDC claim\(s\)\*\* \| `(\w+)`", text))
    documented |= set(re.findall(r"Add the `(\w+)` claim", text))
    assert documented == {"eduperson_entitlement", "entitlements"}
    for claim in documented:
        token = parse_token(unsigned_jwt({"sub": "s", claim: [NOTEBOOKS_MEMBER]}), claim)
        assert token.claims.vos == ["vo.notebooks.egi.eu"], claim


def test_entitlements_of_both_claims_are_merged_and_scim_values_are_read():
    """RFC 7643 §4.1.2: an SCIM entitlement may be an object with a `value`; RFC 9068 §2.2.3.1 names
    the claim `entitlements`. Duplicates across the two claims count once; junk is skipped."""
    from prefect_egi.tasks.checkin.tokens import entitlements_of

    access = "urn:mace:egi.eu:group:vo.access.egi.eu:role=member#aai.egi.eu"
    claims = {"entitlements": [{"value": NOTEBOOKS_MEMBER}, access, 42, {"type": "x"}],
              "eduperson_entitlement": [access]}
    assert entitlements_of(claims) == (NOTEBOOKS_MEMBER, access)
    assert entitlements_of({"entitlements": access}) == (access,)
    assert parse_token(unsigned_jwt({"sub": "s", **claims})).claims.vos == ["vo.access.egi.eu", "vo.notebooks.egi.eu"]


def test_a_mytoken_given_as_an_access_token_is_named_as_such():
    """A mytoken JWT (`token_type: mytoken`, oidc-mytoken/api v0) is not an access token: say what it is."""
    mytoken = unsigned_jwt({"ver": "0.7", "token_type": "mytoken", "iss": "https://mytoken.data.kit.edu",
                            "exp": int(time.time()) + 3600, "seq_no": 0})
    with pytest.raises(MalformedTokenError, match="holds a mytoken, not an access token.*MYTOKEN"):
        parse_token(mytoken, "environment variable OIDC_ACCESS_TOKEN")
