"""scheduled steps: the scheduled station name and procedure step location an imaging order gives (OMI IPC-7/8);
the row announcing transactions lock (services.availability: announcements commit in seq order)

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
    cursors = sa.table('audit_cursor', sa.column('name', sa.String), sa.column('seq', sa.BigInteger),
                       sa.column('hash', sa.String), sa.column('updated_at', sa.DateTime(timezone=True)))
    op.execute(cursors.insert().values(name='lock:announcements', seq=0, hash='', updated_at=sa.func.now()))


def downgrade() -> None:
    op.execute("DELETE FROM audit_cursor WHERE name = 'lock:announcements'")
    with op.batch_alter_table('scheduled_step') as batch:
        batch.drop_column('ScheduledProcedureStepLocation')
        batch.drop_column('ScheduledStationName')
