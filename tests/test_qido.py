"""QIDO-RS (PS3.18 10.6) against the running server: the shared matching table, paging,
return attributes, errors, CORS; over plain HTTP and through dicomweb-client."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from dicomweb import qido

from .factory import to_bytes
from .query_cases import STUDY_CASES, build_datasets
from .servers import ThreadedServer

Loaded = tuple[ThreadedServer, dict[str, str]]
STUDY_UID, SERIES_UID, SOP_UID, RETRIEVE_URL = "0020000D", "0020000E", "00080018", "00081190"


@pytest.fixture
def loaded(server: ThreadedServer) -> Loaded:
    datasets, labels = build_datasets()
    for ds in datasets:
        server.archive.ingest_bytes(to_bytes(ds), source="test")
    return server, labels


def get(server: ThreadedServer, path: str, params: Any = None, **headers: str) -> requests.Response:
    return requests.get(f"{server.base_url}/dicom-web{path}", params=params, headers=headers, timeout=30)


def http_params(keys: dict[str, str]) -> dict[str, str]:
    """The table's DICOM values as QIDO parameters: lists are comma-separated in a URL."""
    return {k: v.replace("\\", ",") for k, v in keys.items()}


def value(result: dict[str, Any], tag: str) -> Any:
    return (result.get(tag, {}).get("Value") or [None])[0]


def labelled(labels: dict[str, str], results: list[dict[str, Any]], tag: str = STUDY_UID) -> list[str]:
    reverse = {uid: label for label, uid in labels.items()}
    return [reverse.get(value(r, tag), value(r, tag)) for r in results]


@pytest.mark.parametrize("keys, expected", STUDY_CASES, ids=[str(c[0]) for c in STUDY_CASES])
def test_study_matching_table(loaded: Loaded, keys: dict[str, str], expected: set[str]) -> None:
    server, labels = loaded
    resp = get(server, "/studies", http_params(keys))
    assert resp.status_code == 200, resp.text
    found = labelled(labels, resp.json())
    assert len(found) == len(set(found))
    assert set(found) == expected


def test_backslash_lists_are_accepted_too(loaded: Loaded) -> None:
    server, labels = loaded
    resp = get(server, "/studies", {"ModalitiesInStudy": "CT\\MR"})
    assert set(labelled(labels, resp.json())) == {"S1", "S2", "S3"}
    uids = f"{labels['S1']},{labels['S4']}"
    assert set(labelled(labels, get(server, "/studies", {"StudyInstanceUID": uids}).json())) == {"S1", "S4"}


def test_tags_as_keys_and_repeated_keys(loaded: Loaded) -> None:
    server, labels = loaded
    resp = get(server, "/studies", [("00100020", "P1"), ("00080050", "A100")])
    assert labelled(labels, resp.json()) == ["S1"]
    resp = get(server, "/studies", [("ModalitiesInStudy", "PT"), ("ModalitiesInStudy", "CR")])
    assert set(labelled(labels, resp.json())) == {"S3", "S4"}


def test_study_defaults_retrieve_url_and_content_type(loaded: Loaded) -> None:
    server, labels = loaded
    resp = get(server, "/studies", {"PatientID": "P2"})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/dicom+json"
    [study] = resp.json()
    assert value(study, RETRIEVE_URL) == f"{server.base_url}/dicom-web/studies/{labels['S3']}"
    assert study[RETRIEVE_URL]["vr"] == "UR"
    assert value(study, "00080056") == "ONLINE"
    assert study["00080061"]["Value"] == ["CT", "PT"]
    assert (value(study, "00201206"), value(study, "00201208")) == (2, 2)
    assert (value(study, "00080020"), value(study, "00080030"), value(study, "00080050")) == (
        "20251231", "080000", "B_1%")
    assert value(study, "00100010") == {"Alphabetic": "Müller^Jürgen"}
    assert (value(study, "00100030"), value(study, "00100040")) == ("19700101", "F")
    assert "00081030" not in study  # StudyDescription: not a default, not asked
    assert SERIES_UID not in study and SOP_UID not in study and "7FE00010" not in study
    assert list(study) == sorted(study)


