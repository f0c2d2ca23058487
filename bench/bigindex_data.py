"""Synthetic index rows for the big-index benchmark (bench/bigindex.py).

Rows look exactly like those a real ingest writes: each instance's DICOM JSON is the one
:func:`pacs.parse.parse_instance` produced for a template object of its modality, with
the varying attributes replaced; the index columns are then computed from that JSON by
the ingest's own helper (``pacs.parse._extract_index_values``: normalised person names,
normalised times, ...) and the study aggregates by the writer's (``_set_within``).

Study ``n`` (0-based) is generated from ``random.Random(f"{seed}-{n // batch}")`` alone, so
a batch can be regenerated identically (resumable loads). Keys: study id ``n + 1``,
series id ``4n + k + 1``, instance id ``10n + i + 1`` (series ids have gaps).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

from pacs.index.summary import study_summary  # noqa: E402
from pacs.index.writer import MODALITIES_ROOM, _set_within  # noqa: E402
from pacs.parse import _extract_index_values, parse_instance  # noqa: E402
from pacs.storage import instance_key  # noqa: E402
from tests.factory import to_bytes  # noqa: E402

UID_ROOT = "1.2.826.0.1.3680043.10.4242"
INSTANCES_PER_STUDY = 10
#: Instances per series for a study of 2, 3 or 4 series.
SPLITS = {2: (5, 5), 3: (4, 3, 3), 4: (3, 3, 2, 2)}
FIRST_DAY = date(2016, 1, 1)
DAYS = 3653  # ten years of StudyDate
#: Modality mix of studies (weights, percent).
MODALITY_MIX = {"CT": 30, "MR": 20, "CR": 20, "US": 15, "DX": 15}
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1", "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
}
DESCRIPTIONS = {
    "CT": [("CT HEAD W/O CONTRAST", "HEAD"), ("CT CHEST W CONTRAST", "CHEST"), ("CT ABDOMEN PELVIS", "ABDOMEN")],
    "MR": [("MR BRAIN W/WO", "BRAIN"), ("MR KNEE LEFT", "KNEE"), ("MR LUMBAR SPINE", "LSPINE")],
    "CR": [("CHEST PA AND LATERAL", "CHEST"), ("HAND 3 VIEWS", "HAND")],
    "US": [("US ABDOMEN COMPLETE", "ABDOMEN"), ("US THYROID", "NECK")],
    "DX": [("XR CHEST 1 VIEW", "CHEST"), ("XR ANKLE RIGHT", "ANKLE")],
}
SURNAMES = """SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ HERNANDEZ LOPEZ
GONZALEZ WILSON ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE PEREZ THOMPSON WHITE HARRIS SANCHEZ
CLARK RAMIREZ LEWIS ROBINSON WALKER YOUNG ALLEN KING WRIGHT SCOTT TORRES NGUYEN HILL FLORES GREEN
ADAMS NELSON BAKER HALL RIVERA CAMPBELL MITCHELL CARTER ROBERTS GOMEZ PHILLIPS EVANS TURNER DIAZ
PARKER CRUZ EDWARDS COLLINS REYES STEWART MORRIS MORALES MURPHY COOK ROGERS GUTIERREZ ORTIZ MORGAN
COOPER PETERSON BAILEY REED KELLY HOWARD RAMOS KIM COX WARD RICHARDSON WATSON BROOKS CHAVEZ WOOD
JAMES BENNETT GRAY MENDOZA RUIZ HUGHES PRICE ALVAREZ CASTILLO SANDERS PATEL MYERS LONG ROSS FOSTER
JIMENEZ POWELL JENKINS PERRY RUSSELL SULLIVAN BELL COLEMAN BUTLER HENDERSON BARNES GONZALES FISHER
VASQUEZ SIMMONS ROMERO JORDAN PATTERSON ALEXANDER HAMILTON GRAHAM REYNOLDS GRIFFIN WALLACE MORENO
WEST COLE HAYES BRYANT HERRERA GIBSON ELLIS TRAN MEDINA AGUILAR STEVENS MURRAY FORD CASTRO MARSHALL
OWENS HARRISON FERNANDEZ MCDONALD WOODS WASHINGTON KENNEDY WELLS VARGAS HENRY CHEN FREEMAN WEBB
TUCKER GUZMAN BURNS CRAWFORD OLSON SIMPSON PORTER HUNTER GORDON MENDEZ SILVA SHAW SNYDER MASON
DIXON MUNOZ HUNT HICKS HOLMES PALMER WAGNER BLACK ROBERTSON BOYD ROSE STONE SALAZAR FOX WARREN MILLS
MEYER RICE SCHMIDT GARZA DANIELS FERGUSON NICHOLS STEPHENS SOTO WEAVER RYAN GARDNER PAYNE GRANT
DUNN KELLEY SPENCER HAWKINS ARNOLD PIERCE VAZQUEZ HANSEN PETERS SANTOS HART BRADLEY KNIGHT ELLIOTT
CUNNINGHAM DUNCAN ARMSTRONG HUDSON CARROLL LANE RILEY ANDREWS ALVARADO RAY DELGADO BERRY PERKINS
HOFFMAN JOHNSTON MATTHEWS PENA RICHARDS CONTRERAS WILLIS CARPENTER LAWRENCE SANDOVAL MÜLLER
SCHNEIDER FISCHER WEBER BECKER SCHULZ KOWALSKI NOWAK ROSSI RUSSO FERRARI DUBOIS LAURENT LEROY
TANAKA SUZUKI SATO OKAFOR MENSAH SMIRNOV IVANOV WATANABE TAKAHASHI ITO YAMAMOTO NAKAMURA KOBAYASHI
KATO YOSHIDA YAMADA SASAKI INOUE KIMURA HAYASHI SHIMIZU MORI ABE IKEDA HASHIMOTO ISHIKAWA OGAWA
FUJITA OKADA GOTO HASEGAWA MURAKAMI KONDO ENDO AOKI WANG ZHANG LIU YANG HUANG ZHAO WU ZHOU XU SUN
MA ZHU HU GUO HE LIN LUO ZHENG LIANG XIE TANG HAN FENG DENG CAO PENG ZENG XIAO TIAN DONG PAN YUAN
CAI JIANG YU DU YE CHENG WEI SU LU DING SHEN QIAN PARK CHOI JUNG KANG CHO YOON JANG LIM SHIN OH
SEO KWON HWANG AHN SONG YOO HONG JEON KO MOON SINGH KUMAR SHARMA GUPTA REDDY RAO IYER NAIR MENON
BOSE DAS MUKHERJEE CHATTERJEE BANERJEE JOSHI DESAI MEHTA SHAH KAPOOR CHOPRA MALHOTRA BHATT PILLAI
KHAN AHMED ALI HASSAN HUSSEIN IBRAHIM MAHMOUD YOUSSEF NASSER HADDAD KHOURY SALEH OMAR FARAH ABDI
OYELARAN ADEYEMI OKONKWO EZE NWOSU BANDA PHIRI MWANGI OTIENO KAMAU NJOROGE ACHEAMPONG BOATENG
OWUSU DIALLO TRAORE KEITA TOURE CISSE NDIAYE FALL SOW BA DIOP KOUASSI YAO ZULU DLAMINI NKOSI
WAGNER BAUER HOFFMANN RICHTER KLEIN WOLF SCHRÖDER NEUMANN SCHWARZ ZIMMERMANN BRAUN KRÜGER HOFMANN
HARTMANN LANGE SCHMITT WERNER KRAUSE LEHMANN KÖHLER HERRMANN KÖNIG WALTER HUBER KAISER FUCHS
PETERSEN JENSEN NIELSEN LARSEN SØRENSEN RASMUSSEN JØRGENSEN ANDERSEN PEDERSEN CHRISTENSEN
JOHANSSON KARLSSON NILSSON ERIKSSON LARSSON OLSSON PERSSON SVENSSON GUSTAFSSON LINDQVIST
BERGSTRÖM LUNDGREN VIRTANEN KORHONEN MÄKINEN NIEMINEN MÄKELÄ HÄMÄLÄINEN LAINE HEIKKINEN KOSKINEN
DE_JONG JANSEN DE_VRIES VAN_DEN_BERG VAN_DIJK BAKKER VISSER SMIT MEIJER DE_BOER MULDER DEKKER
BOS VOS HENDRIKS VAN_LEEUWEN WISNIEWSKI WÓJCIK KOWALCZYK KAMINSKI LEWANDOWSKI ZIELINSKI
SZYMANSKI WOZNIAK DABROWSKI KOZLOWSKI JANKOWSKI MAZUR KWIATKOWSKI KRAWCZYK PIOTROWSKI GRABOWSKI
NOVAK SVOBODA DVORAK CERNY PROCHAZKA KUCERA VESELY HORAK NEMETH NAGY TOTH SZABO HORVATH VARGA
KISS MOLNAR FARKAS PAPP TAKACS JUHASZ POPESCU IONESCU POPA STAN DUMITRU STOICA GHEORGHE MATEI
PAPADOPOULOS GEORGIOU NIKOLAOU DIMITRIOU KONSTANTINOU YILMAZ KAYA DEMIR ŞAHIN ÇELIK YILDIZ
YILDIRIM ÖZTÜRK AYDIN ÖZDEMIR ARSLAN DOĞAN KILIÇ ASLAN ESPOSITO BIANCHI ROMANO COLOMBO RICCI
MARINO GRECO BRUNO GALLO CONTI DE_LUCA MANCINI COSTA GIORDANO RIZZO LOMBARDI MORETTI FONTANA
BARBIERI FERREIRA OLIVEIRA PEREIRA ALMEIDA RIBEIRO CARVALHO GOMES MARTINS ROCHA SOUSA LIMA
ARAUJO CARDOSO TEIXEIRA CORREIA MOREIRA NUNES VIEIRA MONTEIRO BERNARD PETIT DURAND LEFEBVRE
MOREAU SIMON MICHEL GARNIER FAURE ROUSSEAU BLANC GUERIN BOYER CHEVALIER FRANÇOIS GAUTHIER
PERRIN MORIN MERCIER DUPONT LAMBERT BONNET O'BRIEN O'CONNOR MCCARTHY GALLAGHER DOHERTY
QUINN BYRNE MCLAUGHLIN""".split()
SURNAMES = list(dict.fromkeys(name.replace("_", " ") for name in SURNAMES))  # "DE_JONG" is DE JONG
GIVEN = """JAMES MARY JOHN PATRICIA ROBERT JENNIFER MICHAEL LINDA DAVID ELIZABETH WILLIAM BARBARA RICHARD
SUSAN JOSEPH JESSICA THOMAS SARAH CHARLES KAREN CHRISTOPHER LISA DANIEL NANCY MATTHEW BETTY ANTHONY
MARGARET MARK SANDRA DONALD ASHLEY STEVEN KIMBERLY PAUL EMILY ANDREW DONNA JOSHUA MICHELLE ANNA
JOSÉ HÉLÈNE ZOË LUCAS SOFIA NOAH MIA LIAM EMMA""".split()


@dataclass(frozen=True)
class Template:
    """One modality's template object as ingest parsed it."""

    body: dict[str, Any]
    transfer_syntax_uid: str
    pixel_offset: int | None
    pixel_length: int | None
    frame_ranges: str | None
    size: int


