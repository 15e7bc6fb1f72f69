"""Why a download failed, as a closed set of reasons with stable exit codes.

The node agent runs the download program as a Job and only sees its exit code and its last log line
(or the termination message). Both carry the reason, so the agent can report "auth" or "disk full"
on the LocalModelNode instead of a bare "Error".
"""

from __future__ import annotations

import enum
import re


class FailureReason(enum.Enum):
    """A failure class and the process exit code that stands for it (0 is success)."""

    def __new__(cls, value: str, exit_code: int) -> FailureReason:
        obj = object.__new__(cls)
        obj._value_ = value
        obj.exit_code = exit_code  # type: ignore[attr-defined]
        return obj

    exit_code: int

    UNKNOWN = ("Unknown", 1)
    INVALID_REQUEST = ("InvalidRequest", 2)
    AUTH = ("AuthFailed", 10)
    NOT_FOUND = ("NotFound", 11)
    DISK_FULL = ("DiskFull", 12)
    CHECKSUM_MISMATCH = ("ChecksumMismatch", 13)
    TIMEOUT = ("Timeout", 14)
    UNSAFE_PATH = ("UnsafePath", 15)
    UNSUPPORTED = ("Unsupported", 16)
    PERMISSION_DENIED = ("PermissionDenied", 17)
    SOURCE_UNAVAILABLE = ("SourceUnavailable", 18)

    @classmethod
    def from_exit_code(cls, code: int) -> FailureReason | None:
        """The reason for a Job's exit code; None for 0, UNKNOWN for codes we never emit."""
        if code == 0:
            return None
        for reason in cls:
            if reason.exit_code == code:
                return reason
        return cls.UNKNOWN

    @property
    def retryable(self) -> bool:
        """Whether retrying the same download later can succeed without anyone changing anything."""
        return self in (
            FailureReason.TIMEOUT,
            FailureReason.SOURCE_UNAVAILABLE,
            FailureReason.UNKNOWN,
            FailureReason.CHECKSUM_MISMATCH,
        )


class DownloadError(Exception):
    """A failure with its reason; the message is one line and never contains credentials."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = " ".join(message.split())

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


ERROR_LINE_PREFIX = "localcache-download error:"
_ERROR_LINE = re.compile(rf"{re.escape(ERROR_LINE_PREFIX)} reason=(\w+) exit_code=(\d+) message=(.*)$")


def format_error_line(error: DownloadError) -> str:
    """The one line the program prints (stderr and termination log) when it fails."""
    return (
        f"{ERROR_LINE_PREFIX} reason={error.reason.value} exit_code={error.reason.exit_code} "
        f"message={error.message}"
    )


def parse_error_line(text: str) -> DownloadError | None:
    """Find the program's error line in a log or termination message (the last one wins)."""
    found: DownloadError | None = None
    for line in text.splitlines():
        match = _ERROR_LINE.search(line.strip())
        if match is None:
            continue
        try:
            reason = FailureReason(match.group(1))
        except ValueError:
            reason = FailureReason.UNKNOWN
        found = DownloadError(reason, match.group(3))
    return found