def test_non_ascii_names_percent_encoded(loaded: Loaded) -> None:
    server, labels = loaded
    resp = get(server, "/studies", {"PatientName": "Müller*"})
    assert "%C3%BC" in resp.url
    [study] = resp.json()
    assert value(study, "00100010")["Alphabetic"] == "Müller^Jürgen"
    assert resp.content.decode("utf-8").count("Müller") == 1  # UTF-8, not \\u escapes


def test_empty_result_is_200_with_empty_array(loaded: Loaded) -> None:
    server, _ = loaded
    resp = get(server, "/studies", {"PatientID": "NOBODY"})
    assert (resp.status_code, resp.content) == (200, b"[]")
    resp = get(server, "/studies/1.2.3.999/series")
    assert (resp.status_code, resp.json()) == (200, [])


def test_includefield_lists_repeats_tags_and_all(loaded: Loaded) -> None:
    server, labels = loaded
    params = [("PatientID", "P1"), ("includefield", "StudyDescription,00081030"), ("includefield", "00200010")]
    results = get(server, "/studies", params).json()
    assert {value(r, "00081030") for r in results} == {"CT CHEST", "MR HEAD"}
    [everything] = get(server, "/studies", {"AccessionNumber": "A100", "includefield": "all"}).json()
    assert value(everything, "00081030") == "CT CHEST"
    assert value(everything, "00080090") == {"Alphabetic": "Smith^Anna"}
    assert SOP_UID not in everything and "00280010" not in everything  # instance-level
    [instance] = get(server, f"/studies/{labels['S4']}/instances", {"includefield": "all"}).json()
    assert value(instance, "00280010") == 16 and value(instance, "00080060") == "CR"
    assert "7FE00010" not in instance  # bulk data never appears
    [instance] = get(server, f"/studies/{labels['S4']}/instances", {"includefield": "7FE00010"}).json()
    assert "7FE00010" not in instance
    dotted = get(server, "/studies", {"includefield": "RequestAttributesSequence.RequestedProcedureID"})
    assert dotted.status_code == 200 and len(dotted.json()) == 5


def test_limit_offset_and_warning(loaded: Loaded) -> None:
    server, labels = loaded
    first = get(server, "/studies", {"limit": "2"})
    assert first.status_code == 200 and len(first.json()) == 2
    warning = first.headers["Warning"]
    assert warning.startswith("299 ") and '"There are additional results that can be requested"' in warning
    pages = [get(server, "/studies", {"limit": 2, "offset": offset}) for offset in (0, 2, 4)]
    assert [len(p.json()) for p in pages] == [2, 2, 1]
    assert "Warning" not in pages[-1].headers
    assert labelled(labels, [r for p in pages for r in p.json()]) == ["S1", "S2", "S3", "S4", "S5"]
    assert get(server, "/studies", {"offset": 9}).json() == []
    assert "Warning" not in get(server, "/studies").headers


