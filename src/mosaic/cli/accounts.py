"""``mosaic user add | set | passwd | token | list``: accounts, their roles, scope, passwords and API tokens.
Every change is audited as a policy change by the operating-system user."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mosaic.cli.support import ConfigOption, DataDirOption, audit_cli_change, console, errors, node_of

user_app = typer.Typer(help="Accounts: people and systems that sign in, their roles and scope.", no_args_is_help=True)


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


RolesOption = Annotated[str, typer.Option("--roles", "-r", help="Comma-separated roles (administrator, radiologist, "
                                          "clinician, technologist, researcher, auditor, integration).")]
FacilitiesOption = Annotated[str | None, typer.Option("--facilities", help="Comma-separated facilities the account "
                                                      "may see ('*': all).")]
DepartmentsOption = Annotated[str | None, typer.Option("--departments", help="Comma-separated departments/"
                                                       "specialties the account may see ('*': all).")]


def _new_password(password: str | None) -> str:
    if password is not None:
        return password
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="The account's user name.")],
    roles: RolesOption,
    facilities: FacilitiesOption = None,
    departments: DepartmentsOption = None,
    password: Annotated[str | None, typer.Option("--password", help="Password (asked when omitted; "
                                                 "--no-password for a token-only system account).")] = None,
    no_password: Annotated[bool, typer.Option("--no-password", help="A system account that uses API tokens only."
                                              )] = False,
    display_name: Annotated[str, typer.Option("--name", help="Display name.")] = "",
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create an account with roles and a scope of facilities and departments."""
    from mosaic.governance.audit import AuditAction
    from mosaic.governance.identity import AccountError

    node = node_of(config, data_dir)
    try:
        account = node.identity.add_user(username, roles=_csv(roles) or [], password=None if no_password
                                         else _new_password(password), display_name=display_name,
                                         facilities=_csv(facilities), departments=_csv(departments))
    except AccountError as exc:
        errors.print(f"[red]{exc}[/]")
        node.stop()
        raise typer.Exit(1) from exc
    audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": account.username, "change": "created",
                                                        "roles": account.roles, "facilities": account.facilities,
                                                        "departments": account.departments})
    node.stop()
    console.print(f"created {account.username}: roles {', '.join(account.roles)}; facilities "
                  f"{', '.join(account.facilities)}; departments {', '.join(account.departments)}")


@user_app.command("set")
def user_set(
    username: Annotated[str, typer.Argument(help="The account's user name.")],
    roles: Annotated[str | None, typer.Option("--roles", "-r", help="New comma-separated roles.")] = None,
    facilities: FacilitiesOption = None,
    departments: DepartmentsOption = None,
    active: Annotated[bool | None, typer.Option("--active/--disabled", help="Enable or disable the account.")] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Change an account's roles, scope or whether it may sign in (audited as a policy change)."""
    from mosaic.governance.audit import AuditAction
    from mosaic.governance.identity import AccountError

    node = node_of(config, data_dir)
    try:
        account = node.identity.update_user(username, roles=_csv(roles), facilities=_csv(facilities),
                                            departments=_csv(departments), active=active)
    except AccountError as exc:
        errors.print(f"[red]{exc}[/]")
        node.stop()
        raise typer.Exit(1) from exc
    audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": username, "change": "updated", "roles": account.roles,
                                                        "facilities": account.facilities,
                                                        "departments": account.departments, "active": account.active})
    node.stop()
    console.print(f"updated {username}")


@user_app.command("passwd")
def user_passwd(
    username: Annotated[str, typer.Argument(help="The account's user name.")],
    password: Annotated[str | None, typer.Option("--password", help="New password (asked when omitted).")] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Set an account's password (ends its browser sessions)."""
    from mosaic.governance.audit import AuditAction
    from mosaic.governance.identity import AccountError

    node = node_of(config, data_dir)
    try:
        node.identity.set_password(username, _new_password(password))
    except AccountError as exc:
        errors.print(f"[red]{exc}[/]")
        node.stop()
        raise typer.Exit(1) from exc
    audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": username, "change": "password"})
    node.stop()
    console.print(f"password of {username} changed")


@user_app.command("token")
def user_token(
    username: Annotated[str, typer.Argument(help="The account the token acts as.")],
    name: Annotated[str, typer.Option("--label", help="What the token is for (e.g. the RIS).")] = "",
    days: Annotated[float | None, typer.Option("--days", help="Expire after this many days (default: never).")] = None,
    revoke: Annotated[bool, typer.Option("--revoke", help="Revoke every token of the account instead.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Issue an API token (printed once: `Authorization: Bearer <token>`), or revoke an account's tokens."""
    from mosaic.governance.audit import AuditAction
    from mosaic.governance.identity import AccountError

    node = node_of(config, data_dir)
    try:
        if revoke:
            count = node.identity.revoke_tokens(username)
            audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": username, "change": "tokens revoked",
                                                                "count": count})
            console.print(f"revoked {count} token(s) of {username}")
        else:
            token = node.identity.issue_token(username, name=name, days=days)
            audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": username, "change": "token issued",
                                                                "label": name, "days": days})
            print(token)
    except AccountError as exc:
        errors.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    finally:
        node.stop()


@user_app.command("list")
def user_list(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Every account with its roles and scope."""
    node = node_of(config, data_dir)
    table = Table(title="Accounts")
    for column in ("user", "roles", "facilities", "departments", "active", "signs in with password"):
        table.add_column(column)
    for account in node.identity.users():
        table.add_row(account.username, ", ".join(account.roles), ", ".join(account.facilities),
                      ", ".join(account.departments), "yes" if account.active else "no",
                      "single sign-on" if account.source == "oidc" else "yes" if account.has_password
                      else "tokens only")
    node.stop()
    console.print(table)
