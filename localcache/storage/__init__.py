"""Fetching a model onto a local disk: one provider per URI scheme, verification while streaming,
resume, atomic publish with a completion marker, and progress. Knows nothing about Kubernetes."""

from localcache.storage.errors import DownloadError, FailureReason, format_error_line, parse_error_line
from localcache.storage.layout import MARKER_NAME
from localcache.storage.marker import Marker, MarkerCache, MarkerFile, read_marker, verify_folder
from localcache.storage.pipeline import download, run
from localcache.storage.settings import Settings
from localcache.storage.uri import ModelUri, parse_uri

__all__ = [
    "MARKER_NAME",
    "DownloadError",
    "FailureReason",
    "Marker",
    "MarkerCache",
    "MarkerFile",
    "ModelUri",
    "Settings",
    "download",
    "format_error_line",
    "parse_error_line",
    "parse_uri",
    "read_marker",
    "run",
    "verify_folder",
]
