"""Structured logs keep the ``extra`` fields, quote what needs quoting and never print secret-named fields."""

from __future__ import annotations

import io
import json
import logging

import pytest

from localcache.runtime.logs import REDACTED, setup_logging


@pytest.fixture
def capture() -> io.StringIO:
    stream = io.StringIO()
    yield stream
    logging.getLogger().handlers.clear()


def test_text_lines_carry_extra_fields_quoted_when_needed(capture: io.StringIO) -> None:
    setup_logging("INFO", "text", capture)
    logging.getLogger("t").info("reconciled", extra={"cache": "llama", "uri": "hf://a b", "copies": {"n": 1}})
    line = capture.getvalue().strip()
    assert line.split(" ")[1:4] == ["INFO", "t", "reconciled"]
    assert "cache=llama" in line and 'uri="hf://a b"' in line and 'copies={"n":1}' in line


def test_json_lines_parse_and_secrets_are_redacted(capture: io.StringIO) -> None:
    setup_logging("DEBUG", "json", capture)
    logging.getLogger("t").debug(
        "auth", extra={"hf_token": "hf_canary", "Authorization": "Bearer x", "node": "n1"}
    )
    entry = json.loads(capture.getvalue())
    assert entry["msg"] == "auth" and entry["node"] == "n1"
    assert entry["hf_token"] == REDACTED and entry["Authorization"] == REDACTED
    assert "hf_canary" not in capture.getvalue()


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "yaml")
