"""S3 (and S3-compatible) prefixes through aiobotocore, the async botocore that s3fs is built on.

We call it directly rather than through `s3fs.get`, because that reads each object as one stream;
here every large object is fetched as parallel ranged GETs. What we can verify against, best first:
a full-object SHA-256 or CRC32 checksum (HeadObject with ChecksumMode=ENABLED), the ETag when it is a
plain MD5 (single-part upload, no KMS), else the size alone.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from localcache.storage.errors import DownloadError, FailureReason
from localcache.storage.settings import Settings
from localcache.storage.sources.base import Listing, RemoteFile, Source, TransientError
from localcache.storage.verify import b64_to_hex

_MD5 = re.compile(r"^[0-9a-f]{32}$")
READ_CHUNK = 256 * 1024
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "403",
    "401",
}
_NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


def client_error(exc: ClientError, what: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in _AUTH_CODES or status in (401, 403):
        return DownloadError(FailureReason.AUTH, f"{what}: access denied ({code or status})")
    if code in _NOT_FOUND_CODES or status == 404:
        return DownloadError(FailureReason.NOT_FOUND, f"{what}: not found ({code or status})")
    if status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout", "InternalError"):
        return TransientError(f"{what}: {code or status}")
    return DownloadError(FailureReason.UNKNOWN, f"{what}: {code or status}")


class S3Source(Source):
    scheme = "s3"

    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.settings = settings
        self._client: Any = None
        self._ctx: Any = None

    async def _get_client(self) -> Any:
        if self._client is None:
            s3 = self.settings.s3
            config = AioConfig(
                max_pool_connections=self.settings.connections + 4,
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=30,
                read_timeout=max(self.settings.stall_timeout, 1.0),
                signature_version=UNSIGNED if s3.anonymous else None,
                s3={"addressing_style": "path"} if s3.endpoint_url else None,
                response_checksum_validation="when_required",
            )
            kwargs: dict[str, Any] = {"config": config, "verify": s3.verify}
            if s3.endpoint_url:
                kwargs["endpoint_url"] = s3.endpoint_url
            kwargs["region_name"] = s3.region or "us-east-1"
            if s3.access_key_id and s3.secret_access_key and not s3.anonymous:
                kwargs["aws_access_key_id"] = s3.access_key_id
                kwargs["aws_secret_access_key"] = s3.secret_access_key
                if s3.session_token:
                    kwargs["aws_session_token"] = s3.session_token
            self._ctx = get_session().create_client("s3", **kwargs)
            self._client = await self._ctx.__aenter__()
        return self._client

    def _what(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{key if key is not None else self.prefix}"

    async def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return await fn(**kwargs)
        except ClientError as exc:
            err = client_error(exc, what)
            if isinstance(err, TransientError):
                raise DownloadError(FailureReason.SOURCE_UNAVAILABLE, str(err)) from None
            raise err from None
        except NoCredentialsError:
            raise DownloadError(FailureReason.AUTH, f"{what}: no AWS credentials found") from None
        except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise DownloadError(
                FailureReason.SOURCE_UNAVAILABLE, f"{what}: {type(exc).__name__}: {exc}"
            ) from None

    async def list(self) -> Listing:
        client = await self._get_client()
        prefix = self.prefix
        dir_prefix = prefix if (prefix == "" or prefix.endswith("/")) else prefix + "/"
        objects: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": dir_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call(self._what(), client.list_objects_v2, **kwargs)
            objects.extend(o for o in page.get("Contents", []) if not o["Key"].endswith("/"))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        base = dir_prefix
        if not objects and prefix and not prefix.endswith("/"):
            # Not a "directory": maybe the URI names one object.
            head = await self._call(self._what(prefix), client.head_object, Bucket=self.bucket, Key=prefix)
            objects = [{"Key": prefix, "Size": head["ContentLength"], "ETag": head.get("ETag", "")}]
            base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        if not objects:
            raise DownloadError(FailureReason.NOT_FOUND, f"{self._what()}: no objects under this prefix")
        sem = asyncio.Semaphore(16)

        async def describe(obj: dict[str, Any]) -> RemoteFile:
            async with sem:
                head = await self._call(
                    self._what(obj["Key"]),
                    client.head_object,
                    Bucket=self.bucket,
                    Key=obj["Key"],
                    ChecksumMode="ENABLED",
                )
            return RemoteFile(
                obj["Key"][len(base) :], int(head["ContentLength"]), obj["Key"], expected_from_head(head)
            )

        files = await asyncio.gather(*(describe(o) for o in objects))
        return Listing(list(files), revision=None)

    async def stream(self, file: RemoteFile, start: int, end: int | None) -> AsyncIterator[bytes]:
        client = await self._get_client()
        what = self._what(file.locator)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": file.locator}
        if start > 0 or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            resp = await client.get_object(**kwargs)
            body = resp["Body"]
            try:
                while True:
                    chunk = await body.read(READ_CHUNK)
                    if not chunk:
                        break
                    yield chunk
            finally:
                body.close()
        except ClientError as exc:
            raise client_error(exc, what) from None
        except (BotoCoreError, aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        if self._ctx is not None:
            await self._ctx.__aexit__(None, None, None)
            self._ctx = self._client = None


def expected_from_head(head: dict[str, Any]) -> dict[str, str]:
    expected: dict[str, str] = {}
    etag = str(head.get("ETag", "")).strip('"').lower()
    # A multipart object's checksum is per part ("composite") unless S3 says FULL_OBJECT; without
    # the type header only a single-part object's checksum is certainly over the whole object.
    kind = head.get("ChecksumType")
    full = kind == "FULL_OBJECT" or (kind is None and "-" not in etag)
    sha = head.get("ChecksumSHA256")
    if sha and full and "-" not in sha and (hexed := b64_to_hex(sha)):
        expected["sha256"] = hexed
    crc = head.get("ChecksumCRC32")
    if crc and full and "-" not in crc and (hexed := b64_to_hex(crc)):
        expected["crc32"] = hexed
    etag = str(head.get("ETag", "")).strip('"').lower()
    if (
        _MD5.match(etag)
        and head.get("ServerSideEncryption") != "aws:kms"
        and not head.get("SSECustomerAlgorithm")
    ):
        expected["md5"] = etag
    return expected
