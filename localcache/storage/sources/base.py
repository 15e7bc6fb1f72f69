"""What every source provides: a listing of files with what we can verify them against, and byte ranges."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType


class TransientError(Exception):
    """A transfer problem worth retrying from the last byte written (reset, 5xx, truncated body)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a model. `expected` maps a digest algorithm (see verify.py) to its hex value."""

    path: str
    size: int | None
    locator: str
    expected: dict[str, str] = field(default_factory=dict)
    ranged: bool = True


@dataclass
class Listing:
    files: list[RemoteFile]
    revision: str | None = None


class Source(abc.ABC):
    """A model source; async context manager so connections are always released."""

    scheme: str = ""

    @abc.abstractmethod
    async def list(self) -> Listing:
        """Resolve the revision and list the files, raising DownloadError for auth and not-found."""

    @abc.abstractmethod
    def stream(self, file: RemoteFile, start: int, end: int | None) -> AsyncIterator[bytes]:
        """Yield the bytes [start, end) of `file` (end None: to EOF) in chunks of bounded size."""

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Source:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
