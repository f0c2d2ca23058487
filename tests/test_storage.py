"""Contract tests for the blob stores: FolderStore, S3Store on in-process moto, S3Store on
moto's HTTP server. Plus store-specific tests (folder moves/atomicity, S3 outages)."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.stub import Stubber
from moto import mock_aws
from moto.server import ThreadedMotoServer

from pacs.errors import StorageUnavailable
from pacs.settings import Settings, load_settings
from pacs.storage import (
    BlobNotFound,
    BlobStore,
    FolderStore,
    S3Store,
    instance_key,
    open_blob_store,
)
from pacs.storage.s3 import translate_error

MiB = 1 << 20
THRESHOLD = 5 * MiB
BIG = 6 * MiB + 3  # above THRESHOLD: two parts of 5 MiB + 1 MiB+3

HOSTILE_KEYS = [
    "../x",
    "/abs",
    "a//b",
    "a\\b",
    "",
    "a/./b",
    "a/../../x",
    "x\x00y",
    "a/",
    "..",
]


def _payload(n: int, seed: int = 0) -> bytes:
    """Deterministic, position-dependent bytes (so misplaced slices are caught)."""
    block = hashlib.sha256(f"seed-{seed}".encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:n])


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials and no user AWS configuration."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def moto_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _new_bucket_store(**kwargs) -> S3Store:
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    store = S3Store(bucket, "archive", multipart_threshold=THRESHOLD, **kwargs)
    store.client.create_bucket(Bucket=bucket)
    return store


@pytest.fixture(params=["folder", "s3-mock", "s3-server"])
def store(request, tmp_path):
    if request.param == "folder":
        yield FolderStore(tmp_path / "blobs")
    elif request.param == "s3-mock":
        request.getfixturevalue("aws_env")
        with mock_aws():
            yield _new_bucket_store()  # the client is created after the mock started
    else:
        request.getfixturevalue("aws_env")
        endpoint = request.getfixturevalue("moto_server")
        yield _new_bucket_store(endpoint_url=endpoint)


@pytest.fixture
def folder(tmp_path) -> FolderStore:
    return FolderStore(tmp_path / "blobs")


@pytest.fixture
def s3_mock(aws_env):
    with mock_aws():
        yield _new_bucket_store()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- contract ---------------------------------------------------------------------------


def test_is_a_blob_store(store):
    assert isinstance(store, BlobStore)


def test_check_passes_when_healthy(store):
    store.check()


def test_put_bytes_round_trip(store):
    key = instance_key("1.2.840.1", "1.2.840.1.2", "1.2.840.1.2.3")
    data = _payload(100_003, seed=1)
    store.put_bytes(key, data)

    with store.open(key) as handle:
        assert handle.read(10) == data[:10]
        assert handle.read(5) == data[10:15]
        assert handle.read() == data[15:]
        assert handle.read(1) == b""
    assert handle.closed

    chunks = list(store.iter_chunks(key, chunk_size=4096))
    assert b"".join(chunks) == data
    assert len(chunks) > 1 and all(len(c) <= 4096 for c in chunks)


def test_put_file_round_trip(store, tmp_path):
    data = _payload(70_001, seed=2)
    source = tmp_path / "incoming.dcm"
    source.write_bytes(data)
    store.put_file("studies/1/series/2/3.dcm", str(source))
    with store.open("studies/1/series/2/3.dcm") as handle:
        assert handle.read() == data


def test_empty_object(store):
    store.put_bytes("empty", b"")
    assert store.size("empty") == 0
    assert store.exists("empty")
    with store.open("empty") as handle:
        assert handle.read() == b""
    assert store.read_range("empty", 0, 10) == b""


def test_overwrite_replaces_content(store):
    store.put_bytes("k", b"first version, longer than the second")
    store.put_bytes("k", b"second")
    assert store.open("k").read() == b"second"
    assert store.size("k") == 6


def test_read_range_exact_slices(store):
    data = _payload(10_000, seed=3)
    store.put_bytes("r/obj", data)
    assert store.read_range("r/obj", 0, 100) == data[:100]
    assert store.read_range("r/obj", 4321, 777) == data[4321:5098]
    assert store.read_range("r/obj", 9_900, 100) == data[9_900:]
    assert store.read_range("r/obj", 9_999, 1) == data[-1:]
    # Short at the end, empty beyond it, empty for length 0.
    assert store.read_range("r/obj", 9_995, 50) == data[9_995:]
    assert store.read_range("r/obj", 20_000, 10) == b""
    assert store.read_range("r/obj", 5, 0) == b""
    with pytest.raises(ValueError):
        store.read_range("r/obj", -1, 10)


def test_size_exists_delete(store):
    store.put_bytes("a/b/c", b"x" * 1234)
    assert store.size("a/b/c") == 1234
    assert store.exists("a/b/c")
    assert not store.exists("a/b")  # a "folder" is not an object
    store.delete("a/b/c")
    assert not store.exists("a/b/c")
    store.delete("a/b/c")  # absent: no error
    with pytest.raises(BlobNotFound):
        store.size("a/b/c")


def test_missing_key_raises_blob_not_found(store):
    with pytest.raises(BlobNotFound):
        store.open("no/such/key")
    with pytest.raises(BlobNotFound):
        store.read_range("no/such/key", 0, 10)
    with pytest.raises(BlobNotFound):
        store.read_range("no/such/key", 0, 0)
    with pytest.raises(BlobNotFound):
        store.size("no/such/key")
    with pytest.raises(BlobNotFound):
        store.iter_chunks("no/such/key")  # eagerly, not at the first next()
    with pytest.raises(KeyError):  # BlobNotFound is a KeyError
        store.open("no/such/key")
    assert not store.exists("no/such/key")


def test_multipart_round_trip(store, tmp_path):
    data = _payload(BIG, seed=4)
    source = tmp_path / "big.part"
    source.write_bytes(data)
    store.put_file("big/file", str(source))
    store.put_bytes("big/bytes", data)

    for key in ("big/file", "big/bytes"):
        assert store.size(key) == BIG
        with store.open(key) as handle:
            back = handle.read()
        assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
        # Across the part boundary at 5 MiB, and the tail.
        assert store.read_range(key, THRESHOLD - 10, 20) == data[THRESHOLD - 10 : THRESHOLD + 10]
        assert store.read_range(key, BIG - 5, 10) == data[-5:]
        if isinstance(store, S3Store):
            etag = store.client.head_object(Bucket=store.bucket, Key=store.prefix + key)["ETag"]
            assert etag.strip('"').endswith("-2"), etag  # really went up in two parts


def test_concurrent_puts_leave_one_intact_object(store, monkeypatch):
    if isinstance(store, S3Store):
        # moto 5.2 races on overwrites: replacing a key closes the old key's buffer while
        # another request may still compute that key's ETag ("I/O operation on closed
        # file"). Real S3 has no such issue; serialise only moto's PUT handler, so the 8
        # threads still share one boto3 client and its connection pool.
        from moto.s3.responses import S3Response

        moto_put = S3Response.put_object
        moto_lock = threading.Lock()

        def serialised_put(self, *args, **kwargs):
            with moto_lock:
                return moto_put(self, *args, **kwargs)

        monkeypatch.setattr(S3Response, "put_object", serialised_put)
    payloads = [_payload(200_000 + i, seed=100 + i) for i in range(8)]
    barrier = threading.Barrier(len(payloads))
    errors: list[BaseException] = []

    def put(data: bytes) -> None:
        try:
            barrier.wait(timeout=10)
            store.put_bytes("same/key", data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    back = store.open("same/key").read()
    assert back in payloads
    assert store.size("same/key") == len(back)
    if isinstance(store, FolderStore):
        assert list(store.temp_dir.glob("*.part")) == []


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_refused(store, key, tmp_path):
    with pytest.raises(ValueError):
        store.put_bytes(key, b"evil")
    with pytest.raises(ValueError):
        store.open(key)
    with pytest.raises(ValueError):
        store.delete(key)
    assert not (tmp_path / "x").exists()
    assert not Path("/abs").exists()


# -- folder specifics -------------------------------------------------------------------


def test_folder_refuses_symlink_escape_and_reserved_folder(folder, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder.root / "link").symlink_to(outside)
    with pytest.raises(ValueError):
        folder.put_bytes("link/x", b"evil")
    with pytest.raises(ValueError):
        folder.open("link/x")
    assert list(outside.iterdir()) == []
    with pytest.raises(ValueError):
        folder.put_bytes(".tmp/x.part", b"evil")


def test_folder_refuses_symlinked_object(folder, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not an object")
    folder.put_bytes("studies/1/a.dcm", b"ok")  # the folder is known (checked) now
    (folder.root / "studies/1/b.dcm").symlink_to(secret)
    with pytest.raises(ValueError):
        folder.open("studies/1/b.dcm")
    with pytest.raises(ValueError):
        folder.read_range("studies/1/b.dcm", 0, 3)
    assert folder.open("studies/1/a.dcm").read() == b"ok"


def test_folder_put_file_moves_source(folder, tmp_path):
    data = _payload(50_000, seed=5)
    incoming = folder.temp_dir / "incoming-1.part"
    incoming.write_bytes(data)
    folder.put_file("studies/9/series/8/7.dcm", str(incoming))
    assert not incoming.exists()
    assert (folder.root / "studies/9/series/8/7.dcm").read_bytes() == data
    assert list(folder.temp_dir.glob("*.part")) == []

    other = tmp_path / "elsewhere.bin"  # same file system, outside .tmp: moved too
    other.write_bytes(b"moved")
    folder.put_file("m", other)
    assert not other.exists()
    assert folder.open("m").read() == b"moved"


def test_folder_put_file_copies_across_file_systems(folder, tmp_path, monkeypatch):
    data = _payload(30_000, seed=6)
    source = tmp_path / "remote.bin"
    source.write_bytes(data)
    monkeypatch.setattr(folder, "_dev", -1)  # pretend the source is on another device
    folder.put_file("copied", source)
    assert source.read_bytes() == data  # the source stays
    assert folder.open("copied").read() == data
    assert list(folder.temp_dir.glob("*.part")) == []


def test_folder_put_file_missing_source(folder, tmp_path):
    with pytest.raises(FileNotFoundError):
        folder.put_file("k", tmp_path / "nope")
    assert not folder.exists("k")


def test_folder_write_failure_is_storage_unavailable(folder, tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "secret"))

    folder.put_bytes("keep", b"old")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StorageUnavailable) as info:
        folder.put_bytes("keep", b"new")
    assert "ENOSPC" in info.value.reason
    assert str(tmp_path) not in str(info.value)
    monkeypatch.undo()
    assert folder.open("keep").read() == b"old"  # the old object is intact
    assert list(folder.temp_dir.glob("*.part")) == []


def test_folder_sweep_temporary(folder):
    old = folder.temp_dir / "old.part"
    fresh = folder.temp_dir / "fresh.part"
    unrelated = folder.temp_dir / "notes.txt"
    for path in (old, fresh, unrelated):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(unrelated, (two_hours_ago, two_hours_ago))

    assert folder.sweep_temporary(3600) == 1
    assert not old.exists()
    assert fresh.exists()
    assert unrelated.exists()
    assert folder.sweep_temporary(3600) == 0


def test_folder_check_fails_when_root_is_gone(tmp_path):
    store = FolderStore(tmp_path / "gone")
    (tmp_path / "gone" / ".tmp").rmdir()
    (tmp_path / "gone").rmdir()
    with pytest.raises(StorageUnavailable):
        store.check()


def test_folder_layout(folder):
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5")
    folder.put_bytes(key, b"dicom")
    assert (folder.root / "studies/1.2.3/series/1.2.3.4/1.2.3.4.5.dcm").read_bytes() == b"dicom"


# -- S3 specifics -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["s3-mock", "s3-server"])
def test_s3_sweep_aborts_uploads_under_prefix(kind, request):
    if kind == "s3-mock":
        request.getfixturevalue("aws_env")
        mock = mock_aws()
        mock.start()
        request.addfinalizer(mock.stop)
        s3 = _new_bucket_store()
    else:
        request.getfixturevalue("aws_env")
        s3 = _new_bucket_store(endpoint_url=request.getfixturevalue("moto_server"))
    client, bucket = s3.client, s3.bucket
    client.create_multipart_upload(Bucket=bucket, Key="archive/studies/1/x.dcm")
    client.create_multipart_upload(Bucket=bucket, Key="other/y")

    # moto reports every upload as initiated on 2010-11-10, so both are "old" here; only
    # the one under the store's prefix may go.
    assert s3.sweep_temporary(3600) == 1
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == ["other/y"]


def test_s3_sweep_keeps_fresh_uploads(aws_env):
    client = boto3.session.Session().client("s3", region_name="us-east-1")
    store = S3Store("bkt", "p", client=client)
    now = datetime.now(timezone.utc)
    with Stubber(client) as stub:
        stub.add_response(
            "list_multipart_uploads",
            {
                "Uploads": [
                    {"Key": "p/old", "UploadId": "u-old", "Initiated": now - timedelta(hours=2)},
                    {"Key": "p/new", "UploadId": "u-new", "Initiated": now - timedelta(seconds=5)},
                ],
                "IsTruncated": False,
            },
            {"Bucket": "bkt", "Prefix": "p/"},
        )
        stub.add_response(
            "abort_multipart_upload", {}, {"Bucket": "bkt", "Key": "p/old", "UploadId": "u-old"}
        )
        assert store.sweep_temporary(3600) == 1
        stub.assert_no_pending_responses()


def test_s3_closed_port_is_storage_unavailable_quickly(aws_env):
    store = S3Store(
        "bkt",
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        connect_timeout=0.5,
        read_timeout=1,
        max_attempts=0,  # botocore counts retries: 0 = a single try, no backoff
    )
    assert store.client.meta.config.retries["total_max_attempts"] == 1
    started = time.monotonic()
    for call in (
        lambda: store.put_bytes("k", b"data"),
        lambda: store.open("k"),
        lambda: store.read_range("k", 0, 4),
        lambda: store.size("k"),
        lambda: store.exists("k"),
        store.check,
    ):
        with pytest.raises(StorageUnavailable) as info:
            call()
        assert "unreachable" in info.value.reason
    assert time.monotonic() - started < 3


class _SilentListener:
    """A TCP server that accepts every connection and never answers (a hanging S3)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:  # timeout: look at the stop flag
                continue
            self.accepted.append(conn)  # kept open, never read from or written to

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def test_s3_limits_are_settings():
    defaults = Settings()
    assert (defaults.s3_connect_timeout, defaults.s3_read_timeout, defaults.s3_max_attempts) == (5.0, 10.0, 3)
    env = {"PACS_S3_CONNECT_TIMEOUT": "2.5", "PACS_S3_READ_TIMEOUT": "7", "PACS_S3_MAX_ATTEMPTS": "4"}
    settings = load_settings(env=env)
    assert settings.s3_read_timeout == 7.0 and isinstance(settings.s3_read_timeout, float)
    assert (settings.s3_connect_timeout, settings.s3_max_attempts) == (2.5, 4)
    for bad in ({"PACS_S3_READ_TIMEOUT": "0"}, {"PACS_S3_CONNECT_TIMEOUT": "-1"}, {"PACS_S3_MAX_ATTEMPTS": "0"}):
        with pytest.raises(ValueError):
            load_settings(env=bad)


