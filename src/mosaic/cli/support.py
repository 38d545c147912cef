"""What every ``mosaic`` command shares: the consoles, the --config/--data-dir options, the node it works on, and
the operator it acts as (the operating-system user, audited as such)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

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
    """The file (or MOSAIC_CONFIG) and environment, then the command's own options (``section__name``), all
    validated together (:class:`~mosaic.config.ConfigurationError` names the key and where it was given)."""
    given: dict[str, Any] = {} if data_dir is None else {"data_dir": data_dir}
    for dotted, value in overrides.items():
        if value is not None:
            section, _, name = dotted.partition("__")
            given.setdefault(section, {})[name] = value
    return load_settings(config, **given)


def say(line: str) -> None:
    """One line for the operator on stderr (stdout stays for what a command answers, e.g. JSON or a token)."""
    typer.echo(f"mosaic: {line}", err=True)


def masked_index_url(settings: Settings) -> str:
    """The index URL with any password shown as ***."""
    try:
        return make_url(settings.index_url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL SQLAlchemy parses (opening the index says so): never shown whole
        return "(not a valid URL)"


def open_node(settings: Settings, *, create: bool = False) -> Mosaic:
    """The node a command works on (not started: no listener), after saying which data directory and index it
    uses. Only ``create`` (serve, init) sets up an archive: any other command refuses a data directory
    without an index instead of starting an empty archive there."""
    from mosaic.app import Mosaic

    say(f"data directory {settings.data_dir.resolve()}, index {masked_index_url(settings)}")
    return Mosaic(settings, create=create)


def node_of(config: Path | None, data_dir: Path | None) -> Mosaic:
    """The node of an existing archive a command works on (not started: no listener)."""
    return open_node(settings_of(config, data_dir))


def operator(node: Mosaic) -> Principal:
    """Whoever runs the command: the operating-system user, with the administrator's permissions (a shell on the
    server is that already), audited as ``os:<user>`` at the ``cli`` door."""
    from mosaic.governance.policy import Principal

    roles = frozenset({"administrator"})
    return Principal(name=f"os:{getpass.getuser()}", kind="cli", roles=roles,
                     permissions=node.policy.permissions_of(roles), interface="cli")


def audit_cli_change(node: Mosaic, action: str, detail: dict[str, Any], outcome: str = "success") -> None:
    """Account and policy changes made on the command line are audited like any other (actor: the OS user)."""
    from mosaic.governance.audit import AuditEntry

    node.audit.record(AuditEntry.of(operator(node), action, outcome, detail=detail))
