"""pacs/index/direct.py: the hot path's statements on the driver's cursor write exactly what
SQLAlchemy's ``conn.execute`` writes, and fail the same way (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import exc, insert, select, text, update

from pacs.events import EventType, append_event
from pacs.index import direct
from pacs.index.db import Database
from pacs.index.migrate import upgrade
from pacs.index.models import Event, Instance, Patient, Series, Study


@pytest.fixture
def db(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    upgrade(database)
    with database.write() as conn:
        patient = conn.execute(insert(Patient).values(patient_id="P1", issuer="").returning(Patient.id)).scalar()
        study = conn.execute(insert(Study).values(study_uid="1.2.3", patient_fk=patient).returning(Study.id)).scalar()
        conn.execute(insert(Series).values(series_uid="1.2.3.4", study_fk=study, modality="CT"))
    yield database
    database.dispose()


def _series_pk(conn) -> int:  # type: ignore[no-untyped-def]
    return conn.execute(select(Series.id).where(Series.series_uid == "1.2.3.4")).scalar_one()


def _instance(sop: str, series_pk: int) -> dict:
    return {"sop_instance_uid": sop, "series_fk": series_pk, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "transfer_syntax_uid": "1.2.840.10008.1.2.1", "blob_key": f"k/{sop}", "size": 10,
            "sha256": "ab" * 32, "dicom_json": "{}", "frame_ranges": None, "instance_number": 7}


def _stored(conn, sop: str) -> dict:  # type: ignore[no-untyped-def]
    """The row as the database holds it, created_at as its raw stored text or timestamp."""
    row = conn.execute(text("SELECT * FROM instance WHERE sop_instance_uid = :s"), {"s": sop}).mappings().one()
    return {k: v for k, v in row.items() if k not in ("id", "sop_instance_uid", "blob_key", "created_at")}


def test_insert_writes_what_sqlalchemy_writes(db: Database) -> None:
    with db.write() as conn:
        pk = _series_pk(conn)
        conn.execute(insert(Instance), _instance("1.1", pk))
        direct.insert(conn, insert(Instance), _instance("1.2", pk))
    with db.read() as conn:
        assert _stored(conn, "1.2") == _stored(conn, "1.1")
        raw = dict(conn.execute(text("SELECT sop_instance_uid, created_at FROM instance")).all())
        assert type(raw["1.2"]) is type(raw["1.1"]) and len(str(raw["1.2"])) == len(str(raw["1.1"]))
        created = conn.execute(select(Instance.sop_instance_uid, Instance.created_at)).all()
        assert {sop for sop, at in created if at is not None} == {"1.1", "1.2"}  # the default applied


def test_update_rowcount_and_literals(db: Database) -> None:
    statement = update(Series).where(Series.series_uid == "1.2.3.4").values(
        num_instances=Series.num_instances + 1, stable=False)
    with db.write() as conn:
        assert direct.rowcount(conn, statement, {}) == 1
        assert direct.rowcount(conn, update(Series).where(Series.series_uid == "9.9").values(stable=True), {}) == 0
    with db.read() as conn:
        assert conn.execute(select(Series.num_instances, Series.stable)).one() == (1, False)


def test_a_held_uid_raises_sqlalchemys_integrity_error(db: Database) -> None:
    with pytest.raises(exc.IntegrityError):
        with db.write() as conn:
            pk = _series_pk(conn)
            direct.insert(conn, insert(Instance), _instance("1.5", pk))
            direct.insert(conn, insert(Instance), _instance("1.5", pk))
    with db.read() as conn:  # the transaction was rolled back whole
        assert conn.execute(select(Instance.id)).first() is None


def test_events_get_increasing_ids_and_their_columns(db: Database) -> None:
    with db.write() as conn:
        first = append_event(conn, EventType.INSTANCE_STORED, study_uid="1.2.3", payload={"a": 1})
        second = append_event(conn, EventType.STUDY_STABLE, study_uid="1.2.3")
    assert second == first + 1
    with db.read() as conn:
        rows = conn.execute(select(Event.id, Event.type, Event.payload, Event.series_uid).order_by(Event.id)).all()
        assert [tuple(r) for r in rows] == [(first, "InstanceStored", '{"a":1}', ""), (second, "StudyStable", "{}", "")]
        assert all(at is not None for at in conn.execute(select(Event.created_at)).scalars())
