"""Verification service class (PS3.4 Annex A): C-ECHO, on both receive paths."""

from __future__ import annotations

from pynetdicom.events import Event

from mosaic.dimse.status import VerificationStatus


def c_echo() -> int:
    """The answer to a C-ECHO: any association that was accepted may verify it."""
    return VerificationStatus.SUCCESS


def on_c_echo(event: Event) -> int:
    """pynetdicom's ``EVT_C_ECHO`` handler."""
    return c_echo()
