"""de-identification projects (secrets) and their manifests

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('deid_project',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('secret_hex', sa.String(length=128), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('created_at', When, nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_deid_project')),
    )
    op.create_table('deid_manifest',
    sa.Column('pk', BigId, autoincrement=True, nullable=False),
    sa.Column('project', sa.String(length=64), nullable=False),
    sa.Column('export_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('original', sa.String(length=200), nullable=False),
    sa.Column('pseudonym', sa.String(length=200), nullable=False),
    sa.Column('created_at', When, nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_deid_manifest')),
    )
    for column in ('project', 'export_id', 'pseudonym'):
        op.create_index(op.f(f'ix_deid_manifest_{column}'), 'deid_manifest', [column], unique=False)


def downgrade() -> None:
    op.drop_table('deid_manifest')
    op.drop_table('deid_project')
