"""The archive side of retrieve (pacs/retrieve.py): identifiers, planning, bytes, transcoding."""

from __future__ import annotations

import tracemalloc

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    MPEG2MPML,
)

from pacs import retrieve
from pacs.archive import Archive
from pacs.errors import InvalidQuery
from pacs.query import Level, MatchKind
from pacs.dimse.move import propose_contexts
from pacs.retrieve import RetrieveItem

from .factory import dataset_part, make_ct, to_bytes
from .retrieve_peers import sample, study_of_cts

PATIENT_ROOT = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
STUDY_ROOT = (Level.STUDY, Level.SERIES, Level.IMAGE)


def _identifier(**keys: object) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_identifier_uses_unique_keys_only() -> None:
    query = retrieve.query_from_identifier(
        _identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3", SeriesInstanceUID=["1.2.3.1", "1.2.3.2"],
                    PatientName="DOE*", Modality="CT"), STUDY_ROOT)
    assert query.level == Level.IMAGE
    assert [(m.keyword, m.kind) for m in query.matchers] == [
        ("StudyInstanceUID", MatchKind.SINGLE), ("SeriesInstanceUID", MatchKind.UID_LIST)]


@pytest.mark.parametrize("keys, levels, reason", [
    ({}, STUDY_ROOT, "QueryRetrieveLevel"),
    ({"QueryRetrieveLevel": "PATIENT", "PatientID": "P"}, STUDY_ROOT, "not in this information model"),
    ({"QueryRetrieveLevel": "STUDY"}, STUDY_ROOT, "StudyInstanceUID"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2"}, PATIENT_ROOT, "PatientID"),
    ({"QueryRetrieveLevel": "PATIENT", "PatientID": "P*"}, PATIENT_ROOT, "wildcards"),
    ({"QueryRetrieveLevel": "PATIENT", "PatientID": ["A", "B"]}, PATIENT_ROOT, "only one value"),
    ({"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": ["1.2", "1.3"], "SeriesInstanceUID": "1.2.1"},
     STUDY_ROOT, "only one value"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.1"},
     STUDY_ROOT, "below the STUDY level"),
    ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "abc"}, STUDY_ROOT, "not a UID"),
])
def test_invalid_identifiers(keys, levels, reason) -> None:
    with pytest.raises(InvalidQuery, match=reason):
        retrieve.query_from_identifier(_identifier(**keys), levels)


def test_plan_names_the_instances(archive: Archive) -> None:
    study, series, datasets = study_of_cts(3)
    for ds in datasets:
        archive.ingest_bytes(to_bytes(ds), source="test")
    query = retrieve.query_from_identifier(
        _identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series,
                    SOPInstanceUID=[datasets[0].SOPInstanceUID, datasets[2].SOPInstanceUID]), STUDY_ROOT)
    items = retrieve.plan(archive, query)
    assert [i.sop_instance_uid for i in items] == [datasets[0].SOPInstanceUID, datasets[2].SOPInstanceUID]
    assert {i.transfer_syntax_uid for i in items} == {ExplicitVRLittleEndian}
    missing = retrieve.query_from_identifier(_identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="9.9"),
                                             STUDY_ROOT)
    assert retrieve.plan(archive, missing) == []