@dataclass
class Batch:
    """Rows of one batch of studies, in insert order."""

    studies: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)


def _template_dataset(modality: str) -> Dataset:
    """A small image of ``modality`` with the attributes a modality typically sends."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = f"{UID_ROOT}.9.1"
    for keyword, value in (("StudyDate", "20200101"), ("SeriesDate", "20200101"), ("AcquisitionDate", "20200101"),
                           ("StudyTime", "101500"), ("SeriesTime", "101500"), ("AccessionNumber", "A0"),
                           ("Modality", modality), ("Manufacturer", "ACME MEDICAL"),
                           ("InstitutionName", "GENERAL HOSPITAL"), ("ReferringPhysicianName", "DOE^JOHN"),
                           ("StationName", f"{modality}01"), ("StudyDescription", "X"), ("SeriesDescription", "X"),
                           ("ManufacturerModelName", "MODEL 7"), ("PatientName", "DOE^JANE"), ("PatientID", "P0"),
                           ("PatientBirthDate", "19700101"), ("PatientSex", "F"), ("BodyPartExamined", "CHEST"),
                           ("SoftwareVersions", "1.0"), ("StudyInstanceUID", f"{UID_ROOT}.9.2"),
                           ("SeriesInstanceUID", f"{UID_ROOT}.9.3"), ("StudyID", "1"), ("SeriesNumber", 1),
                           ("InstanceNumber", 1), ("PatientPosition", "HFS"), ("FrameOfReferenceUID", f"{UID_ROOT}.9.4"),
                           ("PixelSpacing", [0.5, 0.5]), ("SliceThickness", "1.25"), ("ImagePositionPatient", [0, 0, 0]),
                           ("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), ("SamplesPerPixel", 1),
                           ("PhotometricInterpretation", "MONOCHROME2"), ("Rows", 8), ("Columns", 8),
                           ("BitsAllocated", 16), ("BitsStored", 12), ("HighBit", 11), ("PixelRepresentation", 0),
                           ("WindowCenter", "40"), ("WindowWidth", "400")):
        setattr(ds, keyword, value)
    ds.PixelData = bytes(128)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def make_templates() -> dict[str, Template]:
    """Each modality's template, parsed by the ingest's own parser."""
    from io import BytesIO

    templates = {}
    for modality in MODALITY_MIX:
        data = to_bytes(_template_dataset(modality))
        parsed = parse_instance(BytesIO(data), len(data))
        # the loader writes the JSON with orjson: check it is byte for byte what ingest stored
        assert orjson.dumps(json.loads(parsed.dicom_json)).decode() == parsed.dicom_json
        frames = None if parsed.frame_ranges is None else json.dumps(parsed.frame_ranges, separators=(",", ":"))
        templates[modality] = Template(json.loads(parsed.dicom_json), parsed.transfer_syntax_uid,
                                       parsed.pixel_offset, parsed.pixel_length, frames, len(data))
    return templates


def _value(vr: str, value: Any) -> dict[str, Any]:
    if vr == "PN":
        return {"vr": "PN", "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": [value]}


def patient_values(k: int, seed: int) -> dict[str, str]:
    """Patient ``k``'s attributes: name from the lists, ID ``BIG0000123``."""
    rng = random.Random(f"{seed}-patient-{k}")
    birth = date(1930, 1, 1) + timedelta(days=rng.randrange(90 * 365))
    return {"PatientID": f"BIG{k:07d}", "PatientName": f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}",
            "PatientBirthDate": birth.strftime("%Y%m%d"), "PatientSex": rng.choice("MF")}


