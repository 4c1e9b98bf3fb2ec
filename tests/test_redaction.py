"""Log redaction and exception scrubbing, on plain `logging` (Prefect-free)."""

from __future__ import annotations

import logging
import pickle
import secrets
from datetime import datetime, timezone

import pytest

from prefect_egi.tasks import NoTokenError, TokenEndpointError, TokenExpiredError, redact_errors, register_secret
from prefect_egi.tasks.checkin.errors import SourceAttempt
from prefect_egi.tasks.redaction import MASK, install_log_redaction, redact, redact_exception


@pytest.fixture
def secret() -> str:
    value = "tok-" + secrets.token_urlsafe(24)
    install_log_redaction()
    register_secret(value)
    return value


def test_messages_and_arguments_are_masked(secret, caplog):
    logger = logging.getLogger("some.library")
    with caplog.at_level(logging.INFO):
        logger.info("header Authorization: Bearer %s", secret)
        logger.info({"token": secret})
        logger.info(f"inline {secret} and {secret}")
    assert secret not in caplog.text
    assert caplog.text.count(MASK) == 4


def test_tracebacks_are_masked(secret, caplog):
    logger = logging.getLogger("some.library")
    try:
        try:
            raise KeyError(secret)
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError:
        with caplog.at_level(logging.ERROR):
            logger.exception("failed")
    assert "KeyError" in caplog.text and "RuntimeError: outer" in caplog.text
    assert secret not in caplog.text


def test_short_values_are_not_registered():
    register_secret("abc")
    assert redact("abc abc") == "abc abc"


def test_longest_secret_is_masked_whole():
    short = "k-" + secrets.token_hex(6)
    long = short + "-and-more-" + secrets.token_hex(6)
    register_secret(short)
    register_secret(long)
    assert redact(f"{long} / {short}") == f"{MASK} / {MASK}"


def test_exceptions_and_their_causes_are_scrubbed_in_place(secret):
    cause = ValueError(f"bad {secret}")
    exc = RuntimeError("wrapper", {"token": secret})
    exc.__cause__ = cause
    exc.add_note(f"note {secret}")
    assert redact_exception(exc) is exc
    assert secret not in str(exc) and secret not in str(cause) and secret not in exc.__notes__[0]


def test_decorator_scrubs_sync_and_async(secret):
    import asyncio

    @redact_errors
    def sync_fn():
        raise ValueError(secret)

    @redact_errors
    async def async_fn():
        raise ValueError(secret)

    with pytest.raises(ValueError, match=r"^\*\*\*$"):
        sync_fn()
    with pytest.raises(ValueError, match=r"^\*\*\*$"):
        asyncio.run(async_fn())


def test_checkin_errors_survive_pickling():
    """Prefect pickles a failed task's exception into its result."""
    errors = [
        NoTokenError([SourceAttempt("environment", "not set", "export it")], transient=True),
        TokenExpiredError("token file /x", datetime(2026, 1, 1, tzinfo=timezone.utc), [SourceAttempt("a", "b")]),
        TokenEndpointError("invalid_grant", "Invalid refresh token", "https://issuer/token", "get a new one"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    assert pickle.loads(pickle.dumps(errors[0])).transient is True
