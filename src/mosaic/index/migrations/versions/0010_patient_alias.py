"""patient aliases: identities merged into another patient (HL7 A40) or replaced by a new identifier (A47)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'patient_alias',
        sa.Column('pk', big_id, autoincrement=True, nullable=False),
        sa.Column('PatientID', sa.String(length=64), nullable=False),
        sa.Column('IssuerOfPatientID', sa.String(length=64), nullable=False),
        sa.Column('patient_pk', big_id, nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['patient_pk'], ['patient.pk'], name=op.f('fk_patient_alias_patient_pk_patient')),
        sa.PrimaryKeyConstraint('pk', name=op.f('pk_patient_alias')),
        sa.UniqueConstraint('PatientID', 'IssuerOfPatientID', name='uq_patient_alias_identity'),
    )
    op.create_index(op.f('ix_patient_alias_patient_pk'), 'patient_alias', ['patient_pk'])


def downgrade() -> None:
    op.drop_index(op.f('ix_patient_alias_patient_pk'), table_name='patient_alias')
    op.drop_table('patient_alias')
