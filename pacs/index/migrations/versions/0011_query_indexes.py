"""Composite indexes for a match's first instance and for ModalitiesInStudy

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 18:00:00

Every study- and series-level match reads its representative instance, the smallest
instance id under it (pacs/query/run.py ``_first_instance``): a correlated sub-query
per match over ``series.study_fk`` and ``instance.series_fk``; ModalitiesInStudy is an
EXISTS over the study's series with that modality (pacs/query/sql.py). With the
single-column indexes of 0001, PostgreSQL reads each series and instance row from the
table; with ``series (study_fk, modality, id)`` and ``instance (series_fk, id)`` it
answers both from the indexes alone (index-only scans): on a 1,000,000-instance index
the sub-query took half the time and a C-FIND on ModalitiesInStudy and a month of
StudyDate went from a parallel sequential scan (~35 ms) to the date index (~3 ms)
(docs/big-index.md). The composite indexes serve every look-up the old ones did (their
first column), so those are dropped: no extra index to maintain per ingest.

On PostgreSQL the new indexes are built inside the migration's transaction, which
blocks writes to ``series`` and ``instance`` meanwhile (about 3 s per million
instances on the 2-core development machine).
"""
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_series_study_fk_modality', 'series', ['study_fk', 'modality', 'id'], unique=False)
    op.create_index('ix_instance_series_fk_id', 'instance', ['series_fk', 'id'], unique=False)
    op.drop_index('ix_series_study_fk', table_name='series')
    op.drop_index('ix_instance_series_fk', table_name='instance')


def downgrade() -> None:
    op.create_index('ix_instance_series_fk', 'instance', ['series_fk'], unique=False)
    op.create_index('ix_series_study_fk', 'series', ['study_fk'], unique=False)
    op.drop_index('ix_instance_series_fk_id', table_name='instance')
    op.drop_index('ix_series_study_fk_modality', table_name='series')
