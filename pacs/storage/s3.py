"""A blob store on an S3 bucket (AWS, MinIO, moto, ...).

One boto3 client is built per store and shared by all threads (clients are thread-safe;
sessions are not, so the client is made here, once). Objects live under
``<prefix>/<key>``. A single PUT or a completed multipart upload is atomic on S3, so
readers never see a partial object; a write is durable once it returns.

Errors: a missing object raises :class:`BlobNotFound`; an unreachable or failing service
(connection refused, timeouts, 5xx, throttling, missing bucket, refused credentials)
raises :class:`StorageUnavailable` with a short reason.
"""

from __future__ import annotations

import io
import os
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore import exceptions as bce
from botocore.config import Config

from ..errors import StorageUnavailable
from ._keycheck import check_key
from .base import BlobNotFound

MiB = 1 << 20
#: Smallest part S3 accepts (except the last one).
MIN_PART_SIZE = 5 * MiB
DEFAULT_MULTIPART_THRESHOLD = 16 * MiB
#: Defaults of the client's limits; the server takes them from the settings
#: (``s3_connect_timeout``, ``s3_read_timeout``, ``s3_max_attempts``). With these, an S3 that
#: accepts connections and never answers is reported after 3 tries of 10 s plus back-off.
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_RETRIES = 2  # after the first try: 3 tries in all

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
}
_ACCESS_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "AccountProblem",
}

T = TypeVar("T")


