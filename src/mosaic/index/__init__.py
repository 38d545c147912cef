"""The index: SQLAlchemy schema, migrations, and QIDO/C-FIND matching translated to SQL."""
