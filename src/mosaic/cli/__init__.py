"""The ``mosaic`` command line (Typer + Rich): ``mosaic.cli:app``, one module per command group.

:mod:`~mosaic.cli.serve` (serve, init), :mod:`~mosaic.cli.archive` (import, verify), :mod:`~mosaic.cli.peers`
(echo), :mod:`~mosaic.cli.export` (export), :mod:`~mosaic.cli.retention` (retention, hold, delete),
:mod:`~mosaic.cli.config` (config), :mod:`~mosaic.cli.accounts` (user), :mod:`~mosaic.cli.audit` (audit),
:mod:`~mosaic.cli.jobs` (jobs); what they share (options, the node, the operator) is :mod:`~mosaic.cli.support`.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from mosaic.cli import accounts, archive, audit, config, export, jobs, peers, retention, serve
from mosaic.cli.support import say
from mosaic.config import ConfigurationError, StartupError

__all__ = ["app"]


class _OneLineErrors(TyperGroup):
    """Every command: a configuration or start-up error is said in one line each on stderr (``mosaic: …``),
    exit code 2, no traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer._click.Context: typer vendors click
        try:
            return super().invoke(ctx)
        except (ConfigurationError, StartupError) as exc:
            for line in str(exc).splitlines():
                say(line)
            raise typer.Exit(2) from None


app = typer.Typer(cls=_OneLineErrors, help="Mosaic: an open enterprise imaging platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(config.config_app, name="config")
app.add_typer(accounts.user_app, name="user")
app.add_typer(audit.audit_app, name="audit")
app.add_typer(retention.retention_app, name="retention")
app.add_typer(retention.hold_app, name="hold")
app.add_typer(jobs.jobs_app, name="jobs")
app.command()(serve.serve)
app.command()(serve.init)
app.command("import")(archive.import_)
app.command()(archive.verify)
app.command()(peers.echo)
app.command("export")(export.export)
app.command("delete")(retention.delete_command)
