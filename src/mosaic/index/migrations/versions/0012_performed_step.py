"""performed procedure steps: what modalities report over MPPS (N-CREATE, N-SET)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'performed_step',
        sa.Column('pk', big_id, autoincrement=True, nullable=False),
        sa.Column('SOPInstanceUID', sa.String(length=64), nullable=False),
        sa.Column('PerformedProcedureStepStatus', sa.String(length=16), nullable=False),
        sa.Column('scheduled_step_pk', big_id, nullable=True),
        sa.Column('performed_by', sa.String(length=64), nullable=False),
        sa.Column('attributes_json', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['scheduled_step_pk'], ['scheduled_step.pk'],
                                name=op.f('fk_performed_step_scheduled_step_pk_scheduled_step')),
        sa.PrimaryKeyConstraint('pk', name=op.f('pk_performed_step')),
        sa.UniqueConstraint('SOPInstanceUID', name=op.f('uq_performed_step_SOPInstanceUID')),
    )
    op.create_index(op.f('ix_performed_step_scheduled_step_pk'), 'performed_step', ['scheduled_step_pk'])


def downgrade() -> None:
    op.drop_index(op.f('ix_performed_step_scheduled_step_pk'), table_name='performed_step')
    op.drop_table('performed_step')
