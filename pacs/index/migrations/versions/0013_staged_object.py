"""Staged objects: small objects' bytes in the index until their file is flushed

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 12:00:00

Adds ``staged_object`` (pacs/staging.py): a small received object is made durable by the
index transaction that records it; its file in the blob folder is flushed afterwards, in
the background, and the row then deleted.
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'staged_object',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('blob_key', sa.String(length=300), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_staged_object')),
    )


def downgrade() -> None:
    op.drop_table('staged_object')
