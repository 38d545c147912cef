"""Credentials for tests that talk to a running Mosaic node over HTTP.

Every HTTP route that touches patient data needs credentials (issue 5); functional tests act as the
``admin`` account that the first start creates::

    client = httpx.Client(base_url=..., headers=auth_headers(node))
    DICOMwebClient(url, headers=auth_headers(node))
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mosaic.app import Mosaic

# by node object, not id(node): a later node may reuse the id of a stopped one, and must not get its token
_TOKENS: weakref.WeakKeyDictionary[Mosaic, str] = weakref.WeakKeyDictionary()


def admin_token(node: Mosaic) -> str:
    """An API token of the ``admin`` account of ``node`` (one per node)."""
    token = _TOKENS.get(node)
    if token is None:
        token = _TOKENS[node] = node.identity.issue_token("admin", name="tests")
    return token


def auth_headers(node: Mosaic) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token(node)}"}


def admin_session_cookie(node: Mosaic) -> dict[str, str]:
    """A browser session cookie of ``admin`` (for browser tests that do not exercise the sign-in form)."""
    session_id, _csrf = node.identity.open_session("admin")
    return {"mosaic_session": session_id}
