"""The archive on S3: in-process moto, and moto's HTTP server behind a running server."""

from __future__ import annotations

from typing import Iterator

import boto3
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from pacs.archive import Archive
from pacs.errors import StorageUnavailable
from pacs.index.models import Instance

from .factory import dataset_part, make_ct, to_bytes
from .servers import ThreadedServer


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def moto_endpoint(aws_env) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="archive")
    yield endpoint
    server.stop()


def _blob(archive: Archive, sop: str) -> bytes:
    with archive.db.read() as conn:
        key = conn.execute(select(Instance.blob_key).where(Instance.sop_instance_uid == sop)).scalar_one()
    assert key.startswith("studies/")
    with archive.store.open(key) as fp:
        return fp.read()


def test_ingest_into_s3_in_process(settings, aws_env) -> None:
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="archive")
        archive = Archive(settings.replace(storage_url="s3://archive/pacs"))
        data = to_bytes(make_ct(rows=64, columns=64))
        result = archive.ingest_bytes(data, source="test")
        assert _blob(archive, result.sop_instance_uid) == data
        listed = boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket="archive")["Contents"]
        assert [o["Key"].startswith("pacs/studies/") for o in listed] == [True]
        assert archive.health() == {"database": "ok", "storage": "ok"}
        archive.close()


def test_c_store_into_s3_over_http_endpoint(settings, moto_endpoint: str) -> None:
    server = ThreadedServer(settings.replace(storage_url="s3://archive/p", s3_endpoint_url=moto_endpoint)).start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", server.dimse_port)
        sent = [make_ct(seed=i, rows=64, columns=64) for i in range(3)]
        assert [assoc.send_c_store(ds).Status for ds in sent] == [0, 0, 0]
        assoc.release()
        for ds in sent:
            assert dataset_part(_blob(server.archive, ds.SOPInstanceUID)) == dataset_part(to_bytes(ds))
    finally:
        server.stop()


def test_s3_down_answers_a700_and_stores_nothing(settings, aws_env) -> None:
    from socket import socket

    with socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    from pacs.storage import S3Store

    store = S3Store("archive", endpoint_url=dead, connect_timeout=1, max_attempts=0)
    archive = Archive(settings, store=store)
    with pytest.raises(StorageUnavailable):
        archive.ingest_bytes(to_bytes(make_ct()), source="test")
    with archive.db.read() as conn:
        assert conn.execute(select(Instance.id)).first() is None
    archive.close()


def test_c_store_answers_a700_when_s3_is_down(settings, aws_env) -> None:
    from socket import socket

    from pacs.storage import S3Store

    with socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    archive = Archive(settings, store=S3Store("archive", endpoint_url=dead, connect_timeout=1, max_attempts=0))
    server = ThreadedServer(settings, archive=archive)
    # the start-up orphan sweep also talks to S3; it must not stop the server
    server.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", server.dimse_port)
        rsp = assoc.send_c_store(make_ct())
        assoc.release()
        assert rsp.Status == 0xA700
        assert "unavailable" in str(rsp.ErrorComment).lower() or "s3" in str(rsp.ErrorComment).lower()
    finally:
        server.stop()
