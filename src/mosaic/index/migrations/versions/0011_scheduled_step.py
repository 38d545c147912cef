"""scheduled procedure steps: the orders (HL7 ORM) the Modality Worklist answers

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

_INDEXED = ('PatientID', 'IssuerOfPatientID', 'PatientNameUpper', 'AccessionNumber', 'RequestedProcedureID', 'StudyInstanceUID', 'ScheduledProcedureStepID', 'Modality', 'ScheduledStationAETitle', 'ScheduledProcedureStepStartDate', 'ScheduledProcedureStepStartTime', 'ScheduledProcedureStepStatus', 'facility')


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'scheduled_step',
        sa.Column('pk', big_id, autoincrement=True, nullable=False),
        sa.Column('PatientID', sa.String(length=64), nullable=False),
        sa.Column('IssuerOfPatientID', sa.String(length=64), nullable=False),
        sa.Column('PatientName', sa.String(length=320), nullable=False),
        sa.Column('PatientNameUpper', sa.String(length=320), nullable=False),
        sa.Column('PatientBirthDate', sa.String(length=8), nullable=False),
        sa.Column('PatientSex', sa.String(length=16), nullable=False),
        sa.Column('AccessionNumber', sa.String(length=16), nullable=False),
        sa.Column('RequestedProcedureID', sa.String(length=16), nullable=False),
        sa.Column('RequestedProcedureDescription', sa.String(length=64), nullable=False),
        sa.Column('RequestedProcedureCode', sa.String(length=64), nullable=False),
        sa.Column('RequestedProcedurePriority', sa.String(length=16), nullable=False),
        sa.Column('StudyInstanceUID', sa.String(length=64), nullable=False),
        sa.Column('ReferringPhysicianName', sa.String(length=320), nullable=False),
        sa.Column('ScheduledProcedureStepID', sa.String(length=16), nullable=False),
        sa.Column('ScheduledProcedureStepDescription', sa.String(length=64), nullable=False),
        sa.Column('Modality', sa.String(length=16), nullable=False),
        sa.Column('ScheduledStationAETitle', sa.String(length=16), nullable=False),
        sa.Column('ScheduledProcedureStepStartDate', sa.String(length=8).with_variant(sa.String(length=8, collation='C'), 'postgresql'), nullable=False),
        sa.Column('ScheduledProcedureStepStartTime', sa.String(length=16).with_variant(sa.String(length=16, collation='C'), 'postgresql'), nullable=False),
        sa.Column('ScheduledProcedureStepStatus', sa.String(length=16), nullable=False),
        sa.Column('placer_order', sa.String(length=64), nullable=False),
        sa.Column('filler_order', sa.String(length=64), nullable=False),
        sa.Column('facility', sa.String(length=64), nullable=False),
        sa.Column('source', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('pk', name=op.f('pk_scheduled_step')),
        sa.UniqueConstraint('AccessionNumber', 'ScheduledProcedureStepID', name='uq_scheduled_step'),
    )
    for column in _INDEXED:
        op.create_index(op.f(f'ix_scheduled_step_{column}'), 'scheduled_step', [column])


def downgrade() -> None:
    for column in _INDEXED:
        op.drop_index(op.f(f'ix_scheduled_step_{column}'), table_name='scheduled_step')
    op.drop_table('scheduled_step')
