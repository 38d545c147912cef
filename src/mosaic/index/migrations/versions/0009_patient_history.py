"""patient history: every change of a patient's demographics (HL7 ADT), what it was and what it became

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'patient_history',
        sa.Column('pk', big_id, autoincrement=True, nullable=False),
        sa.Column('patient_pk', big_id, nullable=False),
        sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('source', sa.String(length=128), nullable=False),
        sa.Column('reference', sa.String(length=128), nullable=False),
        sa.Column('before_json', sa.Text(), nullable=False),
        sa.Column('after_json', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['patient_pk'], ['patient.pk'], name=op.f('fk_patient_history_patient_pk_patient')),
        sa.PrimaryKeyConstraint('pk', name=op.f('pk_patient_history')),
    )
    op.create_index(op.f('ix_patient_history_patient_pk'), 'patient_history', ['patient_pk'])


def downgrade() -> None:
    op.drop_index('ix_patient_history_patient_pk', table_name='patient_history')
    op.drop_table('patient_history')
