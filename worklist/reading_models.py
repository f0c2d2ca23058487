"""Index tables of the radiologists' reading worklist and their reports (migration ``0005``).

One row per study to be read. ``state`` follows the report: ``unread`` → ``claimed`` (a
radiologist took it) → ``preliminary`` (a draft was saved) → ``final`` (signed) →
``amended`` (signed again after final). ``priority`` is a rank, lower first: 1 STAT,
2 urgent, 3 routine; ``priority_reason`` says where it came from (the order, an AI
finding).
"""

from __future__ import annotations

from sqlalchemy import Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, BigId

STATES = ("unread", "claimed", "preliminary", "final", "amended")
#: Priority ranks and their labels.
PRIORITY_LABELS = {1: "STAT", 2: "URGENT", 3: "ROUTINE"}
#: Requested Procedure Priority (0040,1003) of an order → rank.
ORDER_PRIORITY_RANK = {"STAT": 1, "HIGH": 2, "MEDIUM": 3, "ROUTINE": 3, "LOW": 3}


class ReadingItem(Base):
    """A study on the reading worklist, with what the list shows without joins."""

    __tablename__ = "reading_item"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="unread")
    priority: Mapped[int] = mapped_column(Integer, default=3)
    priority_reason: Mapped[str] = mapped_column(String(256), default="")
    assigned_to: Mapped[str] = mapped_column(String(64), default="", index=True)
    claimed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_description: Mapped[str] = mapped_column(String(64), default="")
    modalities: Mapped[str] = mapped_column(String(256), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    entered_by: Mapped[str] = mapped_column(String(32), default="")
    entered_at: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)


Index("ix_reading_item_queue", ReadingItem.state, ReadingItem.priority, ReadingItem.entered_at)


#: Report versions' status, as FHIR DiagnosticReport.status names them.
REPORT_STATUSES = ("draft", "final", "amended")


class Report(Base):
    """One version of a study's report. ``draft`` until signed; signing makes it ``final``
    (the first signed version) or ``amended`` (a later one) and records the Basic Text SR
    stored in the study. Signed versions are never changed."""

    __tablename__ = "report"
    __table_args__ = (UniqueConstraint("study_uid", "version", name="uq_report_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    author: Mapped[str] = mapped_column(String(64))
    findings: Mapped[str] = mapped_column(Text, default="")
    impression: Mapped[str] = mapped_column(Text, default="")
    #: JSON list of coded diagnoses: [{"system", "code", "display"}].
    codes: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[float] = mapped_column(Float)
    signed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    sr_sop_uid: Mapped[str] = mapped_column(String(64), default="")