def _client_error_parts(exc: bce.ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def translate_error(exc: BaseException, key: str | None = None) -> Exception:
    """Map a boto3/botocore failure to :class:`BlobNotFound` or :class:`StorageUnavailable`.

    ``key`` is the object being accessed; without it a 404 means the bucket is missing.
    Messages carry error codes and class names only, never local paths.
    """
    if isinstance(exc, S3UploadFailedError):
        # boto3 wraps the real error (and puts the local file name into the message).
        inner = exc.__cause__ or exc.__context__
        if inner is not None and not isinstance(inner, S3UploadFailedError):
            return translate_error(inner, key)
        return StorageUnavailable("S3 upload failed")
    if isinstance(exc, bce.ClientError):
        code, status = _client_error_parts(exc)
        if code == "NoSuchBucket":
            return StorageUnavailable("S3 bucket does not exist")
        if key is not None and (code in _NOT_FOUND_CODES or status == 404):
            return BlobNotFound(key)
        if status == 404:
            return StorageUnavailable("S3 bucket does not exist")
        if code in _THROTTLE_CODES or status in (429, 503):
            return StorageUnavailable(f"S3 is throttling or busy ({code or status})")
        if status >= 500:
            return StorageUnavailable(f"S3 server error {status} ({code or 'no code'})")
        if code in _ACCESS_CODES or status in (401, 403):
            return StorageUnavailable(f"S3 refused access ({code or status})")
        return StorageUnavailable(f"S3 request failed ({code or status})")
    name = type(exc).__name__
    if isinstance(exc, (bce.ConnectTimeoutError, bce.ReadTimeoutError)):
        return StorageUnavailable(f"S3 timed out ({name})")
    if isinstance(exc, bce.EndpointConnectionError):
        return StorageUnavailable("S3 endpoint unreachable (connection failed)")
    if isinstance(exc, (bce.ConnectionError, bce.HTTPClientError)):
        return StorageUnavailable(f"S3 connection failed ({name})")
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return StorageUnavailable("no S3 credentials configured")
    if isinstance(exc, bce.BotoCoreError):
        return StorageUnavailable(f"S3 client error ({name})")
    return StorageUnavailable(f"S3 failure ({name})")


_BACKEND_ERRORS = (bce.BotoCoreError, bce.ClientError, S3UploadFailedError)


class _S3Reader(io.RawIOBase):
    """Unbuffered reader over a ``get_object`` StreamingBody; wrap it in a BufferedReader."""

    def __init__(self, body: Any, key: str) -> None:
        super().__init__()
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except _BACKEND_ERRORS as exc:
            raise translate_error(exc, self._key) from None
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        try:
            return self._body.read()
        except _BACKEND_ERRORS as exc:
            raise translate_error(exc, self._key) from None

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


class S3Store:
    """:class:`~pacs.storage.base.BlobStore` on an S3 bucket."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        client: Any = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_attempts: int = DEFAULT_RETRIES,
        max_pool_connections: int = 64,
        max_concurrency: int = 10,
    ) -> None:
        """``client`` replaces the built one (then the connection options are ignored).

        ``connect_timeout``, ``read_timeout`` (seconds) and ``max_attempts`` bound how long
        an outage takes to surface. ``max_attempts`` is botocore's ``retries`` setting in
        "standard" mode: the number of *retries* after the first try (0 = a single try).
        The read timeout bounds each wait for data on the socket, not a whole request: a
        multipart upload or a long download runs as long as bytes keep moving.
        """
        if not bucket or "/" in bucket:
            raise ValueError("S3 bucket name is empty or contains '/'")
        if multipart_threshold <= 0:
            raise ValueError("multipart_threshold must be positive")
        if max_attempts < 0:
            raise ValueError("max_attempts must not be negative")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("connect_timeout and read_timeout must be positive")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.multipart_threshold = multipart_threshold
        if client is None:
            options: dict[str, Any] = {
                "max_pool_connections": max_pool_connections,
                "retries": {"max_attempts": max_attempts, "mode": "standard"},
                "connect_timeout": connect_timeout,
                "read_timeout": read_timeout,
            }
            if endpoint_url:
                options["s3"] = {"addressing_style": "path"}
            session = boto3.session.Session()  # private session: the default one is not thread-safe
            client = session.client(
                "s3",
                region_name=region,
                endpoint_url=endpoint_url or None,
                config=Config(**options),
            )
        self.client = client
        # Parts of at most 8 MiB, at least S3's 5 MiB minimum, and no larger than the
        # threshold, so an object just above the threshold goes up in several parts.
        # s3transfer grows the part size by itself when 10,000 parts would not suffice.
        chunk = max(MIN_PART_SIZE, min(multipart_threshold, 8 * MiB))
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=chunk,
            max_concurrency=max_concurrency,
            preferred_transfer_client="classic",
        )

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, fn: Callable[..., T], key: str | None, **kwargs: Any) -> T:
        try:
            return fn(**kwargs)
        except _BACKEND_ERRORS as exc:
            raise translate_error(exc, key) from None

    # -- writing ----------------------------------------------------------------------

    def put_file(self, key: str, path: str | os.PathLike[str], *, synced: bool = False, keep_source: bool = False) -> None:
        """Upload the file at ``path`` (multipart above the threshold); the file stays."""
        s3_key = self._key(key)
        filename = os.fspath(path)
        os.stat(filename)  # FileNotFoundError is the caller's mistake, not an outage
        self._call(
            self.client.upload_file,
            None,
            Filename=filename,
            Bucket=self.bucket,
            Key=s3_key,
            Config=self._transfer,
        )

    def put_bytes(self, key: str, data: bytes) -> None:
        """One PUT, or a multipart upload when ``data`` exceeds the threshold."""
        s3_key = self._key(key)
        if len(data) < self.multipart_threshold:
            self._call(self.client.put_object, None, Bucket=self.bucket, Key=s3_key, Body=bytes(data))
        else:
            self._call(
                self.client.upload_fileobj,
                None,
                Fileobj=io.BytesIO(data),
                Bucket=self.bucket,
                Key=s3_key,
                Config=self._transfer,
            )

    # -- reading ----------------------------------------------------------------------

    def _get(self, key: str, **kwargs: Any) -> dict[str, Any]:
        return self._call(self.client.get_object, key, Bucket=self.bucket, Key=self._key(key), **kwargs)

    def open(self, key: str) -> BinaryIO:
        """A buffered, read-only, non-seekable stream of the object; close it when done."""
        response = self._get(key)
        return io.BufferedReader(_S3Reader(response["Body"], key), buffer_size=256 * 1024)  # type: ignore[return-value]

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``start`` (fewer at the end of the object)."""
        if start < 0 or length < 0:
            raise ValueError("start and length must not be negative")
        if length == 0:
            self.size(key)  # BlobNotFound for a missing object
            return b""
        s3_key = self._key(key)
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=s3_key, Range=f"bytes={start}-{start + length - 1}"
            )
        except bce.ClientError as exc:
            code, status = _client_error_parts(exc)
            if code == "InvalidRange" or status == 416:
                return b""  # the object exists but ends before ``start``
            raise translate_error(exc, key) from None
        except _BACKEND_ERRORS as exc:
            raise translate_error(exc, key) from None
        body = response["Body"]
        try:
            data = body.read()
        except _BACKEND_ERRORS as exc:
            raise translate_error(exc, key) from None
        finally:
            body.close()
        if not response.get("ContentRange"):  # the server ignored Range and sent it all
            data = data[start : start + length]
        return data

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object in chunks; :class:`BlobNotFound` is raised here, eagerly."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        body = self._get(key)["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                while True:
                    try:
                        block = body.read(chunk_size)
                    except _BACKEND_ERRORS as exc:
                        raise translate_error(exc, key) from None
                    if not block:
                        return
                    yield block
            finally:
                body.close()

        return chunks()

    def size(self, key: str) -> int:
        """Size in bytes (HEAD)."""
        response = self._call(self.client.head_object, key, Bucket=self.bucket, Key=self._key(key))
        return int(response["ContentLength"])

    def exists(self, key: str) -> bool:
        """True when the object exists (HEAD)."""
        try:
            self.size(key)
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove the object; S3 answers 204 for a missing one too."""
        self._call(self.client.delete_object, None, Bucket=self.bucket, Key=self._key(key))

    # -- maintenance ------------------------------------------------------------------

    def check(self) -> None:
        """HEAD the bucket; :class:`StorageUnavailable` when it cannot be reached."""
        self._call(self.client.head_bucket, None, Bucket=self.bucket)

    def sweep_temporary(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix started more than ``older_than`` s ago."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=older_than)
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.prefix:
            kwargs["Prefix"] = self.prefix
        aborted = 0
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(**kwargs):
                for upload in page.get("Uploads", []):
                    initiated = upload["Initiated"]
                    if initiated.tzinfo is None:
                        initiated = initiated.replace(tzinfo=timezone.utc)
                    if initiated >= cutoff:
                        continue
                    try:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except bce.ClientError as exc:
                        if _client_error_parts(exc)[0] == "NoSuchUpload":
                            continue  # completed or aborted meanwhile
                        raise
                    aborted += 1
        except _BACKEND_ERRORS as exc:
            raise translate_error(exc, None) from None
        return aborted
