"""The study summary: the first instance's patient and study attributes on the study row

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 20:00:00

Adds ``study.summary_json``, ``summary_rep`` and ``summary_sha`` (pacs/index/summary.py):
a study-level C-FIND or QIDO-RS answers from them instead of reading each match's first
instance JSON. The columns start empty (such studies are answered from the instance JSON
as before); the upgrade then fills them, because the summary version recorded in
``schema_meta`` is absent (pacs/index/migrate.py), about 500 studies per batch.
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('study', sa.Column('summary_json', sa.Text(), nullable=True))
    op.add_column('study', sa.Column('summary_rep', sa.BigInteger(), nullable=True))
    op.add_column('study', sa.Column('summary_sha', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('study') as batch:
        batch.drop_column('summary_sha')
        batch.drop_column('summary_rep')
        batch.drop_column('summary_json')
