"""encounter studies: the generated study (Study Instance UID, accession) of an encounter's orderless captures

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 23:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'encounter_study',
        sa.Column('pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), primary_key=True, autoincrement=True),
        sa.Column('PatientID', sa.String(length=64), nullable=False),
        sa.Column('IssuerOfPatientID', sa.String(length=64), nullable=False, server_default=''),
        sa.Column('encounter', sa.String(length=64), nullable=False),
        sa.Column('facility', sa.String(length=64), nullable=False, server_default=''),
        sa.Column('StudyInstanceUID', sa.String(length=64), nullable=False, unique=True),
        sa.Column('AccessionNumber', sa.String(length=16), nullable=False, server_default=''),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('PatientID', 'IssuerOfPatientID', 'encounter', 'facility', name='uq_encounter_study'),
    )
    op.create_index('ix_encounter_study_AccessionNumber', 'encounter_study', ['AccessionNumber'])


def downgrade() -> None:
    op.drop_index('ix_encounter_study_AccessionNumber', table_name='encounter_study')
    op.drop_table('encounter_study')
