"""The searches of the big-index benchmark (bench/bigindex.py), for both doors, and the
SQL they become, for EXPLAIN.

A case is a list of :class:`Search` items (one per timed request): a level and the
matching keys. C-FIND sends them as an identifier over a Study Root association; QIDO-RS
as OHIF does: study searches with ``limit=101&offset=0&fuzzymatching=false&includefield=
00081030,00080060``, series of a study as ``/studies/{uid}/series``, instances of a
series as ``/studies/{uid}/series/{uid}/instances``. The SQL of a search is compiled from
the query the door's own parser makes (:func:`dicomweb.qido.parse`,
:func:`pacs.dimse.find.query_from_identifier`), as :func:`pacs.query.run.search` runs it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

from pydicom.dataset import Dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
from sqlalchemy import text
from sqlalchemy.engine import Engine

from bench.bigindex_data import (
    DAYS, FIRST_DAY, MODALITY_MIX, SURNAMES, accession, series_uid, study_uid,
)
from dicomweb.qido import parse as parse_qido
from pacs.dimse.find import query_from_identifier
from pacs.query import Level, Query
from pacs.query.run import statement

OHIF = {"limit": "101", "offset": "0", "fuzzymatching": "false", "includefield": "00081030,00080060"}
#: Return keys of each C-FIND level (a workstation's study browser).
RETURN_KEYS = {
    "STUDY": ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
              "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyDescription"),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}


@dataclass(frozen=True)
class Search:
    """One request: the level and its matching keys."""

    level: str
    keys: dict[str, str] = field(default_factory=dict)

    def identifier(self) -> Dataset:
        """The C-FIND identifier: the return keys empty, the matching keys set."""
        ds = Dataset()
        if not all(v.isascii() for v in self.keys.values()):
            ds.SpecificCharacterSet = "ISO_IR 192"
        ds.QueryRetrieveLevel = self.level
        for key in RETURN_KEYS[self.level]:
            setattr(ds, key, "")
        for key, value in self.keys.items():
            setattr(ds, key, value)
        return ds

    def qido_path(self) -> str:
        """The QIDO-RS request OHIF sends for this search."""
        if self.level == "STUDY":
            return "/dicom-web/studies?" + urlencode({**self.keys, **OHIF}, quote_via=quote, safe="*")
        path = f"/dicom-web/studies/{self.keys['StudyInstanceUID']}/series"
        if self.level == "IMAGE":
            path += f"/{self.keys['SeriesInstanceUID']}/instances"
        return path

    def qido_request(self) -> tuple[Query, list[str] | None]:
        """The query and return tags the QIDO-RS door makes of :meth:`qido_path`."""
        if self.level == "STUDY":
            parsed = parse_qido(Level.STUDY, list({**self.keys, **OHIF}.items()), {})
        else:
            path = {k: v for k, v in self.keys.items() if k in ("StudyInstanceUID", "SeriesInstanceUID")}
            parsed = parse_qido(Level(self.level), [], path)
        return parsed.query, parsed.tags

    def cfind_request(self) -> tuple[Query, list[str]]:
        """The query and return tags the C-FIND door makes of :meth:`identifier`."""
        return query_from_identifier(self.identifier(), str(FIND))


def _date_range(rng: random.Random) -> str:
    first = FIRST_DAY + timedelta(days=rng.randrange(DAYS - 31))
    return f"{first:%Y%m%d}-{first + timedelta(days=30):%Y%m%d}"


def cases(rng: random.Random, studies: int, patients: int, n: int, door: str) -> dict[str, list[Search]]:
    """``n`` searches per case. ``door``: ``cfind`` or ``qido``. C-FIND's ModalitiesInStudy
    case adds a 31-day StudyDate range (a workstation's "CT, last month"): alone it would
    answer ~30,000 studies, since a C-FIND has no limit; QIDO's has OHIF's limit=101."""
    def study() -> int:
        return rng.randrange(studies)

    def modality_keys() -> dict[str, str]:
        keys = {"ModalitiesInStudy": rng.choice(list(MODALITY_MIX))}
        return {**keys, "StudyDate": _date_range(rng)} if door == "cfind" else keys

    made = {
        "PatientID": lambda: {"PatientID": f"BIG{rng.randrange(patients):07d}"},
        "PatientName prefix": lambda: {"PatientName": rng.choice(SURNAMES)[:3] + "*"},
        "StudyDate 31 days": lambda: {"StudyDate": _date_range(rng)},
        "AccessionNumber": lambda: {"AccessionNumber": accession(study())},
        "ModalitiesInStudy" + (" + 31 days" if door == "cfind" else ""): modality_keys,
    }
    result = {name: [Search("STUDY", make()) for _ in range(n)] for name, make in made.items()}
    if door == "qido":
        result["study list (OHIF first page)"] = [Search("STUDY") for _ in range(n)]
    series = [(s, rng.randrange(2)) for s in (study() for _ in range(2 * n))]
    result["series of a study"] = [Search("SERIES", {"StudyInstanceUID": study_uid(s)}) for s, _ in series[:n]]
    result["instances of a series"] = [
        Search("IMAGE", {"StudyInstanceUID": study_uid(s), "SeriesInstanceUID": series_uid(s, k)})
        for s, k in series[n:]]
    return result


def sql_of(query: Query, tags: list[str] | None, dialect: Any) -> str:
    """The SELECT :func:`pacs.query.run.search` runs for ``query`` and ``tags``, values inlined."""
    return str(statement(query, tags).compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def explain(engine: Engine, sql: str, analyze: bool = True) -> tuple[str, float]:
    """The plan of ``sql`` (PostgreSQL: EXPLAIN ANALYZE, BUFFERS; SQLite: EXPLAIN QUERY
    PLAN) and the statement's own time in ms (PostgreSQL: its Execution Time; SQLite:
    the wall time of running it)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            options = "ANALYZE, BUFFERS" if analyze else "COSTS"
            lines = [r[0] for r in conn.execute(text(f"EXPLAIN ({options}) {sql}"))]
            took = next((float(l.split(":")[1].split()[0]) for l in lines if l.startswith("Execution Time")), 0.0)
            return "\n".join(lines), took
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
        started = time.perf_counter()
        conn.exec_driver_sql(sql).all()
        took = (time.perf_counter() - started) * 1000
        return "\n".join(f"{r[1]:>3} {r[3]}" for r in rows), took
