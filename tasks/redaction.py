"""Keep secrets out of logs: a process-wide registry of live secret values and a
log-record factory that replaces them with `***`.

Prefect stores every log record of a run (and every `print` under `log_prints`)
verbatim in its database; it only filters `PREFECT_API_KEY`. A record factory,
rather than a handler filter, sees every record of every logger — Prefect's API
and console handlers, pytest's capture, a user's own handlers — before any
handler formats it, so redaction cannot be bypassed by a handler configured later.

What gets registered: every token the Check-in provider hands out and every
secret field of our blocks. Values shorter than `MIN_SECRET_LENGTH` are ignored
so that a short password cannot turn ordinary words into `***`.
"""

from __future__ import annotations

import functools
import logging
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import SecretStr

MASK = "***"
MIN_SECRET_LENGTH = 8

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first, so a secret containing another is masked whole
_installed = False


def register_secret(value: str | SecretStr | None) -> None:
    """Remember a secret so that it is masked wherever it would be logged."""
    global _ordered
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def registered_secret_count() -> int:
    return len(_ordered)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def contains_secret(text: str) -> bool:
    return any(secret in text for secret in _ordered)


def _redact_record(record: logging.LogRecord) -> None:
    if not _ordered:
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken %-format: leave it to logging's own error report
        message = str(record.msg)
    if contains_secret(message):
        record.msg, record.args = redact(message), ()
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if contains_secret(text):
            # Formatters print exc_text when it is set and exc_info is gone.
            record.exc_text, record.exc_info = redact(text), None
    if record.exc_text and contains_secret(record.exc_text):
        record.exc_text = redact(record.exc_text)
    if record.stack_info and contains_secret(record.stack_info):
        record.stack_info = redact(record.stack_info)


def install_log_redaction() -> None:
    """Wrap the log-record factory once per process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact_record(record)
            return record

        logging.setLogRecordFactory(redacting_factory)
        _installed = True


def redact_exception(exc: BaseException) -> BaseException:
    """Mask registered secrets in `exc`'s arguments (and its causes), in place.

    Prefect turns a raised exception into the run's state message, its events
    and — when results persist — a pickled result, all before any hook of ours
    runs. Cleaning the exception object where it is raised is the one place that
    covers all of them.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _ordered and contains_secret(repr(current.args)):
            current.args = tuple(_redact_value(arg) for arg in current.args)
        notes = getattr(current, "__notes__", None)
        if notes:
            current.__notes__ = [redact(str(note)) for note in notes]
        current = current.__cause__ or current.__context__
    return exc


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool, type(None))):
        return value
    text = str(value)
    return redact(text) if contains_secret(text) else value


F = TypeVar("F", bound=Callable[..., Any])


def redact_errors(fn: F) -> F:
    """Decorator for flows and tasks: exceptions leave it with secrets masked.

    Put it *under* `@flow`/`@task` so that Prefect records the cleaned exception
    (in a module without `from __future__ import annotations`: Prefect resolves a
    flow's parameter types through the wrapper)::

        @flow
        @redact_errors
        def my_flow(): ...
    """
    import inspect

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except BaseException as exc:
                raise redact_exception(exc)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            raise redact_exception(exc)

    return wrapper  # type: ignore[return-value]


def register_all(values: Iterable[str | SecretStr | None]) -> None:
    for value in values:
        register_secret(value)
