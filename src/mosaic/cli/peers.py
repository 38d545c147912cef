"""``mosaic echo``: is a DICOM peer reachable and answering?"""

from __future__ import annotations

from typing import Annotated

import typer

from mosaic.cli.support import ConfigOption, console, errors
from mosaic.cli.support import settings_of as _settings


def echo(
    peer: Annotated[str, typer.Argument(help="AE@HOST:PORT of the peer to C-ECHO.")],
    config: ConfigOption = None,
) -> None:
    """Send a C-ECHO (DICOM verification) to a peer."""
    from mosaic.dimse.scu import parse_peer, verify_peer

    settings = _settings(config)
    try:
        ae_title, host, port = parse_peer(peer)
    except ValueError as exc:
        errors.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    status, seconds = verify_peer(settings.dicom.ae_title, ae_title, host, port)
    if status is None:
        errors.print(f"[red]C-ECHO to {peer} failed: association rejected, aborted or peer unreachable[/]")
        raise typer.Exit(1)
    if status != 0:
        errors.print(f"[red]C-ECHO to {peer} answered status 0x{status:04X}[/]")
        raise typer.Exit(1)
    console.print(f"C-ECHO to {peer}: success in {seconds * 1000:.1f} ms")
