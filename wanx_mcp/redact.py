"""The one redaction layer: secrets out of every text that comes from upstream or goes to a log.

Three things never pass: the registered secrets (the API key, the HTTP token; plain or percent-encoded),
any ``Bearer <token>`` credential, and, in log lines, the query string of a URL or path (OSS signs its links there:
``?Expires=...&OSSAccessKeyId=...&Signature=...``). :func:`install` makes every log record of the process
redacted when it is created, so no handler, formatter or capture (uvicorn's, pytest's) sees the original.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import quote

MASK = "***"
#: Shorter secrets are not registered: replacing them would mangle ordinary text.
MIN_SECRET_CHARS = 8
#: A bearer credential: a word of 8 or more characters with a digit (so "a flag bearer marching" stays).
_BEARER = re.compile(r"(?i)\b(bearer)(\s+|%20|\+)(?=[^\s\"'<>,;&]*\d)[^\s\"'<>,;&]{8,}")
#: A URL or path (a word with a "/" before its "?") and its query; tried only where a word starts, so linear.
_URL_QUERY = re.compile(r"(?<![^\s\"'<>])([^\s\"'<>?]*/[^\s\"'<>?]*)\?[^\s#\"'<>]*")

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_installed = False


def register(*secrets: str | None) -> None:
    """Add ``secrets`` (None and short ones are skipped) to what :func:`scrub` removes, process-wide."""
    global _secrets
    found = {s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}
    found |= {quote(s, safe="") for s in found}
    with _lock:
        _secrets = _secrets | found


def scrub(text: str) -> str:
    """``text`` without registered secrets or bearer credentials (URLs otherwise kept usable)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return _BEARER.sub(rf"\1\2{MASK}", text) if "bearer" in text.lower() else text


def for_log(text: str) -> str:
    """``text`` fit for a log line: :func:`scrub`, and the query string of every URL or path (a word with a
    ``/`` before its ``?``) replaced by ``?...``."""
    text = scrub(text)
    if "?" not in text:
        return text
    return _URL_QUERY.sub(r"\1?...", text)


def scrub_tree(value: Any) -> Any:
    """``value`` (parsed JSON) with :func:`scrub` applied to every string in it, keys included."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_tree(k): scrub_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_tree(v) for v in value]
    return value


def install() -> None:
    """Redact every log record of this process as it is created (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    logging.setLogRecordFactory(factory)


def redact_record(record: logging.LogRecord) -> None:
    """Redact ``record`` in place: its arguments one by one (handlers such as uvicorn's access formatter
    read them), or its whole message when a secret only shows once they are put together."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: the handler reports it as it would have
        return
    if record.args:
        record.msg = for_log(str(record.msg))
        if isinstance(record.args, dict):
            record.args = {key: _log_arg(value) for key, value in record.args.items()}
        else:
            record.args = tuple(_log_arg(value) for value in record.args)
        try:
            if record.getMessage() == for_log(message):
                message = ""
        except Exception:
            pass
    if message:
        record.msg, record.args = for_log(message), None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = for_log(logging.Formatter().formatException(record.exc_info))


def _log_arg(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return for_log(value if isinstance(value, str) else str(value))