def patient_row(k: int, seed: int, template: Template) -> dict[str, Any]:
    """The patient table row of patient ``k`` (id ``k + 1``), as ingest computes it."""
    body = dict(template.body)
    for keyword, value in patient_values(k, seed).items():
        body[_TAG[keyword]] = _value(_VR[keyword], value)
    row = _extract_index_values(body)[0]
    return {"id": k + 1, **row, "created_at": _NOW}


_TAG = {"PatientID": "00100020", "PatientName": "00100010", "PatientBirthDate": "00100030",
        "PatientSex": "00100040", "StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E",
        "SOPInstanceUID": "00080018", "StudyDate": "00080020", "SeriesDate": "00080021",
        "AcquisitionDate": "00080022", "StudyTime": "00080030", "SeriesTime": "00080031",
        "AccessionNumber": "00080050", "Modality": "00080060", "ReferringPhysicianName": "00080090",
        "StudyDescription": "00081030", "SeriesDescription": "0008103E", "BodyPartExamined": "00180015",
        "StudyID": "00200010", "SeriesNumber": "00200011", "InstanceNumber": "00200013",
        "StationName": "00081010", "SOPClassUID": "00080016"}
_VR = {"PatientID": "LO", "PatientName": "PN", "PatientBirthDate": "DA", "PatientSex": "CS",
       "StudyInstanceUID": "UI", "SeriesInstanceUID": "UI", "SOPInstanceUID": "UI", "StudyDate": "DA",
       "SeriesDate": "DA", "AcquisitionDate": "DA", "StudyTime": "TM", "SeriesTime": "TM",
       "AccessionNumber": "SH", "Modality": "CS", "ReferringPhysicianName": "PN", "StudyDescription": "LO",
       "SeriesDescription": "LO", "BodyPartExamined": "CS", "StudyID": "SH", "SeriesNumber": "IS",
       "InstanceNumber": "IS", "StationName": "SH", "SOPClassUID": "UI"}
_NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def study_uid(n: int) -> str:
    return f"{UID_ROOT}.1.{n + 1}"


def series_uid(n: int, k: int) -> str:
    return f"{UID_ROOT}.2.{n + 1}.{k + 1}"


def accession(n: int) -> str:
    return f"A{n + 1:09d}"


def study_date(day: int) -> str:
    return (FIRST_DAY + timedelta(days=day)).strftime("%Y%m%d")


def _pick_modalities(rng: random.Random, count: int) -> list[str]:
    """The series' modalities: one per study, a second one in ~10 % of studies."""
    primary = rng.choices(list(MODALITY_MIX), weights=list(MODALITY_MIX.values()))[0]
    modalities = [primary] * count
    if rng.random() < 0.1:
        modalities[-1] = rng.choice([m for m in MODALITY_MIX if m != primary])
    return modalities


def _study_day(n: int, studies: int, rng: random.Random) -> int:
    """Study ``n``'s day: archives receive studies as they are made, so StudyDate follows
    the row order (a few days' jitter), except ~10 % of priors imported at random dates."""
    if rng.random() < 0.1:
        return rng.randrange(DAYS)
    return min(DAYS - 1, max(0, n * DAYS // studies + rng.randrange(-2, 3)))


def _study_values(n: int, rng: random.Random, patients: int, seed: int,
                  studies: int) -> tuple[dict[str, Any], int, int]:
    """Study ``n``'s patient and study attributes, its patient index and its day."""
    patient = rng.randrange(patients)
    day = _study_day(n, studies, rng)
    values = {**patient_values(patient, seed), "StudyInstanceUID": study_uid(n), "StudyDate": study_date(day),
              "StudyTime": f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
              "AccessionNumber": accession(n), "StudyID": str(n % 10000 + 1),
              "ReferringPhysicianName": f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}"}
    return values, patient, day


def _instance_row(body: dict[str, Any], template: Template, pk: int, series_pk: int,
                  instance: dict[str, Any]) -> dict[str, Any]:
    """The instance table row for ``body``, with the columns ingest fills; ``instance``: the
    instance columns computed from the series' first instance (only InstanceNumber varies)."""
    sop = body[_TAG["SOPInstanceUID"]]["Value"][0]
    study, series = body[_TAG["StudyInstanceUID"]]["Value"][0], body[_TAG["SeriesInstanceUID"]]["Value"][0]
    sha = hashlib.sha256(sop.encode()).hexdigest()
    instance = {**instance, "instance_number": body[_TAG["InstanceNumber"]]["Value"][0]}
    return {
        "id": pk, "sop_instance_uid": sop, "series_fk": series_pk,
        "sop_class_uid": body[_TAG["SOPClassUID"]]["Value"][0],
        "transfer_syntax_uid": template.transfer_syntax_uid, **instance,
        "blob_key": instance_key(study, series, sop, sha[:16]), "size": template.size, "sha256": sha,
        "pixel_offset": template.pixel_offset, "pixel_length": template.pixel_length,
        "frame_ranges": template.frame_ranges, "bulk_ranges": None,
        "dicom_json": orjson.dumps(body).decode(),  # what json.dumps(.., ensure_ascii=False) writes
        "source": "bench", "calling_ae": "", "created_at": _NOW,
    }


def _series_body(template: Template, values: dict[str, Any]) -> dict[str, Any]:
    body = dict(template.body)
    for keyword, value in values.items():
        body[_TAG[keyword]] = _value(_VR[keyword], value)
    return body


def add_study(batch: Batch, n: int, rng: random.Random, plan: tuple[int, int, int],
              templates: dict[str, Template]) -> None:
    """Append study ``n``'s rows (study, 2-4 series, 10 instances) to ``batch``;
    ``plan``: (studies, patients, seed) of the whole load."""
    studies, patients, seed = plan
    common, patient, day = _study_values(n, rng, patients, seed, studies)
    modalities = _pick_modalities(rng, rng.choice((2, 3, 3, 4)))
    description, body_part = rng.choice(DESCRIPTIONS[modalities[0]])
    common["StudyDescription"] = description
    sop_classes, instance_pk, study_row, summary = set(), INSTANCES_PER_STUDY * n + 1, {}, {}
    for k, count in enumerate(SPLITS[len(modalities)]):
        template, series_pk = templates[modalities[k]], 4 * n + k + 1
        base = _series_body(template, {
            **common, "SeriesInstanceUID": series_uid(n, k), "SeriesDate": common["StudyDate"],
            "AcquisitionDate": common["StudyDate"], "SeriesTime": common["StudyTime"], "SeriesNumber": k + 1,
            "SeriesDescription": f"{description} {k + 1}"[:64], "BodyPartExamined": body_part})
        _, study_row, series_row, instance_row = _extract_index_values(base)
        for i in range(count):
            body = dict(base)
            body[_TAG["SOPInstanceUID"]] = _value("UI", f"{UID_ROOT}.3.{n + 1}.{k + 1}.{i + 1}")
            body[_TAG["InstanceNumber"]] = _value("IS", i + 1)
            batch.instances.append(_instance_row(body, template, instance_pk, series_pk, instance_row))
            if not summary:  # the study's first instance: its summary (pacs/index/summary.py)
                first = batch.instances[-1]
                summary = {"summary_json": study_summary(body), "summary_rep": instance_pk,
                           "summary_sha": first["sha256"]}
            instance_pk += 1
        sop_classes.add(SOP_CLASSES[modalities[k]])
        batch.series.append({"id": series_pk, "series_uid": series_uid(n, k), "study_fk": n + 1, **series_row,
                             "num_instances": count, "last_instance_at": _epoch(day), "stable": True,
                             "created_at": _NOW})
    batch.studies.append({
        "id": n + 1, "study_uid": study_uid(n), "patient_fk": patient + 1, **study_row,
        "num_series": len(modalities), "num_instances": INSTANCES_PER_STUDY,
        "modalities": _set_within(sorted(set(modalities)), MODALITIES_ROOM),
        "sop_classes": "\\".join(sorted(sop_classes)), "last_instance_at": _epoch(day), "stable": True,
        "created_at": _NOW, **summary})


def _epoch(day: int) -> float:
    moment = datetime.combine(FIRST_DAY + timedelta(days=day), datetime.min.time(), tzinfo=timezone.utc)
    return moment.timestamp() + 3600


def make_batch(first: int, count: int, batch_no: int, plan: tuple[int, int, int],
               templates: dict[str, Template]) -> Batch:
    """Studies ``first`` .. ``first + count - 1`` of ``plan`` (studies, patients, seed),
    generated from the batch's own seed."""
    rng = random.Random(f"{plan[2]}-batch-{batch_no}")
    batch = Batch()
    for n in range(first, first + count):
        add_study(batch, n, rng, plan, templates)
    return batch
