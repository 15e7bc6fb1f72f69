"""Structured logs for every binary: ``key=value`` text for people, JSON lines for log pipelines.

Code logs with ``log.info("message", extra={"cache": name, "node": node})``; the stock formatter would
drop those fields, so each binary calls :func:`setup_logging` once. Fields whose names suggest a secret
(token, password, secret, credentials, authorization) are replaced by ``***``, a last line of defence:
callers must still never pass a secret's value to a logger.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_SECRET_NAME = re.compile(r"token|passw|secret|credential|authorization|api[_-]?key", re.IGNORECASE)
REDACTED = "***"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, with secret-looking ones redacted."""
    return {
        key: REDACTED if _SECRET_NAME.search(key) else value
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


def _text_value(value: Any) -> str:
    """Strings quoted only when they must be; anything else as compact JSON (quoted if it has spaces)."""
    if isinstance(value, str):
        return json.dumps(value) if not value or any(c in value for c in ' ="\n') else value
    text = json.dumps(value, default=str, separators=(",", ":"))
    return json.dumps(text) if any(c in text for c in " \n") else text


class KeyValueFormatter(logging.Formatter):
    """``2026-11-28T01:02:03.456Z INFO logger message key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = (
            datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        parts = [stamp, record.levelname, record.name, record.getMessage()]
        parts += [f"{key}={_text_value(value)}" for key, value in record_fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **record_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger once per process; ``fmt`` is ``text`` or ``json``."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
