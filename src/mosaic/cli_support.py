"""What every ``mosaic`` command shares: the consoles, the --config/--data-dir options, the node it works on, and
the operator it acts as (the operating-system user, audited as such)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from mosaic.config import Settings, load_settings

if TYPE_CHECKING:
    from mosaic.app import Mosaic
    from mosaic.governance.policy import Principal

console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration file.",
                                                    exists=True, dir_okay=False)]
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Folder for the index and blobs.")]


def settings_of(config: Path | None, data_dir: Path | None = None, **overrides: Any) -> Settings:
    """The file (or MOSAIC_CONFIG) and environment, then the command's own options (``section__name``)."""
    settings = load_settings(config)
    if data_dir is not None:
        settings.data_dir = data_dir
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, name = dotted.partition("__")
        setattr(getattr(settings, section), name, value)
    return settings


def node_of(config: Path | None, data_dir: Path | None) -> Mosaic:
    """The node a command works on (not started: no listener)."""
    from mosaic.app import Mosaic

    return Mosaic(settings_of(config, data_dir))


def operator(node: Mosaic) -> Principal:
    """Whoever runs the command: the operating-system user, with the administrator's permissions (a shell on the
    server is that already), audited as ``os:<user>`` at the ``cli`` door."""
    from mosaic.governance.policy import Principal

    roles = frozenset({"administrator"})
    return Principal(name=f"os:{getpass.getuser()}", kind="cli", roles=roles,
                     permissions=node.policy.permissions_of(roles), interface="cli")
