"""durable jobs (exports, retention runs) with progress

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('job',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.String(length=128), nullable=False),
    sa.Column('params_json', sa.Text(), nullable=False),
    sa.Column('result_json', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('phase', sa.String(length=200), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('node', sa.String(length=200), nullable=False),
    sa.Column('created_at', When, nullable=False),
    sa.Column('started_at', When, nullable=True),
    sa.Column('heartbeat_at', When, nullable=True),
    sa.Column('finished_at', When, nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job')),
    )
    for column in ('kind', 'state', 'requested_by', 'created_at'):
        op.create_index(op.f(f'ix_job_{column}'), 'job', [column], unique=False)


def downgrade() -> None:
    op.drop_table('job')
