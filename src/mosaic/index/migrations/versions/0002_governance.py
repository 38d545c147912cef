"""governance: accounts, tokens, sessions, audit trail, break-glass, legal hold, study scope and retention marks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('facility', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('department', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('deletion_marked_at', When, nullable=True))
        batch_op.add_column(sa.Column('deletion_reason', sa.String(length=256), nullable=False, server_default=''))
        batch_op.create_index(batch_op.f('ix_study_facility'), ['facility'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_department'), ['department'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_deletion_marked_at'), ['deletion_marked_at'], unique=False)
    # existing studies: their facility is their InstitutionName
    op.execute('UPDATE study SET facility = "InstitutionName"')

    op.create_table('user_account',
    sa.Column('pk', BigId, autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('display_name', sa.String(length=256), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=False),
    sa.Column('roles', sa.String(length=256), nullable=False),
    sa.Column('facilities', sa.Text(), nullable=False),
    sa.Column('departments', sa.Text(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', When, nullable=False),
    sa.Column('updated_at', When, nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_user_account')),
    sa.UniqueConstraint('username', name=op.f('uq_user_account_username')),
    )
    op.create_table('api_token',
    sa.Column('pk', BigId, autoincrement=True, nullable=False),
    sa.Column('user_pk', BigId, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', When, nullable=False),
    sa.Column('expires_at', When, nullable=True),
    sa.Column('revoked_at', When, nullable=True),
    sa.ForeignKeyConstraint(['user_pk'], ['user_account.pk'], name=op.f('fk_api_token_user_pk_user_account')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_api_token')),
    sa.UniqueConstraint('token_sha256', name=op.f('uq_api_token_token_sha256')),
    )
    op.create_index(op.f('ix_api_token_user_pk'), 'api_token', ['user_pk'], unique=False)
    op.create_table('web_session',
    sa.Column('pk', BigId, autoincrement=True, nullable=False),
    sa.Column('session_sha256', sa.String(length=64), nullable=False),
    sa.Column('user_pk', BigId, nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', When, nullable=False),
    sa.Column('expires_at', When, nullable=False),
    sa.ForeignKeyConstraint(['user_pk'], ['user_account.pk'], name=op.f('fk_web_session_user_pk_user_account')),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_web_session')),
    sa.UniqueConstraint('session_sha256', name=op.f('uq_web_session_session_sha256')),
    )
    op.create_index(op.f('ix_web_session_user_pk'), 'web_session', ['user_pk'], unique=False)
    op.create_index(op.f('ix_web_session_expires_at'), 'web_session', ['expires_at'], unique=False)
    op.create_table('audit_record',
    sa.Column('seq', BigId, autoincrement=False, nullable=False),
    sa.Column('recorded_at', When, nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('actor_kind', sa.String(length=16), nullable=False),
    sa.Column('roles', sa.String(length=256), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('interface', sa.String(length=16), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('PatientID', sa.String(length=64), nullable=False),
    sa.Column('IssuerOfPatientID', sa.String(length=64), nullable=False),
    sa.Column('StudyInstanceUID', sa.String(length=64), nullable=False),
    sa.Column('SeriesInstanceUID', sa.String(length=64), nullable=False),
    sa.Column('SOPInstanceUID', sa.String(length=64), nullable=False),
    sa.Column('break_glass', sa.Boolean(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('previous_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_record')),
    )
    for column in ('recorded_at', 'actor', 'action', 'PatientID', 'StudyInstanceUID'):
        op.create_index(op.f(f'ix_audit_record_{column}'), 'audit_record', [column], unique=False)
    op.create_table('audit_cursor',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('updated_at', When, nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_audit_cursor')),
    )
    op.create_table('break_glass_grant',
    sa.Column('pk', BigId, autoincrement=True, nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('StudyInstanceUID', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('granted_at', When, nullable=False),
    sa.Column('expires_at', When, nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_break_glass_grant')),
    )
    op.create_index(op.f('ix_break_glass_grant_username'), 'break_glass_grant', ['username'], unique=False)
    op.create_index(op.f('ix_break_glass_grant_StudyInstanceUID'), 'break_glass_grant', ['StudyInstanceUID'],
                    unique=False)
    op.create_table('legal_hold',
    sa.Column('pk', BigId, autoincrement=True, nullable=False),
    sa.Column('PatientID', sa.String(length=64), nullable=False),
    sa.Column('IssuerOfPatientID', sa.String(length=64), nullable=False),
    sa.Column('StudyInstanceUID', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('placed_by', sa.String(length=128), nullable=False),
    sa.Column('placed_at', When, nullable=False),
    sa.Column('released_by', sa.String(length=128), nullable=False),
    sa.Column('released_at', When, nullable=True),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_legal_hold')),
    )
    op.create_index(op.f('ix_legal_hold_PatientID'), 'legal_hold', ['PatientID'], unique=False)
    op.create_index(op.f('ix_legal_hold_StudyInstanceUID'), 'legal_hold', ['StudyInstanceUID'], unique=False)


def downgrade() -> None:
    for table in ('legal_hold', 'break_glass_grant', 'audit_cursor', 'audit_record', 'web_session', 'api_token',
                  'user_account'):
        op.drop_table(table)
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_deletion_marked_at'))
        batch_op.drop_index(batch_op.f('ix_study_department'))
        batch_op.drop_index(batch_op.f('ix_study_facility'))
        for column in ('deletion_reason', 'deletion_marked_at', 'department', 'facility'):
            batch_op.drop_column(column)
