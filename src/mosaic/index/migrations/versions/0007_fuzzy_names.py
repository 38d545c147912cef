"""person names folded for fuzzy matching (no case, no accents), filled from the names already indexed

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mosaic.core.names import fold_name

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_COLUMNS = {'patient': ('PatientName',), 'study': ('PatientName', 'ReferringPhysicianName')}
_WIDTH = 320


def upgrade() -> None:
    for table, names in _COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for name in names:
                batch.add_column(sa.Column(f'{name}Fuzzy', sa.String(length=_WIDTH), nullable=False,
                                           server_default=''))
                batch.create_index(f'ix_{table}_{name}Fuzzy', [f'{name}Fuzzy'], unique=False)
    bind = op.get_bind()
    for table, names in _COLUMNS.items():
        rows = sa.table(table, sa.column('pk'), *(sa.column(name) for name in names),
                        *(sa.column(f'{name}Fuzzy') for name in names))
        # the fold of today's code (mosaic.core.names), as ingest computes it for new objects
        for row in bind.execute(sa.select(rows.c.pk, *(rows.c[name] for name in names))).all():
            folded = {f'{name}Fuzzy': fold_name(row._mapping[name] or '')[:_WIDTH] for name in names}
            if any(folded.values()):
                bind.execute(rows.update().where(rows.c.pk == row.pk).values(**folded))


def downgrade() -> None:
    for table, names in _COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for name in names:
                batch.drop_index(f'ix_{table}_{name}Fuzzy')
                batch.drop_column(f'{name}Fuzzy')
