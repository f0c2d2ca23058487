"""Index schema (SQLAlchemy 2): patient / study / series / instance, the event log, the AE registry,
storage commitment requests.

Wide typed tables with integer surrogate keys and unique UID columns. The attributes
C-FIND (PS3.4 C.6) and QIDO-RS (PS3.18 10.6) match on are indexed columns; everything
else is answered from each instance's stored DICOM JSON (PS3.18 F.2).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Integer primary keys: BIGINT on PostgreSQL, INTEGER (rowid alias) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SchemaMeta(Base):
    """Key/value facts about the index, e.g. the person-name normaliser version."""

    __tablename__ = "schema_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Patient(Base):
    """A patient: identity is (PatientID, IssuerOfPatientID); demographics are latest-wins."""

    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_identity"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_name_norm: Mapped[str] = mapped_column(String(324), default="", index=True)
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Study(Base):
    """A study with its aggregates, kept exact on every insert and delete."""

    __tablename__ = "study"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_fk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")
    referring_physician_norm: Mapped[str] = mapped_column(String(324), default="")
    specific_character_set: Mapped[str] = mapped_column(String(128), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    modalities: Mapped[str] = mapped_column(String(256), default="")
    sop_classes: Mapped[str] = mapped_column(Text, default="")
    last_instance_at: Mapped[float] = mapped_column(Float, default=0.0)
    stable: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The first instance's patient and study attributes, its id and SHA-256 (pacs/index/summary.py).
    summary_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary_rep: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    summary_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)


Index("ix_study_unstable", Study.stable, Study.last_instance_at)


class Series(Base):
    """A series with its instance count."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_fk: Mapped[int] = mapped_column(ForeignKey("study.id"))
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    series_date: Mapped[str] = mapped_column(String(8), default="")
    series_time: Mapped[str] = mapped_column(String(16), default="")
    station_name: Mapped[str] = mapped_column(String(16), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    last_instance_at: Mapped[float] = mapped_column(Float, default=0.0)
    stable: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Index("ix_series_unstable", Series.stable, Series.last_instance_at)
#: A study's series by modality: its first instance and ModalitiesInStudy are answered from
#: indexes alone (migration 0011).
Index("ix_series_study_fk_modality", Series.study_fk, Series.modality, Series.id)


class Instance(Base):
    """A stored object: where its bytes are, how to find its frames, its DICOM JSON."""

    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_fk: Mapped[int] = mapped_column(ForeignKey("series.id"))
    sop_class_uid: Mapped[str] = mapped_column(String(64), index=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bits_allocated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    blob_key: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    #: Offset and length of the Pixel Data value (native) or of its encapsulated items.
    pixel_offset: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    pixel_length: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    #: JSON list, per frame, of [offset, length] fragment ranges in the object.
    frame_ranges: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: JSON map of bulk data tag path -> [offset, length] (other than Pixel Data).
    bulk_ranges: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: DICOM JSON (PS3.18 F.2) of the instance, bulk data as relative BulkDataURIs.
    dicom_json: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32), default="")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


#: A series' instances in id order (its first instance, migration 0011).
Index("ix_instance_series_fk_id", Instance.series_fk, Instance.id)


class Event(Base):
    """The outbox: one row per change, ids strictly increasing in commit order."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(32), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="")
    series_uid: Mapped[str] = mapped_column(String(64), default="")
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    payload: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EventCursor(Base):
    """How far a named event consumer has applied the event log (pacs/consumers.py)."""

    __tablename__ = "event_cursor"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


class EventCounter(Base):
    """One row holding the last event id; taking it serialises appends in commit order."""

    __tablename__ = "event_counter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)


class PendingWrite(Base):
    """An object write in flight: removed in the transaction that indexes the object.

    A row older than the grace period names an orphan object to delete.
    """

    __tablename__ = "pending_write"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(300), index=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)


class StagedObject(Base):
    """A small received object's bytes, kept in the index until its file in the blob
    folder is durable (pacs/staging.py): written in the transaction that indexes the
    object, deleted once the file and its folder are flushed; restored at start."""

    __tablename__ = "staged_object"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(300))  # no index: the table holds a few rows
    content: Mapped[bytes] = mapped_column(LargeBinary)


class RemoteAE(Base):
    """A remote application entity (C-MOVE destinations, storage commitment replies)."""

    __tablename__ = "remote_ae"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # What the AE may ask of us (pacs/dimse/policy.py); migration 0002.
    allow_echo: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    allow_store: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    allow_find: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    allow_move: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    allow_get: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    allow_commitment: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Modality Worklist C-FIND and MPPS N-CREATE/N-SET; migration 0010.
    allow_mwl: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    allow_mpps: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class CommitmentRequest(Base):
    """A Storage Commitment Push Model request (PS3.4 J.3.2) awaiting or done with its
    N-EVENT-REPORT (J.3.3). ``items`` is a JSON list of [SOP Class UID, SOP Instance UID];
    ``status`` is ``pending``, ``sent`` or ``failed``."""

    __tablename__ = "commitment_request"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(String(64), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[float] = mapped_column(Float)
    items: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str] = mapped_column(String(256), default="")


Index("ix_commitment_request_due", CommitmentRequest.status, CommitmentRequest.next_attempt_at)


class OutboxMessage(Base):
    """An HTTP message to another system (EMR, AI engine), delivered at least once with
    retries (pacs/outbox.py). ``status``: ``pending``, ``delivered`` or ``dead``."""

    __tablename__ = "outbox_message"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(64), index=True)
    target_url: Mapped[str] = mapped_column(Text)
    #: HTTP method: POST, or PUT for FHIR updates (migration 0005).
    method: Mapped[str] = mapped_column(String(8), default="POST", server_default="POST")
    content_type: Mapped[str] = mapped_column(String(128))
    headers: Mapped[str] = mapped_column(Text, default="{}")
    body: Mapped[bytes] = mapped_column(LargeBinary)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)


Index("ix_outbox_message_due", OutboxMessage.status, OutboxMessage.next_attempt_at)
