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
from .s3 import DEFAULT_MULTIPART_THRESHOLD, S3Store

__all__ = ["BlobStore", "BlobNotFound", "FolderStore", "S3Store", "instance_key", "open_blob_store"]


def open_blob_store(
    url: str,
    *,
    endpoint_url: str = "",
    region: str = "us-east-1",
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
) -> BlobStore:
    """The store named by ``url``; ``endpoint_url``/``region``/threshold apply to S3 only."""
    if not url or not url.strip():
        raise ValueError("blob store URL is empty")
    url = url.strip()
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme == "s3":
        parts = urlsplit(url)
        if not parts.netloc:
            raise ValueError("s3 URL needs a bucket: s3://bucket/prefix")
        return S3Store(
            parts.netloc,
            unquote(parts.path).strip("/"),
            endpoint_url=endpoint_url or None,
            region=region,
            multipart_threshold=multipart_threshold,
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