def test_s3_hanging_service_is_reported_within_the_configured_limits(aws_env):
    """An S3 that accepts connections and never answers: with 1 s timeouts and 2 attempts,
    StorageUnavailable comes after ~2 s (2 tries x 1 s + back-off), not the ~2 min the
    fixed 30 s x 4 tries took."""
    settings = load_settings(env={"PACS_S3_CONNECT_TIMEOUT": "1", "PACS_S3_READ_TIMEOUT": "1",
                                  "PACS_S3_MAX_ATTEMPTS": "2"})
    listener = _SilentListener()
    try:
        store = open_blob_store(
            "s3://bkt/p",
            endpoint_url=listener.url,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
            attempts=settings.s3_max_attempts,
        )
        config = store.client.meta.config
        assert (config.connect_timeout, config.read_timeout) == (1.0, 1.0)
        assert config.retries["total_max_attempts"] == 2
        for call in (lambda: store.put_bytes("k", b"data"), lambda: store.size("k")):
            before = len(listener.accepted)
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as info:
                call()
            elapsed = time.monotonic() - started
            assert "timed out" in info.value.reason, info.value.reason
            assert 2 <= elapsed < 10, elapsed
            assert len(listener.accepted) - before == 2  # one connection per try
    finally:
        listener.close()


def test_s3_missing_bucket_fails_check(s3_mock):
    store = S3Store("no-such-bucket-here")
    with pytest.raises(StorageUnavailable):
        store.check()
    with pytest.raises(StorageUnavailable):
        store.put_bytes("k", b"x")


