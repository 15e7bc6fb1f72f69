"""Hugging Face Hub repos through the real `huggingface_hub` client.

`HfApi.model_info(files_metadata=True)` resolves the revision to a commit and lists every file with
its size, git blob id and, for LFS files, sha256. Bytes come from the Hub's `resolve` endpoint
(`hf_hub_url` + `build_hf_headers`, the client's own URL and auth headers) as parallel byte ranges,
which `hf_hub_download` cannot do for one file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers

from localcache.storage.errors import DownloadError, FailureReason
from localcache.storage.settings import Settings
from localcache.storage.sources.base import Listing, RemoteFile, Source
from localcache.storage.sources.http import make_session, ranged_get


class HfSource(Source):
    scheme = "hf"

    def __init__(self, repo_id: str, revision: str | None, settings: Settings) -> None:
        self.repo_id = repo_id
        self.revision = revision or "main"
        self.settings = settings
        self.endpoint = (settings.hf_endpoint or constants.ENDPOINT).rstrip("/")
        self.token = settings.hf_token
        self.headers = build_hf_headers(token=self.token or False, library_name="localcache")
        self._session: aiohttp.ClientSession | None = None

    def _what(self) -> str:
        return f"hf repo {self.repo_id}@{self.revision}"

    async def list(self) -> Listing:
        api = HfApi(endpoint=self.endpoint, token=self.token or False)
        try:
            info = await asyncio.to_thread(
                api.model_info, self.repo_id, revision=self.revision, files_metadata=True
            )
        except GatedRepoError:
            hint = (
                "a token was sent but refused" if self.token else "no token (set HF_TOKEN or STORAGE_CONFIG)"
            )
            raise DownloadError(FailureReason.AUTH, f"{self._what()}: gated repository, {hint}") from None
        except RevisionNotFoundError:
            raise DownloadError(FailureReason.NOT_FOUND, f"{self._what()}: revision not found") from None
        except RepositoryNotFoundError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise DownloadError(
                FailureReason.NOT_FOUND,
                f"{self._what()}: repository not found (HTTP {status}; private repos need a token)",
            ) from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                raise DownloadError(
                    FailureReason.AUTH, f"{self._what()}: HTTP {status}, access denied"
                ) from None
            raise DownloadError(FailureReason.SOURCE_UNAVAILABLE, f"{self._what()}: HTTP {status}") from None
        except Exception as exc:  # httpx2 connection errors and the like
            raise DownloadError(
                FailureReason.SOURCE_UNAVAILABLE, f"{self._what()}: {type(exc).__name__}: {exc}"
            ) from None
        if not info.sha:
            raise DownloadError(FailureReason.SOURCE_UNAVAILABLE, f"{self._what()}: hub returned no commit")
        files: list[RemoteFile] = []
        for sib in info.siblings or []:
            expected: dict[str, str] = {}
            size = sib.size
            if sib.lfs is not None:
                expected["sha256"] = sib.lfs.sha256
                size = sib.lfs.size
            elif sib.blob_id:
                expected["gitsha1"] = sib.blob_id
            url = hf_hub_url(self.repo_id, sib.rfilename, revision=info.sha, endpoint=self.endpoint)
            files.append(RemoteFile(sib.rfilename, size, url, expected, ranged=size is not None))
        return Listing(files, revision=info.sha)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = make_session(self.settings)
        return self._session

    def stream(self, file: RemoteFile, start: int, end: int | None) -> AsyncIterator[bytes]:
        return ranged_get(
            self.session, file.locator, self.headers, start, end, f"file {file.path}", file.ranged
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
