"""``mosaic config show | docs``: the effective configuration, and every option's documentation."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from mosaic.cli.support import ConfigOption, console
from mosaic.cli.support import settings_of as _settings
from mosaic.config import iter_options

config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective configuration (file + MOSAIC_* environment) with each option's doc."""
    settings = _settings(config)
    table = Table(title="Effective configuration")
    for column in ("option", "value", "default", "description"):
        table.add_column(column, overflow="fold")
    values = settings.model_dump()
    for name, _type, default, doc in iter_options():
        value: Any = values
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        shown = "***" if "secret" in name and value else repr(value)
        table.add_row(name, shown, default, doc)
    console.print(table)


@config_app.command("docs")
def config_docs() -> None:
    """Print docs/configuration.md (every option with its type, default and doc)."""
    from mosaic.config_docs import render

    print(render(), end="")
