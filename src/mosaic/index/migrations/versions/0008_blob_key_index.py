"""blob keys indexed: the start-up sweep asks which blob files an index row names, a batch of keys at a time

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 18:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_instance_blob_key', 'instance', ['blob_key'])
    op.create_index('ix_instance_version_blob_key', 'instance_version', ['blob_key'])


def downgrade() -> None:
    op.drop_index('ix_instance_version_blob_key', table_name='instance_version')
    op.drop_index('ix_instance_blob_key', table_name='instance')
