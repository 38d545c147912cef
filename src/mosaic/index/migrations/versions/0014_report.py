"""reports: HL7 ORU / MDM reports stored as DICOM instances, as FHIR DiagnosticReport / DocumentReference read them

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'report',
        sa.Column('pk', big_id, autoincrement=True, nullable=False),
        sa.Column('SOPInstanceUID', sa.String(length=64), nullable=False),
        sa.Column('StudyInstanceUID', sa.String(length=64), nullable=False),
        sa.Column('SeriesInstanceUID', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('code', sa.String(length=200), nullable=False),
        sa.Column('title', sa.String(length=64), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('document_length', sa.BigInteger(), nullable=True),
        sa.Column('conclusion', sa.Text(), nullable=False),
        sa.Column('observed', sa.String(length=26), nullable=False),
        sa.Column('performer', sa.String(length=320), nullable=False),
        sa.Column('AccessionNumber', sa.String(length=16), nullable=False),
        sa.Column('scheduled_step_pk', big_id, nullable=True),
        sa.Column('source', sa.String(length=128), nullable=False),
        sa.Column('control_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['scheduled_step_pk'], ['scheduled_step.pk'],
                                name=op.f('fk_report_scheduled_step_pk_scheduled_step')),
        sa.PrimaryKeyConstraint('pk', name=op.f('pk_report')),
        sa.UniqueConstraint('SOPInstanceUID', name=op.f('uq_report_SOPInstanceUID')),
    )
    for column in ('StudyInstanceUID', 'status', 'AccessionNumber', 'scheduled_step_pk', 'created_at'):
        op.create_index(op.f(f'ix_report_{column}'), 'report', [column])


def downgrade() -> None:
    for column in ('StudyInstanceUID', 'status', 'AccessionNumber', 'scheduled_step_pk', 'created_at'):
        op.drop_index(op.f(f'ix_report_{column}'), table_name='report')
    op.drop_table('report')
