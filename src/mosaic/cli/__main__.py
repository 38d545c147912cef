"""``python -m mosaic.cli``: the ``mosaic`` command."""

from mosaic.cli import app

app()
