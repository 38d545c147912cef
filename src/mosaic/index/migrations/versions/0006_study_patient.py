"""the patient as each study describes it (shared patients are shown per scope), filled from stored metadata

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_COLUMNS = (('PatientName', 320, '00100010'), ('PatientNameUpper', 320, ''), ('PatientBirthDate', 8, '00100030'),
            ('PatientBirthTime', 16, '00100032'), ('PatientSex', 16, '00100040'), ('EthnicGroup', 64, '00102160'))
_INDEXED = ('PatientNameUpper', 'PatientBirthDate', 'PatientBirthTime', 'PatientSex', 'EthnicGroup')


def _text(element: dict | None) -> str:
    """An element of stored DICOM JSON as the index keeps it (person names as 'Alphabetic=Ideographic=...')."""
    values = (element or {}).get('Value') or []
    texts = []
    for value in values:
        if isinstance(value, dict):
            groups = [str(value.get(group, '')) for group in ('Alphabetic', 'Ideographic', 'Phonetic')]
            while groups and not groups[-1]:
                groups.pop()
            texts.append('='.join(groups))
        else:
            texts.append(str(value))
    return '\\'.join(texts).strip()


def upgrade() -> None:
    with op.batch_alter_table('study') as batch:
        for name, length, _tag in _COLUMNS:
            collation = 'C' if name in ('PatientBirthDate', 'PatientBirthTime') and \
                op.get_bind().dialect.name == 'postgresql' else None
            batch.add_column(sa.Column(name, sa.String(length=length, collation=collation), nullable=False,
                                       server_default=''))
        for name in _INDEXED:
            batch.create_index(f'ix_study_{name}', [name], unique=False)
    bind = op.get_bind()
    study = sa.table('study', sa.column('pk'), *(sa.column(name) for name, _l, _t in _COLUMNS))
    representative = sa.text(
        'SELECT series.study_pk, instance.metadata_json FROM instance JOIN series ON instance.series_pk = series.pk '
        'WHERE instance.pk IN (SELECT min(instance.pk) FROM instance JOIN series ON instance.series_pk = series.pk '
        'GROUP BY series.study_pk)')
    for study_pk, metadata in bind.execute(representative):
        header = json.loads(metadata or '{}')
        values = {name: _text(header.get(tag))[:length] for name, length, tag in _COLUMNS if tag}
        values['PatientNameUpper'] = values['PatientName'].upper()
        bind.execute(study.update().where(study.c.pk == study_pk).values(**values))


def downgrade() -> None:
    with op.batch_alter_table('study') as batch:
        for name in _INDEXED:
            batch.drop_index(f'ix_study_{name}')
        for name, _length, _tag in _COLUMNS:
            batch.drop_column(name)
