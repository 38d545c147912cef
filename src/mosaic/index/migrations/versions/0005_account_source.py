"""where an account comes from: local, or the OpenID Connect provider (single sign-on)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('user_account') as batch:
        batch.add_column(sa.Column('source', sa.String(length=16), nullable=False, server_default='local'))


def downgrade() -> None:
    with op.batch_alter_table('user_account') as batch:
        batch.drop_column('source')
