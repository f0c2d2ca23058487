"""Index tables of the worklist: scheduled procedure steps and MPPS instances.

They share :class:`pacs.index.models.Base` (one metadata, one Alembic history:
migration ``0003_worklist``). A :class:`WorklistItem` is one Requested Procedure with
its one Scheduled Procedure Step (PS3.4 K.6, the usual one-step order of a RIS); it
carries the pre-assigned Study Instance UID that links the order to the images, and
``mpps_uid`` links it to the MPPS (PS3.4 F.7) that performed it. The reading worklist
(next issue) will join studies to items on ``study_uid``.

Person names are stored raw (DICOM PN) and normalised (:func:`pacs.index.names.normalise_pn`)
for case/accent-insensitive matching, as in the archive index. Scheduled start time is
stored as ``HHMMSS.FFFFFF`` (:func:`pacs.index.names.normalise_time`) so that TM range
matching is a string comparison.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, BigId, utcnow

#: Item status: SCHEDULED until a modality starts it (MPPS N-CREATE), then IN_PROGRESS,
#: then COMPLETED or DISCONTINUED (MPPS N-SET); CANCELLED by the order placer.
STATUSES = ("SCHEDULED", "IN_PROGRESS", "COMPLETED", "DISCONTINUED", "CANCELLED")
FINAL_STATUSES = frozenset({"COMPLETED", "DISCONTINUED", "CANCELLED"})
#: Requested Procedure Priority (0040,1003) defined terms (PS3.3 C.4.11).
PRIORITIES = ("STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW")


class WorklistItem(Base):
    """A Requested Procedure and its Scheduled Procedure Step (PS3.3 C.4.10, C.4.11)."""

    __tablename__ = "worklist_item"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="SCHEDULED", index=True)
    priority: Mapped[str] = mapped_column(String(16), default="ROUTINE")
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_name_norm: Mapped[str] = mapped_column(String(324), default="", index=True)
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")
    referring_physician_norm: Mapped[str] = mapped_column(String(324), default="")
    requested_procedure_id: Mapped[str] = mapped_column(String(16), default="")
    requested_procedure_description: Mapped[str] = mapped_column(String(64), default="")
    procedure_code_value: Mapped[str] = mapped_column(String(64), default="")
    procedure_code_scheme: Mapped[str] = mapped_column(String(64), default="")
    procedure_code_meaning: Mapped[str] = mapped_column(String(64), default="")
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    step_id: Mapped[str] = mapped_column(String(16), default="")
    step_description: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    station_ae: Mapped[str] = mapped_column(String(16), default="", index=True)
    station_name: Mapped[str] = mapped_column(String(16), default="")
    start_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    start_time: Mapped[str] = mapped_column(String(16), default="")
    performing_physician_name: Mapped[str] = mapped_column(String(324), default="")
    performing_physician_norm: Mapped[str] = mapped_column(String(324), default="")
    #: SOP Instance UID of the MPPS that started this step ("" until then).
    mpps_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


Index("ix_worklist_item_schedule", WorklistItem.start_date, WorklistItem.start_time)


class PerformedProcedureStep(Base):
    """A Modality Performed Procedure Step SOP Instance (PS3.4 F.7), kept as DICOM JSON.

    ``status`` is the Performed Procedure Step Status (0040,0252): ``IN PROGRESS``,
    ``COMPLETED`` or ``DISCONTINUED``."""

    __tablename__ = "mpps"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    worklist_item_fk: Mapped[int | None] = mapped_column(ForeignKey("worklist_item.id"), nullable=True, index=True)
    study_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    dicom_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
