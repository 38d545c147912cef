"""share links: studies shared with people outside the hospital (token and PIN hashes) and their recipients' sessions

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'share_link',
        sa.Column('pk', BigId, primary_key=True, autoincrement=True),
        sa.Column('token_sha256', sa.String(length=64), nullable=False),
        sa.Column('created_by', sa.String(length=128), nullable=False),
        sa.Column('created_at', When, nullable=False),
        sa.Column('expires_at', When, nullable=False),
        sa.Column('recipient_kind', sa.String(length=32), nullable=False),
        sa.Column('note', sa.Text(), nullable=False, server_default=''),
        sa.Column('PatientID', sa.String(length=64), nullable=False, server_default=''),
        sa.Column('IssuerOfPatientID', sa.String(length=64), nullable=False, server_default=''),
        sa.Column('studies', sa.Text(), nullable=False),
        sa.Column('pin_hash', sa.String(length=256), nullable=False, server_default=''),
        sa.Column('pin_failures', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('deidentified', sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column('deid_secret_hex', sa.String(length=64), nullable=False, server_default=''),
        sa.Column('revoked_at', When, nullable=True),
        sa.Column('revoked_by', sa.String(length=128), nullable=False, server_default=''),
        sa.Column('uses', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('last_used_at', When, nullable=True),
        sa.UniqueConstraint('token_sha256', name=op.f('uq_share_link_token_sha256')),
    )
    op.create_index(op.f('ix_share_link_created_by'), 'share_link', ['created_by'])
    op.create_index(op.f('ix_share_link_expires_at'), 'share_link', ['expires_at'])
    op.create_table(
        'share_session',
        sa.Column('pk', BigId, primary_key=True, autoincrement=True),
        sa.Column('session_sha256', sa.String(length=64), nullable=False),
        sa.Column('share_pk', BigId, nullable=False),
        sa.Column('created_at', When, nullable=False),
        sa.Column('expires_at', When, nullable=False),
        sa.Column('address', sa.String(length=64), nullable=False, server_default=''),
        sa.ForeignKeyConstraint(['share_pk'], ['share_link.pk'], name=op.f('fk_share_session_share_pk_share_link')),
        sa.UniqueConstraint('session_sha256', name=op.f('uq_share_session_session_sha256')),
    )
    op.create_index(op.f('ix_share_session_share_pk'), 'share_session', ['share_pk'])
    op.create_index(op.f('ix_share_session_expires_at'), 'share_session', ['expires_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_share_session_expires_at'), table_name='share_session')
    op.drop_index(op.f('ix_share_session_share_pk'), table_name='share_session')
    op.drop_table('share_session')
    op.drop_index(op.f('ix_share_link_expires_at'), table_name='share_link')
    op.drop_index(op.f('ix_share_link_created_by'), table_name='share_link')
    op.drop_table('share_link')