@pytest.mark.parametrize("stored, accepted, expected", [
    (ExplicitVRLittleEndian, [ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    (ExplicitVRLittleEndian, [ImplicitVRLittleEndian], ImplicitVRLittleEndian),
    (ImplicitVRLittleEndian, [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ImplicitVRLittleEndian),
    (DeflatedExplicitVRLittleEndian, [ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    (JPEG2000Lossless, [JPEG2000Lossless, ExplicitVRLittleEndian], JPEG2000Lossless),
    (JPEG2000Lossless, [ImplicitVRLittleEndian, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    (JPEG2000Lossless, [], None),
    (JPEGLosslessSV1, [ExplicitVRLittleEndian], None),  # no decoder installed
    (MPEG2MPML, [ExplicitVRLittleEndian], None),
    (ExplicitVRBigEndian, [ExplicitVRLittleEndian], None),
])
def test_choose_syntax(stored, accepted, expected) -> None:
    assert retrieve.choose_syntax(stored, accepted) == expected


def test_stream_is_the_stored_dataset(archive: Archive) -> None:
    data = to_bytes(make_ct(rows=64, columns=64))
    result = archive.ingest_bytes(data, source="test")
    items = retrieve.plan(archive, retrieve.query_from_identifier(
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=result.study_uid), STUDY_ROOT))
    assert b"".join(retrieve.stream_dataset(archive, items[0], chunk_size=1000)) == dataset_part(data)


def test_transcoded_bytes_decode_to_the_same_pixels(archive: Archive) -> None:
    path = sample("RLE")
    result = archive.ingest_bytes(path.read_bytes(), source="test")
    [item] = retrieve.plan(archive, retrieve.query_from_identifier(
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=result.study_uid), STUDY_ROOT))
    ds = retrieve.transcode(retrieve.load_dataset(archive, item), ImplicitVRLittleEndian)
    assert ds.SOPInstanceUID == result.sop_instance_uid
    assert (ds.pixel_array == dcmread(path).pixel_array).all()
    assert retrieve.encode_dataset(ds, ImplicitVRLittleEndian)[:4] == b"\x08\x00\x05\x00"


def test_streaming_memory_is_one_object(archive: Archive) -> None:
    """40 objects of ~130 kB (5 MB) stream with one read buffer (1 MiB) of memory at most."""
    study, _, datasets = study_of_cts(0)
    for i in range(40):
        archive.ingest_bytes(to_bytes(make_ct(study=study, series=f"{study}.1", rows=256, columns=256, seed=i)),
                             source="test")
    items = retrieve.plan(archive, retrieve.query_from_identifier(
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study), STUDY_ROOT))
    assert len(items) == 40
    tracemalloc.start()
    try:
        total = sum(len(chunk) for item in items for chunk in retrieve.stream_dataset(archive, item))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > 40 * 130_000
    assert peak < 1.5 * 2**20


def test_contexts_keep_stored_syntaxes_apart() -> None:
    def item(sop_class: str, syntax: str) -> RetrieveItem:
        return RetrieveItem(sop_class, "1.2", syntax, "k", 1)

    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    contexts = propose_contexts([item(ct, ExplicitVRLittleEndian)] * 3 + [item(mr, JPEG2000Lossless)])
    assert contexts == [
        (ct, [ExplicitVRLittleEndian]), (mr, [JPEG2000Lossless]),
        (ct, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]), (mr, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    ]
    many = [item(f"1.2.3.{n}", ExplicitVRLittleEndian) for n in range(100)]
    contexts = propose_contexts(many)
    assert len(contexts) == 128
    assert {c for c, s in contexts if len(s) == 2} == {f"1.2.3.{n}" for n in range(100)}  # every class keeps one


def test_retrieve_from_s3(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 objects are not seekable: the file meta is skipped and objects decoded from a stream."""
    import boto3
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="archive")
        archive = Archive(settings.replace(storage_url="s3://archive/pacs"))
        try:
            data = to_bytes(make_ct(rows=64, columns=64))
            result = archive.ingest_bytes(data, source="test")
            rle = archive.ingest_bytes(sample("RLE").read_bytes(), source="test")
            [item] = retrieve.plan(archive, retrieve.query_from_identifier(
                _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=result.study_uid), STUDY_ROOT))
            assert b"".join(retrieve.stream_dataset(archive, item, chunk_size=4096)) == dataset_part(data)
            [rle_item] = retrieve.plan(archive, retrieve.query_from_identifier(
                _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=rle.study_uid), STUDY_ROOT))
            decoded = retrieve.transcode(retrieve.load_dataset(archive, rle_item), ExplicitVRLittleEndian)
            assert (decoded.pixel_array == dcmread(sample("RLE")).pixel_array).all()
        finally:
            archive.close()
