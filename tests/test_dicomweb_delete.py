"""DELETE of studies, series and instances over DICOMweb (``dicomweb/delete.py``), against
the running server: through the archive delete, seen by QIDO-RS, WADO-RS, the blob store
and the change feed; refused (405) while ``allow_delete`` is off."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from sqlalchemy import select

from pacs.index.models import Instance
from pacs.settings import Settings

from .factory import make_ct, short_uid, to_bytes
from .servers import ThreadedServer


@dataclass
class Held:
    server: ThreadedServer
    study: str
    series: list[str]  # two series: 3 and 2 instances
    sops: dict[str, list[str]]
    other_study: str

    def url(self, path: str) -> str:
        return f"{self.server.base_url}/dicom-web{path}"


def _load(server: ThreadedServer) -> Held:
    study, other = short_uid(), short_uid()
    series = [f"{study}.1", f"{study}.2"]
    sops: dict[str, list[str]] = {}
    seed = 0
    for number, (uid, count) in enumerate(zip(series, (3, 2)), start=1):
        sops[uid] = []
        for i in range(count):
            ds = make_ct(study=study, series=uid, patient_id="DEL1", seed=seed)
            ds.SeriesNumber, ds.InstanceNumber = number, i + 1
            ds.Modality = "CT" if number == 1 else "MR"
            server.archive.ingest_bytes(to_bytes(ds), source="test")
            sops[uid].append(str(ds.SOPInstanceUID))
            seed += 1
    server.archive.ingest_bytes(to_bytes(make_ct(study=other, patient_id="DEL2", seed=99)), source="test")
    return Held(server, study, series, sops, other)


def _server(settings: Settings, allow: bool) -> Iterator[Held]:
    srv = ThreadedServer(settings.replace(allow_delete=allow)).start()
    try:
        yield _load(srv)
    finally:
        srv.stop()


@pytest.fixture
def held(settings: Settings) -> Iterator[Held]:
    yield from _server(settings, True)


@pytest.fixture
def refused(settings: Settings) -> Iterator[Held]:
    yield from _server(settings, False)


def value(result: dict[str, Any], tag: str) -> Any:
    return (result.get(tag, {}).get("Value") or [None])[0]


def study_counts(held: Held, study: str) -> tuple[int, int, list[str]] | None:
    """(NumberOfStudyRelatedSeries, NumberOfStudyRelatedInstances, ModalitiesInStudy) by QIDO-RS."""
    found = requests.get(held.url("/studies"), params={"StudyInstanceUID": study}, timeout=30).json()
    if not found:
        return None
    [one] = found
    return value(one, "00201206"), value(one, "00201208"), one.get("00080061", {}).get("Value", [])


def blob_keys(held: Held) -> dict[str, str]:
    with held.server.archive.db.read() as conn:
        return dict(conn.execute(select(Instance.sop_instance_uid, Instance.blob_key)).tuples().all())


def changes(held: Held) -> list[dict[str, Any]]:
    resp = requests.get(f"{held.server.base_url}/api/changes", params={"limit": 1000}, timeout=30)
    return [c for c in resp.json()["changes"] if c["type"].endswith("Deleted")]


def test_delete_instance(held: Held) -> None:
    series = held.series[0]
    sop = held.sops[series][1]
    key = blob_keys(held)[sop]
    assert held.server.archive.store.exists(key)
    resp = requests.delete(held.url(f"/studies/{held.study}/series/{series}/instances/{sop}"), timeout=30)
    assert (resp.status_code, resp.content) == (204, b"")
    assert study_counts(held, held.study) == (2, 4, ["CT", "MR"])
    listed = requests.get(held.url(f"/studies/{held.study}/series/{series}/instances"), timeout=30).json()
    assert sorted(value(i, "00080018") for i in listed) == sorted(s for s in held.sops[series] if s != sop)
    [qido_series] = requests.get(held.url(f"/studies/{held.study}/series"),
                                 params={"SeriesInstanceUID": series}, timeout=30).json()
    assert value(qido_series, "00201209") == 2
    assert requests.get(held.url(f"/studies/{held.study}/series/{series}/instances/{sop}"),
                        timeout=30).status_code == 404
    assert not held.server.archive.store.exists(key)
    assert sop not in blob_keys(held)
    assert [(c["type"], c["study_uid"], c["series_uid"], c["sop_instance_uid"]) for c in changes(held)] == [
        ("InstanceDeleted", held.study, series, sop)]


def test_delete_series(held: Held) -> None:
    series = held.series[1]
    keys = [blob_keys(held)[s] for s in held.sops[series]]
    resp = requests.delete(held.url(f"/studies/{held.study}/series/{series}"), timeout=30)
    assert resp.status_code == 204
    assert study_counts(held, held.study) == (1, 3, ["CT"])  # aggregates exact, MR gone
    assert requests.get(held.url(f"/studies/{held.study}/series/{series}/metadata"), timeout=30).status_code == 404
    assert [value(s, "0020000E") for s in requests.get(held.url(f"/studies/{held.study}/series"),
                                                       timeout=30).json()] == [held.series[0]]
    assert not any(held.server.archive.store.exists(k) for k in keys)
    assert [(c["type"], c["series_uid"]) for c in changes(held)] == [("SeriesDeleted", series)]


def test_delete_study_through_dicomweb_client(held: Held) -> None:
    keys = blob_keys(held)
    client = DICOMwebClient(url=f"{held.server.base_url}/dicom-web")
    client.delete_study(held.study)
    assert study_counts(held, held.study) is None
    assert requests.get(held.url(f"/studies/{held.study}"), timeout=30).status_code == 404
    assert requests.get(held.url(f"/studies/{held.study}/metadata"), timeout=30).status_code == 404
    assert client.search_for_instances(study_instance_uid=held.study) == []
    gone = [k for sop, k in keys.items() if sop not in set(blob_keys(held))]
    assert len(gone) == 5 and not any(held.server.archive.store.exists(k) for k in gone)
    assert study_counts(held, held.other_study) == (1, 1, ["CT"])  # the other study untouched
    assert {(c["type"], c["study_uid"]) for c in changes(held)} == {
        ("SeriesDeleted", held.study), ("StudyDeleted", held.study)}
    study_event = next(c for c in changes(held) if c["type"] == "StudyDeleted")
    assert study_event["payload"] == {"instances": 5}


def test_delete_series_and_instance_through_dicomweb_client(held: Held) -> None:
    client = DICOMwebClient(url=f"{held.server.base_url}/dicom-web")
    first, second = held.series
    client.delete_instance(held.study, first, held.sops[first][0])
    client.delete_series(held.study, second)
    assert study_counts(held, held.study) == (1, 2, ["CT"])
    client.delete_instance(held.study, first, held.sops[first][1])
    client.delete_instance(held.study, first, held.sops[first][2])  # the last one: study gone
    assert study_counts(held, held.study) is None
    assert [c["type"] for c in changes(held)][-3:] == ["InstanceDeleted", "SeriesDeleted", "StudyDeleted"]


@pytest.mark.parametrize("path, reason", [
    ("/studies/1.2.3.999", "study 1.2.3.999 not found"),
    ("/studies/{study}/series/1.2.3.999", "series 1.2.3.999 of study"),
    ("/studies/{study}/series/{series}/instances/1.2.3.999", "instance 1.2.3.999 of series"),
    ("/studies/{study}/series/{other_series}/instances/{sop}", "not found"),  # wrong parent
])
def test_not_held_is_404_and_deletes_nothing(held: Held, path: str, reason: str) -> None:
    before = blob_keys(held)
    url = held.url(path.format(study=held.study, series=held.series[0], other_series=held.series[1],
                               sop=held.sops[held.series[0]][0]))
    resp = requests.delete(url, timeout=30)
    assert resp.status_code == 404 and reason in resp.json()["error"]
    assert blob_keys(held) == before and changes(held) == []


def test_malformed_uid_is_400(held: Held) -> None:
    resp = requests.delete(held.url("/studies/not..a.uid"), timeout=30)
    assert resp.status_code == 400 and "StudyInstanceUID: not a UID" in resp.json()["error"]


def test_switched_off_refuses_and_deletes_nothing(refused: Held) -> None:
    before = blob_keys(refused)
    series = refused.series[0]
    for path in (f"/studies/{refused.study}", f"/studies/{refused.study}/series/{series}",
                 f"/studies/{refused.study}/series/{series}/instances/{refused.sops[series][0]}"):
        resp = requests.delete(refused.url(path), timeout=30)
        assert resp.status_code == 405
        assert resp.json() == {"error": "DELETE is disabled on this server (setting allow_delete)"}
        assert "DELETE" not in resp.headers["Allow"] and "GET" in resp.headers["Allow"]
    client = DICOMwebClient(url=f"{refused.server.base_url}/dicom-web")
    with pytest.raises(requests.HTTPError) as err:
        client.delete_study(refused.study)
    assert err.value.response.status_code == 405
    assert blob_keys(refused) == before
    assert all(refused.server.archive.store.exists(k) for k in before.values())
    assert study_counts(refused, refused.study) == (2, 5, ["CT", "MR"])
    assert changes(refused) == []
