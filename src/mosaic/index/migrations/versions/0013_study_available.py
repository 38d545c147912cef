"""study availability (the "study available" announcements) and FHIR Subscriptions

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.add_column('study', sa.Column('available_at', sa.DateTime(timezone=True), nullable=True))
    # the studies already stored count as announced: an upgrade must not announce the whole archive at once
    op.execute(sa.text('UPDATE study SET available_at = updated_at'))
    op.create_index('ix_study_unannounced', 'study', ['available_at', 'updated_at'])
    op.create_table(
        'fhir_subscription',
        sa.Column('pk', big_id, autoincrement=True, nullable=False),
        sa.Column('owner', sa.String(length=128), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('topic', sa.String(length=256), nullable=False),
        sa.Column('endpoint', sa.String(length=2048), nullable=False),
        sa.Column('payload_content', sa.String(length=16), nullable=False),
        sa.Column('headers_json', sa.Text(), nullable=False),
        sa.Column('resource_json', sa.Text(), nullable=False),
        sa.Column('events_since_start', sa.Integer(), nullable=False),
        sa.Column('last_event_seq', sa.BigInteger(), nullable=False),
        sa.Column('error', sa.String(length=500), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_subscription')),
    )
    op.create_index(op.f('ix_fhir_subscription_owner'), 'fhir_subscription', ['owner'])


def downgrade() -> None:
    op.drop_index(op.f('ix_fhir_subscription_owner'), table_name='fhir_subscription')
    op.drop_table('fhir_subscription')
    op.drop_index('ix_study_unannounced', table_name='study')
    with op.batch_alter_table('study') as batch:
        batch.drop_column('available_at')