def test_server_maximum_cuts_with_warning(loaded: Loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    server, _ = loaded
    monkeypatch.setattr(qido, "MAX_RESULTS", 3)
    resp = get(server, "/studies")
    assert len(resp.json()) == 3
    assert "exceeded the maximum supported by the server (3)" in resp.headers["Warning"]
    assert get(server, "/studies", {"limit": 4}).status_code == 400


@pytest.mark.parametrize(
    "path, params, reason",
    [
        ("/studies", {"Nonsense": "x"}, "unknown attribute Nonsense"),
        ("/studies", {"StudyDate": "2026-01"}, "StudyDate: dates are YYYYMMDD"),
        ("/studies", {"StudyDate": "20260230x"}, "StudyDate: dates are YYYYMMDD"),
        ("/studies", {"StudyDate": "-"}, "a range needs at least one end"),
        ("/studies", {"StudyDate": "20260201-20260101"}, "range start after its end"),
        ("/studies", {"StudyTime": "25h"}, "times are"),
        ("/studies", {"limit": "-1"}, "limit must be an integer from 0 to 10000"),
        ("/studies", {"limit": "ten"}, "limit must be an integer"),
        ("/studies", {"limit": "2.5"}, "limit must be an integer"),
        ("/studies", {"limit": "10001"}, "limit must be an integer from 0 to 10000"),
        ("/studies", {"limit": "1e3"}, "limit must be an integer"),
        ("/studies", {"limit": ""}, "limit must be an integer"),
        ("/studies", [("limit", "1"), ("limit", "2")], "limit given more than once"),
        ("/studies", {"offset": "-3"}, "offset must be an integer"),
        ("/studies", {"offset": "9" * 40}, "offset must be an integer"),
        ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching must be true or false"),
        ("/studies", {"emptyvaluematching": "yes"}, "emptyvaluematching must be true or false"),
        ("/studies", {"multiplevaluematching": "1"}, "multiplevaluematching must be true or false"),
        ("/studies", {"PatientBirthDate": "19700132x"}, "PatientBirthDate: dates are YYYYMMDD"),
        ("/series", {"SeriesDate": "2026010"}, "SeriesDate: dates are YYYYMMDD"),
        ("/studies", {"includefield": "00100010,Bogus"}, "includefield: unknown attribute Bogus"),
        ("/studies", {"includefield": "NoSuchKeyword"}, "includefield: unknown attribute NoSuchKeyword"),
        ("/studies", {"StudyComments": "x"}, "matching on StudyComments is not supported"),
        ("/studies", {"Modality": "CT"}, "Modality is below the STUDY level"),
        ("/studies", {"StudyInstanceUID": "not-a-uid"}, "StudyInstanceUID: not a UID"),
        ("/studies", {"PatientName": "A,B"}, "PatientName: only one value allowed"),
        ("/studies", {"ReferencedStudySequence.ReferencedSOPInstanceUID": "1.2"}, "sequence matching"),
        ("/studies/1.2.3/series", {"StudyInstanceUID": "1.2.3"}, "StudyInstanceUID is given in the path"),
        ("/studies/not..uid/series", {}, "StudyInstanceUID: not a UID"),
        ("/instances", {"InstanceNumber": "9" * 20}, "InstanceNumber: integer out of range"),
        ("/instances", {"InstanceNumber": "two"}, "InstanceNumber: not an integer"),
        # regression (fuzz run): a NUL reached the SQL text and PostgreSQL answered 500
        ("/studies", {"PatientName": "a\x00b"}, "PatientName: a value contains a NUL character"),
        ("/studies", {"AccessionNumber": "A\x00*"}, "AccessionNumber: a value contains a NUL character"),
        ("/studies", {"ModalitiesInStudy": "CT,M\x00R"}, "ModalitiesInStudy: a value contains a NUL character"),
    ],
)
def test_bad_requests_get_400_with_reason(loaded: Loaded, path: str, params: dict[str, str], reason: str) -> None:
    server, _ = loaded
    resp = get(server, path, params)
    assert resp.status_code == 400, resp.text
    assert reason in resp.json()["error"]
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_nested_routes(loaded: Loaded) -> None:
    server, labels = loaded
    base = f"{server.base_url}/dicom-web"
    series = get(server, f"/studies/{labels['S3']}/series").json()
    assert labelled(labels, series, SERIES_UID) == ["S3.CT", "S3.PT"]
    assert [value(s, "00201209") for s in series] == [1, 1]
    assert [value(s, "00080060") for s in series] == ["CT", "PT"]
    assert value(series[1], RETRIEVE_URL) == f"{base}/studies/{labels['S3']}/series/{labels['S3.PT']}"
    assert all(value(s, STUDY_UID) == labels["S3"] for s in series)
    assert "00100010" not in series[0]  # study attributes only when the study is not in the path
    instances = get(server, f"/studies/{labels['S1']}/instances").json()
    assert len(instances) == 3 and {value(i, SERIES_UID) for i in instances} == {labels["S1.CT"]}
    [one] = get(server, f"/studies/{labels['S1']}/series/{labels['S1.CT']}/instances",
                {"InstanceNumber": "2"}).json()
    assert value(one, "00200013") == 2 and value(one, "00080056") == "ONLINE"
    assert value(one, RETRIEVE_URL) == (
        f"{base}/studies/{labels['S1']}/series/{labels['S1.CT']}/instances/{value(one, SOP_UID)}")
    assert (value(one, "00280010"), value(one, "00280011"), value(one, "00280100")) == (16, 16, 16)
    assert "00080060" not in one  # series attributes only when the series is not in the path


def test_relational_series_and_instance_searches(loaded: Loaded) -> None:
    server, labels = loaded
    [pt] = get(server, "/series", {"Modality": "PT"}).json()
    assert value(pt, SERIES_UID) == labels["S3.PT"]
    assert value(pt, "00100010")["Alphabetic"] == "Müller^Jürgen"  # study defaults included
    doe = get(server, "/series", {"PatientName": "doe*", "StudyDate": "20260110-"}).json()
    assert labelled(labels, doe, SERIES_UID) == ["S2.MR", "S5.US"]
    instances = get(server, "/instances", {"PatientID": "P1", "Modality": "CT"}).json()
    assert len(instances) == 3 and {value(i, "00080060") for i in instances} == {"CT"}
    assert all(value(i, RETRIEVE_URL).startswith(f"{server.base_url}/dicom-web/studies/{labels['S1']}/series/")
               for i in instances)
    assert get(server, f"/studies/{labels['S1']}/series", {"Modality": "MR"}).json() == []


def test_fuzzy_person_name_matching(loaded: Loaded) -> None:
    server, labels = loaded
    fuzzy = get(server, "/studies", {"PatientName": "jo do", "fuzzymatching": "true"}).json()
    assert set(labelled(labels, fuzzy)) == {"S1", "S2"}
    assert get(server, "/studies", {"PatientName": "jo do"}).json() == []
    assert get(server, "/studies", {"PatientName": "ohn", "fuzzymatching": "true"}).json() == []
    jurgen = get(server, "/studies", {"PatientName": "jurg", "fuzzymatching": "true"}).json()
    assert labelled(labels, jurgen) == ["S3"]


def test_dicomweb_client(loaded: Loaded) -> None:
    server, labels = loaded
    client = DICOMwebClient(url=f"{server.base_url}/dicom-web")
    studies = client.search_for_studies(search_filters={"PatientName": "doe*"}, fields=["StudyDescription"])
    assert set(labelled(labels, studies)) == {"S1", "S2", "S5"}
    assert {value(s, "00081030") for s in studies} == {"CT CHEST", "MR HEAD", "US ABDOMEN"}
    [s3] = client.search_for_studies(search_filters={"PatientName": "Müller^Jürgen"})
    assert value(s3, STUDY_UID) == labels["S3"]
    paged = client.search_for_studies(limit=2, get_remaining=True)
    assert labelled(labels, paged) == ["S1", "S2", "S3", "S4", "S5"]
    series = client.search_for_series(study_instance_uid=labels["S3"], search_filters={"Modality": "CT"})
    assert labelled(labels, series, SERIES_UID) == ["S3.CT"]
    instances = client.search_for_instances(study_instance_uid=labels["S2"], series_instance_uid=labels["S2.MR"])
    assert len(instances) == 2
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    with pytest.raises(requests.HTTPError) as err:
        client.search_for_studies(search_filters={"StudyDate": "yesterday"})
    assert err.value.response.status_code == 400


def test_cors_preflight_and_headers(loaded: Loaded) -> None:
    server, _ = loaded
    resp = requests.options(f"{server.base_url}/dicom-web/studies", timeout=30, headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "accept, authorization"})
    assert resp.status_code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"] == "accept, authorization"
    resp = get(server, "/studies", {"limit": 1}, Origin="http://viewer.example")
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Warning" in resp.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Origin" not in requests.get(f"{server.base_url}/healthz", timeout=30).headers
    nested = requests.options(f"{server.base_url}/dicom-web/studies/1.2.3/series/1.2.4/instances", timeout=30)
    assert nested.status_code == 204 and nested.headers["Access-Control-Allow-Origin"] == "*"
    unknown = get(server, "/no-such-resource")
    assert unknown.status_code == 404 and unknown.headers["Access-Control-Allow-Origin"] == "*"


