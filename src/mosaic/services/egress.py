"""What every door that sends stored instances out shares: who is sending what where (:class:`EgressContext`)
and the one hook where the header may change on the way out (:class:`HeaderCoercion`: current demographics after
an HL7 update or merge, a destination's tag morphing). Originals are never rewritten: a coerced instance is a new
file written for that answer, the stored one stays byte for byte as it came."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from mosaic.services.retrieve import StoredInstance


@dataclass(frozen=True)
class EgressContext:
    """One instance going out: through which door (``dicomweb``, ``dimse``, ``export``), to whom (a client
    address, a peer's AE title, an export target) and for which principal."""

    door: str
    destination: str
    principal: str


HeaderChange = Callable[[Dataset], None]
"""Changes a decoded data set in place (pixel data and everything not named stays as stored). A change may carry a
``version`` (a string naming what it writes, e.g. the patient history's latest change): then the answers it makes
can be cached and revalidated (ETags); one without a version is new every time."""


def change_version(change: HeaderChange) -> str:
    """The ``version`` of a change, or a value that never repeats when it has none (nothing cached matches it)."""
    version = getattr(change, "version", None)
    return str(version) if version else uuid.uuid4().hex


class HeaderCoercion(Protocol):
    def __call__(self, instance: StoredInstance, context: EgressContext) -> HeaderChange | None:
        """The change for ``instance`` going out in ``context``, or None: it goes out as stored."""


def no_coercion(instance: StoredInstance, context: EgressContext) -> HeaderChange | None:
    """The default: every instance goes out as stored."""
    return None
