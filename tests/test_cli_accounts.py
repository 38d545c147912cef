"""Accounts on the command line (`mosaic user …`) against a running node on the same data folder: what the
imaging IT team does on day one, checked through the HTTP door the accounts are for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from mosaic.app import Mosaic
from mosaic.cli import app as cli
from mosaic.config import DicomSettings, HttpSettings, SecuritySettings, Settings
from tests.helpers import LOCALHOST

runner = CliRunner()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Mosaic]:
    mosaic = Mosaic(Settings(data_dir=tmp_path, http=HttpSettings(port=0), dicom=DicomSettings(port=0),
                             security=SecuritySettings(credential_cache_seconds=0)))  # type: ignore[call-arg]
    mosaic.start(dicom=False)
    yield mosaic
    mosaic.stop()


def mosaic_cli(node: Mosaic, *args: str) -> tuple[int, str]:
    result = runner.invoke(cli, [*args, "--data-dir", str(node.settings.data_dir)], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def studies(node: Mosaic, **kwargs: object) -> int:
    return httpx.get(f"http://{LOCALHOST}:{node.http_port}/dicom-web/studies", **kwargs).status_code  # type: ignore[arg-type]


def test_add_a_person_change_the_password_disable_the_account(node: Mosaic) -> None:
    code, output = mosaic_cli(node, "user", "add", "dr.skin", "--roles", "clinician", "--facilities", "SITE-A",
                              "--departments", "DERMATOLOGY", "--password", "first-password")
    assert code == 0, output
    assert "facilities SITE-A" in output
    assert studies(node, auth=("dr.skin", "first-password")) == 200
    code, output = mosaic_cli(node, "user", "passwd", "dr.skin", "--password", "second-password")
    assert code == 0, output
    assert studies(node, auth=("dr.skin", "first-password")) == 401
    assert studies(node, auth=("dr.skin", "second-password")) == 200
    code, output = mosaic_cli(node, "user", "set", "dr.skin", "--disabled")
    assert code == 0, output
    assert studies(node, auth=("dr.skin", "second-password")) == 401
    code, output = mosaic_cli(node, "user", "list")
    assert "dr.skin" in output and "clinician" in output
    # every change is a policy change in the audit trail, made by the OS user at the command line
    node.audit.flush()
    changes, _total = node.audit.search(action="policy-change")
    kinds = [json.loads(row.detail)["change"] for row in reversed(changes)]
    assert kinds == ["created", "password", "updated"]
    assert all(row.interface == "cli" and row.actor.startswith("os:") for row in changes)


def test_tokens_for_systems(node: Mosaic) -> None:
    code, output = mosaic_cli(node, "user", "add", "ris", "--roles", "integration", "--no-password")
    assert code == 0, output
    code, output = mosaic_cli(node, "user", "token", "ris", "--label", "RIS")
    assert code == 0, output
    token = output.strip().splitlines()[-1]
    assert token.startswith("mosaic_")
    assert studies(node, headers={"Authorization": f"Bearer {token}"}) == 200
    assert studies(node, auth=("ris", "")) == 401  # a token-only account has no password
    code, output = mosaic_cli(node, "user", "token", "ris", "--revoke")
    assert code == 0 and "revoked 1" in output
    assert studies(node, headers={"Authorization": f"Bearer {token}"}) == 401


@pytest.mark.parametrize(("args", "message"), [
    (["user", "add", "x", "--roles", "wizard", "--no-password"], "unknown role"),
    (["user", "passwd", "nobody", "--password", "long-enough"], "no user named 'nobody'"),
    (["user", "passwd", "admin", "--password", "short"], "at least 8 characters"),
    (["user", "token", "nobody"], "no user named"),
])
def test_mistakes_are_explained(node: Mosaic, args: list[str], message: str) -> None:
    code, output = mosaic_cli(node, *args)
    assert code == 1
    assert message in " ".join(output.split())


def test_administrators_manage_accounts_over_http(node: Mosaic) -> None:
    from tests.auth_support import auth_headers

    base = f"http://{LOCALHOST}:{node.http_port}/api/users"
    with httpx.Client(headers=auth_headers(node)) as admin:
        created = admin.post(base, json={"username": "tech1", "roles": ["technologist"], "password": "tech-password",
                                         "facilities": ["SITE-A"]})
        assert created.status_code == 201 and created.json()["facilities"] == ["SITE-A"]
        assert "password" not in created.text.lower().replace("has_password", "")
        assert admin.post(base, json={"username": "tech1", "roles": ["technologist"]}).status_code == 400
        assert admin.post(base, json={"username": "x", "roles": ["wizard"]}).json()["error"].startswith(
            "unknown role")
        token = admin.post(f"{base}/tech1/tokens", json={"label": "PACS bridge"}).json()["token"]
        assert studies(node, headers={"Authorization": f"Bearer {token}"}) == 200
        updated = admin.patch(f"{base}/tech1", json={"roles": ["clinician"], "active": False})
        assert updated.status_code == 200 and updated.json()["active"] is False
        assert studies(node, headers={"Authorization": f"Bearer {token}"}) == 401
        assert admin.patch(f"{base}/nobody", json={"active": True}).status_code == 404
        listed = admin.get(base).json()
        assert {"admin", "tech1"} <= {user["username"] for user in listed["users"]}
        assert "read-audit" in listed["roles"]["auditor"]
    tech = httpx.get(base, auth=("tech1", "tech-password"))
    assert tech.status_code == 401  # disabled
    node.audit.flush()
    changes = node.audit.search(action="policy-change", user="admin")[0]
    assert [json.loads(row.detail)["change"] for row in reversed(changes) if row.outcome == "success"] == [
        "created", "token issued", "updated"]


def test_account_changes_over_http_are_whole_or_not_at_all(node: Mosaic) -> None:
    """A change with one bad part changes nothing (the password stays, sessions stay); bad values are 400s."""
    from tests.auth_support import auth_headers

    node.identity.add_user("nurse", roles=["clinician"], password="nurse-password")
    base = f"http://{LOCALHOST}:{node.http_port}/api/users"
    with httpx.Client(headers=auth_headers(node)) as admin:
        mixed = admin.patch(f"{base}/nurse", json={"password": "a-new-password", "roles": ["wizard"]})
        assert mixed.status_code == 400 and "unknown role" in mixed.json()["error"]
        assert httpx.get(base.replace("/api/users", "/api/me"), auth=("nurse", "nurse-password")).status_code == 200
        for body in ({"active": "false"}, {"password": 12345678}, {"password": "short"}):
            assert admin.patch(f"{base}/nurse", json=body).status_code == 400, body
        assert admin.post(base, json={"username": "weak", "roles": ["clinician"], "password": "short"}
                          ).status_code == 400
        for days in ("abc", 0, -1, 1e9):
            assert admin.post(f"{base}/nurse/tokens", json={"days": days}).status_code == 400, days
    assert "weak" not in {account.username for account in node.identity.users()}
    assert next(account for account in node.identity.users() if account.username == "nurse").active


def test_only_administrators_manage_accounts(node: Mosaic) -> None:
    node.identity.add_user("clin", roles=["clinician"], password="clin-password")
    base = f"http://{LOCALHOST}:{node.http_port}/api/users"
    for method, path in (("GET", ""), ("POST", ""), ("PATCH", "/admin"), ("POST", "/admin/tokens"),
                         ("DELETE", "/admin/tokens")):
        response = httpx.request(method, base + path, auth=("clin", "clin-password"), json={})
        assert response.status_code == 403, (method, path, response.text)