def test_accept_header(loaded: Loaded) -> None:
    server, _ = loaded
    assert get(server, "/studies", Accept="application/dicom+json").status_code == 200
    assert get(server, "/studies", Accept="application/json, text/html;q=0.5").status_code == 200
    resp = get(server, "/studies", Accept="multipart/related; type=application/dicom+xml")
    assert resp.status_code == 406 and "application/dicom+json" in resp.json()["error"]


def test_pacs_does_not_import_dicomweb() -> None:
    """Composition through the ``pacs.http`` entry point: pacs/ imports no protocol package."""
    code = "import sys, pacs.server, pacs.web, pacs.cli; assert 'dicomweb' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_ohif_study_list_query(loaded: Loaded) -> None:
    """The study list query OHIF's DicomWebDataSource sends (qido.js mapParams)."""
    server, labels = loaded
    resp = get(server, "/studies", {"limit": 101, "offset": 0, "fuzzymatching": "false",
                                    "includefield": "00081030,00080060", "PatientName": "*doe*",
                                    "StudyDate": "20260101-20260131"}, Accept="application/dicom+json")
    assert resp.status_code == 200 and "Warning" not in resp.headers
    studies = resp.json()
    assert labelled(labels, studies) == ["S1", "S2", "S5"]
    assert [value(s, "00081030") for s in studies] == ["CT CHEST", "MR HEAD", "US ABDOMEN"]
    assert [s["00080061"]["Value"] for s in studies] == [["CT"], ["MR"], ["US"]]


