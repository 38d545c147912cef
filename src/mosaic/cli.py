"""The ``mosaic`` command line (Typer + Rich)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from mosaic.cli_jobs import jobs_app
from mosaic.cli_retention import delete_command, hold_app, retention_app
from mosaic.cli_support import ConfigOption, DataDirOption, console, errors, node_of, open_node, operator, say
from mosaic.cli_support import settings_of as _settings
from mosaic.config import ConfigurationError, StartupError, iter_options


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
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
user_app = typer.Typer(help="Accounts: people and systems that sign in, their roles and scope.", no_args_is_help=True)
app.add_typer(user_app, name="user")
audit_app = typer.Typer(help="The audit trail: verify its hash chain, search it.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(retention_app, name="retention")
app.add_typer(hold_app, name="hold")
app.add_typer(jobs_app, name="jobs")


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    http_host: Annotated[str | None, typer.Option("--http-host", help="HTTP bind address.")] = None,
    http_port: Annotated[int | None, typer.Option("--http-port", help="HTTP port.")] = None,
    dicom_port: Annotated[int | None, typer.Option("--dicom-port", help="DICOM port.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="Mosaic's AE title.")] = None,
    workers: Annotated[int | None, typer.Option("--dicom-workers", help="Processes serving the DICOM port.")] = None,
) -> None:
    """Start Mosaic: the DICOM listener and the HTTP server."""
    from mosaic.logging_setup import configure_logging

    settings = _settings(config, data_dir, http__host=http_host, http__port=http_port, dicom__port=dicom_port,
                         dicom__ae_title=ae_title, dicom__workers=workers)
    configure_logging(settings.log)
    if settings.dicom.workers > 1:
        _multiprocess_metrics(settings.data_dir / ".metrics")
    node = open_node(settings, create=True)
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    console.print(f"[bold green]Mosaic is running[/]  data: {settings.data_dir.resolve()}")
    scheme = "https" if settings.http.https else "http"
    if node.initial_admin_password:
        console.print(f"  [bold yellow]First start:[/] sign in at {scheme}://{settings.http.host}:{node.http_port}"
                      f"/login as [bold]admin[/] with password [bold]{node.initial_admin_password}[/] "
                      "(shown only this once; change it with `mosaic user passwd admin`)", highlight=False,
                      soft_wrap=True)
    if not settings.dicom.peers and not settings.dicom.allow_unknown_calling_aes:
        console.print("  [yellow]No DICOM peers configured:[/] every association is refused until modalities and "
                      "PACS are listed in dicom.peers (docs/configuration.md)", highlight=False)
    if settings.security.development_mode:
        console.print("  [bold red]security.development_mode is on: HTTP answers without credentials[/]")
    console.print(f"  DICOM  {settings.dicom.ae_title}@{settings.dicom.host}:{node.dicom_port}")
    if node.dicom is not None and settings.dicom.tls.enabled:
        console.print(f"  DICOM  {settings.dicom.ae_title}@{settings.dicom.host}:{node.dicom.tls_port} (TLS)")
    console.print(f"  HTTP   {scheme}://{settings.http.host}:{node.http_port}/  (health: /healthz, metrics: /metrics)")
    console.print("  Press Ctrl+C to stop.", highlight=False)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    node.stop()


def _multiprocess_metrics(folder: Path) -> None:
    """Prometheus metrics shared by the worker processes (set before prometheus_client is imported)."""
    import os
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise StartupError(f"cannot create {folder} (the workers' metrics): {exc.strerror or exc}") from exc
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


@app.command()
def init(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """First-time set-up: create the data directory, the index and the `admin` account (its password is printed
    once). Every command but `serve` and `init` refuses a data directory that is not set up."""
    node = open_node(_settings(config, data_dir), create=True)
    try:
        password = node.identity.ensure_administrator()
    finally:
        node.stop()
    if password is None:
        console.print(f"{node.settings.data_dir.resolve()} is already set up: nothing changed", highlight=False,
                      soft_wrap=True)
        return
    console.print(f"set up a new archive in {node.settings.data_dir.resolve()}; sign in as [bold]admin[/] with "
                  f"password [bold]{password}[/] (shown only this once; change it with `mosaic user passwd admin`)",
                  highlight=False, soft_wrap=True)


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (searched recursively).", exists=True)],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Store DICOM files from folders; re-running after an interruption skips what is stored."""
    from mosaic.services.importer import import_paths, iter_files
    from mosaic.services.origin import Door, IngestOrigin

    node = node_of(config, data_dir)
    node.audit.start()
    # every file stored is audited by ingest; refused ones are listed to the operator below
    origin = IngestOrigin(door=Door.IMPORT, principal=operator(node), audit_refusals=False)

    total = sum(1 for _ in iter_files(paths))
    with Progress(TextColumn("[bold]Importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("import", total=total)
        summary = import_paths(node.ingest, paths, progress=lambda _file: progress.advance(task), origin=origin)
    table = Table(title="Import summary")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome in ("stored", "already-stored", "replaced", "rejected"):
        table.add_row(outcome, str(summary.outcomes.get(outcome, 0)))
    console.print(table)
    for file, reason in summary.rejected[:50]:
        console.print(f"[red]rejected[/] {file}: {reason}", highlight=False)
    if len(summary.rejected) > 50:
        console.print(f"… and {len(summary.rejected) - 50} more rejected files")
    node.stop()


@app.command()
def verify(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    repair: Annotated[bool, typer.Option("--repair", help="Index orphan blobs that hold valid DICOM; remove "
                                         "partial ones (older than storage.sweep_age_seconds).")] = False,
) -> None:
    """Re-read every stored object and report missing or corrupt ones (exit code 1 if any)."""
    from mosaic.services.verify import VerifyService

    node = node_of(config, data_dir)
    service = VerifyService(node.database, node.blobs)
    with Progress(TextColumn("[bold]Verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("verify", total=service.total())
        report = service.run(lambda count: progress.advance(task, count))
    # partial files (a killed receiver's) are removed once no write can be in flight on them (storage.sweep_age_seconds)
    partial_before = time.time() - node.settings.storage.sweep_age_seconds
    repaired = service.repair_orphans(node.ingest, report.orphans, partial_before) if repair and report.orphans else {}
    node.stop()
    console.print(f"checked {report.checked}: {report.ok} ok, {len(report.missing)} missing, "
                  f"{len(report.corrupt)} corrupt, {len(report.orphans)} orphan blobs")
    for line in report.missing:
        console.print(f"[red]missing[/] {line}", highlight=False)
    for line in report.corrupt:
        console.print(f"[red]corrupt[/] {line}", highlight=False)
    for key in report.orphans[:50]:
        what = repaired.get(key, "not referenced by the index; `mosaic verify --repair` indexes it (or removes "
                                 "it when partial)")
        console.print(f"[yellow]orphan[/] blob {key}: {what}", highlight=False)
    if not report.healthy:
        raise typer.Exit(1)


@app.command()
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


def _audit_cli_change(node: Any, action: str, detail: dict[str, Any], outcome: str = "success") -> None:
    """Account and policy changes made on the command line are audited like any other (actor: the OS user)."""
    from mosaic.governance.audit import AuditEntry

    node.audit.record(AuditEntry.of(operator(node), action, outcome, detail=detail))


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
    _audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": account.username, "change": "created",
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
    _audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": username, "change": "updated", "roles": account.roles,
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
    _audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": username, "change": "password"})
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
            _audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": username, "change": "tokens revoked",
                                                                "count": count})
            console.print(f"revoked {count} token(s) of {username}")
        else:
            token = node.identity.issue_token(username, name=name, days=days)
            _audit_cli_change(node, AuditAction.POLICY_CHANGE, {"user": username, "change": "token issued",
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


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    anchors: Annotated[list[Path] | None, typer.Option(
        "--anchors", help="More anchor files to check the chain against (other nodes' checkpoints).")] = None,
) -> None:
    """Walk the audit trail's hash chain and check it against every signed checkpoint; names the first record
    edited, removed or reordered, or the checkpoint that is not validly signed (exit 1)."""
    node = node_of(config, data_dir)
    with Progress(TextColumn("[bold]Verifying the audit trail"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("audit", total=node.audit.total())
        report = node.audit.verify(lambda count: progress.advance(task, count), anchor_files=anchors)
    node.stop()
    if report.intact:
        console.print(f"audit trail intact: {report.checked} records, every hash matches; "
                      f"{report.checkpoints} signed checkpoints match")
        if report.checked > report.anchored_seq:
            console.print(f"[yellow]records {report.anchored_seq + 1}…{report.checked} are not anchored by a signed "
                          "checkpoint yet: cutting them off would not be detected[/]")
        return
    if report.bad_checkpoint_line is not None:
        errors.print(f"[red]audit trail anchors broken at checkpoint line {report.bad_checkpoint_line}: "
                     f"{report.reason}[/]")
    else:
        errors.print(f"[red]audit trail broken at record {report.first_bad_seq}: {report.reason}[/] "
                     f"({report.checked} records before it are intact)")
    raise typer.Exit(1)


@audit_app.command("search")
def audit_search(
    patient: Annotated[str | None, typer.Option("--patient", help="Patient ID.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="User name or AE title.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study Instance UID.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="query, read, store, delete, login, …")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most records shown.")] = 50,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Search the audit trail, newest first."""
    from mosaic.governance.audit import AuditAction

    node = node_of(config, data_dir)
    rows, total = node.audit.search(patient_id=patient, user=user, study=study, action=action, limit=limit)
    _audit_cli_change(node, AuditAction.AUDIT_READ, {"patient": patient, "user": user, "study": study,
                                                     "action": action, "matches": total})
    node.stop()
    table = Table(title=f"Audit trail: {total} matching records")
    for column in ("#", "when (UTC)", "who", "from", "door", "action", "outcome", "patient", "study"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(str(row.seq), row.recorded_at.isoformat(sep=" ", timespec="seconds"), row.actor, row.address,
                      row.interface, row.action + (" BREAK-GLASS" if row.break_glass else ""), row.outcome,
                      row.PatientID, row.StudyInstanceUID)
    console.print(table)


@app.command("export")
def export(
    study: Annotated[list[str], typer.Option("--study", help="Study Instance UID (repeat for more).")],
    project: Annotated[str, typer.Option("--project", help="Research project: its secret keys the pseudonyms.")],
    to: Annotated[Path | None, typer.Option("--to", help="Folder (or, with --zip, zip file) to write.")] = None,
    as_zip: Annotated[bool, typer.Option("--zip", help="Write one zip file instead of a folder.")] = False,
    peer: Annotated[str | None, typer.Option("--peer", help="Send to this configured DICOM peer instead.")] = None,
    dicomweb: Annotated[str | None, typer.Option("--dicomweb", help="Send to this configured STOW-RS "
                                                 "destination instead.")] = None,
    retain_patient_characteristics: Annotated[bool, typer.Option(help="Keep sex, age, size, weight.")] = False,
    retain_device_identity: Annotated[bool, typer.Option(help="Keep station and device identifiers.")] = False,
    retain_institution_identity: Annotated[bool, typer.Option(help="Keep institution names, addresses and "
                                                          "departments.")] = False,
    retain_uids: Annotated[bool, typer.Option(help="Keep the original UIDs.")] = False,
    shift_dates: Annotated[bool, typer.Option("--shift-dates/--remove-dates", help="Shift dates per patient "
                                              "(default) or remove them.")] = True,
    keep_dates: Annotated[bool, typer.Option("--keep-dates", help="Keep dates and times as they are (Retain "
                                             "Longitudinal Temporal Information with Full Dates).")] = False,
    include_burned_in: Annotated[bool, typer.Option(help="Also export instances that may show burned-in text.")
                                 ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """De-identify studies (PS3.15 Annex E) into a folder, a zip, a DICOM peer or a DICOMweb destination.
    The manifest linking pseudonyms to patients stays inside Mosaic."""
    from mosaic.workflow.export import Destination, ExportError, summary

    targets = [(kind, value) for kind, value in (("zip" if as_zip else "folder", str(to) if to else None),
                                                 ("peer", peer), ("dicomweb", dicomweb)) if value]
    if len(targets) != 1:
        errors.print("[red]give exactly one of --to, --peer, --dicomweb[/]")
        raise typer.Exit(2)
    node = node_of(config, data_dir)
    exporter = operator(node)
    node.audit.start()
    options = {"retain_patient_characteristics": retain_patient_characteristics, "retain_uids": retain_uids,
               "retain_device_identity": retain_device_identity, "retain_institution_identity":
               retain_institution_identity, "retain_longitudinal_modified_dates": shift_dates and not keep_dates,
               "retain_longitudinal_full_dates": keep_dates, "include_burned_in": include_burned_in}
    try:
        job = node.exports.prepare(exporter, study, Destination(*targets[0]), project, options, here=True)
    except ExportError as exc:
        errors.print(f"[red]{exc}[/]")
        node.stop()
        raise typer.Exit(1) from exc
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("Exporting", total=None)
        job = node.exports.run(job, lambda phase, done, total: progress.update(
            task, description=phase.capitalize(), total=total, completed=done))
    node.stop()
    outcome = summary(job)
    console.print(f"export {job.id}: {outcome['exported']} instances exported, {outcome['excluded_count']} excluded, "
                  f"{outcome['failed_count']} failed (project {project}; the manifest stays in Mosaic)")
    for item in outcome["excluded"][:50]:
        console.print(f"[yellow]excluded[/] {item['SOPInstanceUID']}: {item['reason']}", highlight=False)
    for item in outcome["failed"][:50]:
        console.print(f"[red]failed[/] {item['source']}: {item['reason']}", highlight=False)
    if job.state != "done":
        errors.print(f"[red]export {job.state}: {job.error}[/]")
        raise typer.Exit(1)


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


app.command("delete")(delete_command)

if __name__ == "__main__":
    app()