def test_s3_prefix_is_applied(s3_mock):
    s3_mock.put_bytes("a/b", b"hello")
    body = s3_mock.client.get_object(Bucket=s3_mock.bucket, Key="archive/a/b")["Body"].read()
    assert body == b"hello"


def test_s3_error_translation():
    def client_error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
            "GetObject",
        )

    assert isinstance(translate_error(client_error("NoSuchKey", 404), "k"), BlobNotFound)
    assert isinstance(translate_error(client_error("404", 404), "k"), BlobNotFound)
    for code, status in [("SlowDown", 503), ("InternalError", 500), ("Throttling", 400),
                         ("AccessDenied", 403), ("NoSuchBucket", 404)]:
        err = translate_error(client_error(code, status), "k")
        assert isinstance(err, StorageUnavailable), code
        assert err.dimse_status == 0xA700
    err = translate_error(EndpointConnectionError(endpoint_url="http://x"), "k")
    assert isinstance(err, StorageUnavailable) and "unreachable" in err.reason


# -- factory ----------------------------------------------------------------------------


def test_open_blob_store(tmp_path, aws_env):
    s3 = open_blob_store("s3://my-bucket/pacs/objects", endpoint_url="http://127.0.0.1:1",
                         multipart_threshold=THRESHOLD)
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.multipart_threshold) == ("my-bucket", "pacs/objects/", THRESHOLD)
    bare = open_blob_store("s3://my-bucket")
    assert isinstance(bare, S3Store) and bare.prefix == ""
    config = bare.client.meta.config  # the defaults match the settings' defaults
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (5, 10, 3)

    by_url = open_blob_store(f"file://{tmp_path}/by-url")
    assert isinstance(by_url, FolderStore) and (tmp_path / "by-url").is_dir()
    by_path = open_blob_store(str(tmp_path / "by-path" / "nested"))
    assert isinstance(by_path, FolderStore) and (tmp_path / "by-path" / "nested").is_dir()
    by_path.put_bytes("k", b"v")
    assert (tmp_path / "by-path" / "nested" / "k").read_bytes() == b"v"

    for bad in ("", "ftp://host/x", "s3:///prefix-without-bucket", "file://remote-host/x"):
        with pytest.raises(ValueError):
            open_blob_store(bad)


def test_link_replaces_a_damaged_object_at_its_key(tmp_path: Path) -> None:
    """A power loss between a linked file's folder flush and its data flush can leave a
    damaged file under a content-addressed key; storing those bytes again replaces it
    instead of trusting the name, and keeps a sound copy as it is."""
    store = FolderStore(tmp_path / "objects")
    key = instance_key("1.2.3", "1.2.3.4", "1.2.3.4.5", "0123456789abcdef")
    source = Path(store.temp_dir) / "received.dcm"
    source.write_bytes(b"DICM" * 1000)
    damaged = tmp_path / "objects" / key
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"DICM" * 10)
    store.put_file(key, source, synced=True, keep_source=True)
    assert damaged.read_bytes() == b"DICM" * 1000 and source.exists()
    assert not list(Path(store.temp_dir).glob("*.part"))
    sound = damaged.stat().st_ino
    copy = Path(store.temp_dir) / "again.dcm"
    copy.write_bytes(b"DICM" * 1000)
    store.put_file(key, copy, synced=True, keep_source=True)
    assert damaged.stat().st_ino == sound and damaged.read_bytes() == b"DICM" * 1000