def test_limit_zero_returns_no_match_and_warns_when_some_exist(loaded: Loaded) -> None:
    """``limit=0`` is a valid uint (PS3.18 Table 8.3.4-1): zero results; the Warning tells
    whether anything matched."""
    server, _ = loaded
    resp = get(server, "/studies", {"limit": "0"})
    assert (resp.status_code, resp.content) == (200, b"[]")
    assert '"There are additional results that can be requested"' in resp.headers["Warning"]
    resp = get(server, "/studies", {"limit": "0", "PatientID": "NOBODY"})
    assert (resp.status_code, resp.content) == (200, b"[]") and "Warning" not in resp.headers


def test_unsupported_matching_modes_warn(loaded: Loaded) -> None:
    """emptyvaluematching / multiplevaluematching = true: the search runs without them and
    says so (PS3.18 8.3.4.5, 8.3.4.6); false changes nothing."""
    server, labels = loaded
    resp = get(server, "/studies", {"PatientID": "P1", "emptyvaluematching": "true"})
    assert set(labelled(labels, resp.json())) == {"S1", "S2"}
    assert resp.headers["Warning"] == (f'299 {resp.url.split("/")[2]} "The emptyvaluematching parameter is '
                                       'not supported. Empty Value Matching has not been performed."')
    both = get(server, "/studies", {"emptyvaluematching": "TRUE", "multiplevaluematching": "true", "limit": "1"})
    warning = both.headers["Warning"]
    host = resp.url.split("/")[2]  # counted with the agent: a port like 37299 holds "299 " too
    assert warning.count(f'299 {host} "') == 3 and "Multiple Value Matching has not been performed" in warning
    assert "additional results" in warning
    quiet = get(server, "/studies", {"emptyvaluematching": "false", "multiplevaluematching": "false"})
    assert len(quiet.json()) == 5 and "Warning" not in quiet.headers


@pytest.mark.parametrize("params, expected", [
    ({"PatientName": "jo do"}, {"S1", "S2"}),  # each word starts some component
    ({"PatientName": "DOE"}, {"S1", "S2", "S5"}),
    ({"PatientName": "doe^ja"}, {"S5"}),
    ({"PatientName": "jane doe"}, {"S5"}),  # order of the words does not matter
    ({"PatientName": "jurg mull"}, {"S3"}),  # accents folded
    ({"PatientName": "Jürgen"}, {"S3"}),
    ({"PatientName": "o'br"}, {"S4"}),
    ({"PatientName": "ohn"}, set()),  # not a component start
    ({"PatientName": "doe x"}, set()),  # every word must match
    ({"PatientName": "*ohn*"}, {"S1", "S2"}),  # wildcards: matched as without fuzzymatching
    ({"ReferringPhysicianName": "ann"}, {"S1"}),
    ({"ReferringPhysicianName": "jones"}, {"S2"}),
    ({"PatientID": "P"}, set()),  # not a person name: exact matching
])
def test_fuzzy_matching_rule(loaded: Loaded, params: dict[str, str], expected: set[str]) -> None:
    server, labels = loaded
    resp = get(server, "/studies", {**params, "fuzzymatching": "true"})
    assert resp.status_code == 200 and "Warning" not in resp.headers
    assert set(labelled(labels, resp.json())) == expected


