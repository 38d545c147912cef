"""scheduled steps: the scheduled station name and procedure step location an imaging order gives (OMI IPC-7/8)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 18:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('scheduled_step') as batch:
        batch.add_column(sa.Column('ScheduledStationName', sa.String(length=16), nullable=False, server_default=''))
        batch.add_column(sa.Column('ScheduledProcedureStepLocation', sa.String(length=16), nullable=False,
                                   server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('scheduled_step') as batch:
        batch.drop_column('ScheduledProcedureStepLocation')
        batch.drop_column('ScheduledStationName')
