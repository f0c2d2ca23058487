"""Index tables of the AI engine hooks (migration ``0006``).

* ``ai_subscription``: what an AI engine wants (filter, trigger) and how it gets it
  (a webhook URL with its HMAC secret, or a DICOM push to a registered AE);
* ``ai_result``: each findings document posted back (``POST /api/ai/results``), with the
  SR it became and whether it raised the study's priority.

Deliveries themselves are outbox messages (``pacs/outbox.py``, channel ``ai:<id>`` or
``ai-push:<id>``); study-scoped tokens are signed with a key kept in ``schema_meta``.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, BigId


class AISubscription(Base):
    """One AI engine's subscription. ``filter`` is JSON (see ai_hooks/subscriptions.py),
    ``trigger`` one of study_stable / series_stable / mpps_completed, ``delivery``
    webhook (``url``, ``secret``) or dicom_push (``ae_title`` of the AE registry)."""

    __tablename__ = "ai_subscription"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    filter: Mapped[str] = mapped_column(Text, default="{}")
    trigger: Mapped[str] = mapped_column(String(32))
    delivery: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text, default="")
    secret: Mapped[str] = mapped_column(String(128), default="")
    ae_title: Mapped[str] = mapped_column(String(16), default="")
    #: dicom_push sends de-identified copies (PS3.15 E.1, pacs/deidentify.py; migration 0009).
    deidentify: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class AIResult(Base):
    """A findings document an engine posted, and what it became."""

    __tablename__ = "ai_result"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    findings: Mapped[int] = mapped_column(Integer)
    critical: Mapped[bool] = mapped_column(Boolean, default=False)
    priority_raised: Mapped[bool] = mapped_column(Boolean, default=False)
    sr_sop_uid: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