def test_percent_encoded_values_are_decoded(loaded: Loaded) -> None:
    server, labels = loaded
    base = f"{server.base_url}/dicom-web/studies"
    raw = {
        "?PatientName=jo%20do&fuzzymatching=true": {"S1", "S2"},
        "?PatientName=jo+do&fuzzymatching=true": {"S1", "S2"},  # '+' is a space in a query
        "?PatientName=M%C3%BCller%5EJ%C3%BCrgen": {"S3"},
        f"?StudyInstanceUID={labels['S1']}%2C{labels['S4']}": {"S1", "S4"},
        "?AccessionNumber=B_1%25": {"S3"},  # a literal % after decoding
        "?ModalitiesInStudy=CT%5CMR": {"S1", "S2", "S3"},  # an encoded backslash list
        "?%50atientID=P1": {"S1", "S2"},  # an encoded key
        "?StudyDate=20260101%2D20260110": {"S1", "S5"},
    }
    for query, expected in raw.items():
        resp = requests.get(base + query, timeout=30)
        assert resp.status_code == 200, (query, resp.text)
        assert set(labelled(labels, resp.json())) == expected, query


def test_dicomweb_client_fuzzy_fields_limit_offset(loaded: Loaded) -> None:
    server, labels = loaded
    client = DICOMwebClient(url=f"{server.base_url}/dicom-web")
    studies = client.search_for_studies(search_filters={"PatientName": "jo do"}, fuzzymatching=True,
                                        fields=["StudyDescription", "00081030"], limit=1, offset=1)
    assert labelled(labels, studies) == ["S2"]
    assert value(studies[0], "00081030") == "MR HEAD"
    everything = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "doe"},
                                           fields=["all"])
    assert labelled(labels, everything) == ["S1", "S2", "S5"]
    assert value(everything[0], "00081030") == "CT CHEST"
    series = client.search_for_series(search_filters={"PatientName": "mull"}, fuzzymatching=True,
                                      fields=["BodyPartExamined"], limit=1, offset=1)
    assert labelled(labels, series, SERIES_UID) == ["S3.PT"]
    instances = client.search_for_instances(study_instance_uid=labels["S1"], fuzzymatching=True,
                                            fields=["ImageType"], limit=2, offset=1)
    assert [value(i, "00200013") for i in instances] == [2, 3]
    assert client.search_for_studies(search_filters={"PatientName": "ohn"}, fuzzymatching=True) == []


def test_public_base_url_in_retrieve_and_bulk_data_uris(settings: Any) -> None:
    """Behind a reverse proxy the URLs name the public root, not the Host the proxy sent."""
    srv = ThreadedServer(settings.replace(public_base_url="https://pacs.example.org/dicom-web/")).start()
    try:
        datasets, labels = build_datasets()
        for ds in datasets[:3]:
            srv.archive.ingest_bytes(to_bytes(ds), source="test")
        [study] = get(srv, "/studies").json()
        public = f"https://pacs.example.org/dicom-web/studies/{labels['S1']}"
        assert value(study, RETRIEVE_URL) == public
        [series] = get(srv, f"/studies/{labels['S1']}/series").json()
        assert value(series, RETRIEVE_URL) == f"{public}/series/{labels['S1.CT']}"
        metadata = get(srv, f"/studies/{labels['S1']}/metadata").json()
        sop = value(metadata[0], SOP_UID)
        assert metadata[0]["7FE00010"]["BulkDataURI"] == (
            f"{public}/series/{labels['S1.CT']}/instances/{sop}/bulk/pixeldata")
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="public_base_url"):
        settings.replace(public_base_url="pacs.example.org/dicom-web")


def test_trailing_nul_padding_is_ignored(loaded: Loaded) -> None:
    """NULs ending a value are padding (as in UI values), not part of what is matched."""
    server, labels = loaded
    resp = get(server, "/studies", {"AccessionNumber": "A100\x00\x00"})
    assert resp.status_code == 200
    assert labelled(labels, resp.json()) == ["S1"]
