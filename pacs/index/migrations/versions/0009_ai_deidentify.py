"""AI subscriptions may ask for de-identified DICOM push deliveries

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 00:00:00

Adds ``ai_subscription.deidentify`` (ai_hooks/models.py, pacs/deidentify.py): existing
subscriptions keep sending the objects as stored (``false``).
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('ai_subscription',
                  sa.Column('deidentify', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('ai_subscription') as batch:
        batch.drop_column('deidentify')
