"""Blob stores: where the archive keeps the bytes of every object.

:func:`open_blob_store` turns the configured URL into a store:

* ``s3://bucket`` or ``s3://bucket/prefix`` -> :class:`S3Store`
* ``file:///path`` or a plain path          -> :class:`FolderStore` (the folder is created)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from .base import BlobNotFound, BlobStore
from .folder import FolderStore
from .keys import instance_key
from .s3 import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES,
    S3Store,
)

__all__ = ["BlobStore", "BlobNotFound", "FolderStore", "S3Store", "instance_key", "open_blob_store"]


def open_blob_store(
    url: str,
    *,
    endpoint_url: str = "",
    region: str = "us-east-1",
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    attempts: int = DEFAULT_RETRIES + 1,
) -> BlobStore:
    """The store named by ``url``.

    The keyword arguments apply to S3 only. ``attempts`` counts every try of a request,
    the first included (:class:`S3Store`'s ``max_attempts`` counts the retries).
    """
    if not url or not url.strip():
        raise ValueError("blob store URL is empty")
    url = url.strip()
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme == "s3":
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError("s3 URL needs a bucket: s3://bucket/prefix")
        return S3Store(
            parts.netloc,
            unquote(parts.path).strip("/"),
            endpoint_url=endpoint_url or None,
            region=region,
            multipart_threshold=multipart_threshold,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=attempts - 1,
        )
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError("file URL must name a local path: file:///path")
        path = unquote(parts.path)
        if not path:
            raise ValueError("file URL has no path")
        return FolderStore(Path(path))
    if scheme:
        raise ValueError(f"unsupported blob store URL scheme {scheme!r} (use s3:// or file://)")
    return FolderStore(Path(url))
