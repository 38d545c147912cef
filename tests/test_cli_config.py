"""What an operator sees when the configuration or the data directory is wrong: one line naming the file, the key
and the reason (exit code 2, no traceback) for every command, `mosaic serve` included; a command run from the
wrong folder refuses to start an empty archive there; a failed first start leaves no unknown admin password."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import mosaic as mosaic_package
from mosaic.app import Mosaic
from mosaic.cli import app
from mosaic.config import Settings
from tests.factory import make_bytes
from tests.helpers import LOCALHOST, free_port, wait_until

runner = CliRunner()
MOSAIC = str(Path(sys.executable).parent / "mosaic")
TYPO_PEER = '[[dicom.peers]]\nae_title = "CT01"\nhost = "10.0.0.21"\nport = 104\n' \
            '[[dicom.peers]]\nae_title = "MR01"\nhost = "10.0.0.22"\nport = 104\n' \
            '[[dicom.peers]]\nae_title = "NM01"\nhost = "10.0.0.23"\nport = 104\nmay_stor = false\n'


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MOSAIC_"):
            monkeypatch.delenv(name)


SOURCE = str(Path(mosaic_package.__file__).resolve().parents[1])
ENVIRONMENT = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join(
    [SOURCE, *filter(None, [os.environ.get("PYTHONPATH")])])}
"""The code under test, from whatever folder a command runs in."""


def mosaic(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `mosaic` command, in its own process (what an operator runs)."""
    return subprocess.run([MOSAIC, *args], capture_output=True, text=True, timeout=120, env=ENVIRONMENT, cwd=cwd,
                          check=False)


def said(stderr: str) -> list[str]:
    """The operator's lines on stderr (the log lines of a start-up left out)."""
    return [line for line in stderr.splitlines() if line.startswith("mosaic: ")]


def archive(data_dir: Path) -> Path:
    Mosaic(Settings(data_dir=data_dir)).stop()
    return data_dir


# --- configuration errors: one line, every command ---------------------------------------------


def test_a_typo_in_a_peer_permission_is_refused_in_one_line_by_serve_and_other_commands(tmp_path: Path) -> None:
    config = tmp_path / "mosaic.toml"
    config.write_text(TYPO_PEER)
    expected = f"mosaic: configuration error in {config}: dicom.peers[2].may_stor: unknown key (did you mean " \
               "may_store?)"
    serve = mosaic("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--http-port", "0",
                   "--dicom-port", "0")
    assert serve.returncode == 2, serve.stderr
    assert serve.stderr.splitlines() == [expected]
    assert not (tmp_path / "data").exists()  # refused before anything was created
    for command in (["user", "list"], ["retention", "dry-run"], ["jobs", "list"], ["echo", "PACS@127.0.0.1:104"]):
        result = runner.invoke(app, [*command, "--config", str(config)] + (
            ["--data-dir", str(tmp_path / "data")] if command[0] != "echo" else []))
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr.splitlines() == [expected] and result.stdout == ""
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_guessed_retention_keys_are_refused_instead_of_marking_every_study_due(tmp_path: Path) -> None:
    data_dir = archive(tmp_path / "data")
    node = Mosaic(Settings(data_dir=data_dir))
    for number, modality in enumerate(("CT", "MR", "NM")):
        node.ingest.store(make_bytes(patient_id=f"RET{number}", modality=modality, study_uid=f"1.2.3.99.{number}",
                                     study_date="20000101"),
                          door="import")
    node.stop()
    config = tmp_path / "mosaic.toml"
    config.write_text('[[retention.rules]]\nname = "ct-10y"\nmodality = "CT"\nkeep_years = 10\n')
    dry = runner.invoke(app, ["retention", "dry-run", "--config", str(config), "--data-dir", str(data_dir)])
    assert dry.exit_code == 2, dry.output
    assert dry.stderr.splitlines() == [
        f"mosaic: configuration error in {config}: retention.rules[0].modality: unknown key (did you mean "
        "modalities?)",
        f"mosaic: configuration error in {config}: retention.rules[0].keep_years: unknown key (did you mean "
        "keep_years_after_study?)"]
    assert "due" not in dry.output
    # the right key but no keep period: refused too (it would let every CT study go at once)
    config.write_text('[[retention.rules]]\nname = "ct-10y"\nmodalities = ["CT"]\n')
    dry = runner.invoke(app, ["retention", "run", "--config", str(config), "--data-dir", str(data_dir)])
    assert dry.exit_code == 2
    assert dry.stderr.splitlines() == [
        f"mosaic: configuration error in {config}: retention.rules[0]: retention rule 'ct-10y' has no keep period: "
        "set keep_years_after_study and/or keep_until_patient_age"]
    config.write_text('[[retention.rules]]\nname = "ct-10y"\nmodalities = ["CT"]\nkeep_years_after_study = 10\n')
    dry = runner.invoke(app, ["retention", "dry-run", "--all", "--config", str(config), "--data-dir", str(data_dir)],
                        env={"COLUMNS": "250"})
    assert dry.exit_code == 0, dry.output
    assert "3 studies: 1 due (0 would be purged now), 0 held, 0 tier, 2 kept" in dry.output  # only the CT study


def test_an_unknown_environment_variable_is_refused_naming_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "show"], env={"MOSAIC_DICOM__PROT": "104"})
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["mosaic: configuration error in the environment (MOSAIC_DICOM__PROT): "
                                          "dicom.prot: unknown key (did you mean port?)"]
    result = runner.invoke(app, ["user", "list", "--data-dir", str(archive(tmp_path / "data"))],
                           env={"MOSAIC_DATADIR": str(tmp_path)})
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["mosaic: configuration error in the environment: MOSAIC_DATADIR: unknown "
                                          "option (did you mean MOSAIC_DATA_DIR?)"]


def test_a_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    result = mosaic("serve", "--data-dir", str(tmp_path / "data"), "--dicom-port", "70000", "--http-port", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["mosaic: configuration error in the command line: dicom.port: input "
                                          "should be less than or equal to 65535 (got 70000)"]


# --- start-up: ports in use, the data directory, the first admin --------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.create_server((LOCALHOST, 0)) as other:
        yield int(other.getsockname()[1])


@pytest.mark.parametrize("listener", ["DICOM", "HTTP"])
def test_a_port_in_use_is_one_line_and_a_failed_first_start_creates_no_admin(tmp_path: Path, taken_port: int,
                                                                             listener: str) -> None:
    data_dir = tmp_path / "data"
    ports = {"DICOM": str(taken_port), "HTTP": "0"} if listener == "DICOM" else {"DICOM": "0", "HTTP": str(taken_port)}
    failed = mosaic("serve", "--data-dir", str(data_dir), "--dicom-port", ports["DICOM"], "--http-port", ports["HTTP"])
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    assert said(failed.stderr) == [f"mosaic: data directory {data_dir}, index sqlite:///{data_dir}/index.sqlite",
                                   f"mosaic: cannot listen on {LOCALHOST}:{taken_port} ({listener}): address already "
                                   "in use"]
    node = Mosaic(Settings(data_dir=data_dir), create=False)
    try:
        assert node.identity.users() == []  # no admin with a password nobody was told
    finally:
        node.stop()

    # the next start succeeds: admin is created then, and its password printed works
    http_port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        server = subprocess.Popen([MOSAIC, "serve", "--data-dir", str(data_dir), "--dicom-port", "0", "--http-port",
                                   str(http_port)], stdout=output, stderr=subprocess.STDOUT,
                                  env=ENVIRONMENT)
    try:
        wait_until(lambda: "Press Ctrl+C" in log.read_text(), timeout=60, what="mosaic serve", process=server, log=log)
        found = re.search(r"as admin with password (\S+) ", log.read_text())
        assert found, log.read_text()
        answer = httpx.get(f"http://{LOCALHOST}:{http_port}/dicom-web/studies", auth=("admin", found.group(1)))
        assert answer.status_code == 200
    finally:
        server.terminate()
        server.wait(60)


def test_an_unusable_data_directory_is_one_line(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "data"
    not_a_folder.write_text("a file, not a folder")
    result = mosaic("serve", "--data-dir", str(not_a_folder), "--dicom-port", "0", "--http-port", "0")
    assert result.returncode == 2
    assert said(result.stderr)[-1] == f"mosaic: cannot use the data directory {not_a_folder}: not a directory"
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_a_read_only_data_directory_is_one_line(tmp_path: Path) -> None:
    read_only = tmp_path / "data"
    read_only.mkdir(mode=0o500)
    result = mosaic("serve", "--data-dir", str(read_only), "--dicom-port", "0", "--http-port", "0")
    assert result.returncode == 2
    assert said(result.stderr)[-1] == f"mosaic: cannot use the data directory {read_only}: not writable by this user"


# --- which archive a command works on -----------------------------------------------------------


def test_a_command_in_a_folder_without_an_archive_refuses_instead_of_starting_an_empty_one(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = mosaic("user", "list", cwd=elsewhere)
    assert result.returncode == 2, result.stdout + result.stderr
    folder = elsewhere / "mosaic-data"
    assert result.stderr.splitlines() == [
        f"mosaic: data directory {folder}, index sqlite:///{folder}/index.sqlite",
        f"mosaic: data directory {folder} is not set up (no index sqlite:///{folder}/index.sqlite): give the "
        "archive's data directory with --data-dir or data_dir, or set up a new archive with `mosaic init`"]
    assert list(elsewhere.iterdir()) == []  # nothing created
    for command in (["import", str(elsewhere)], ["verify"], ["hold", "list"], ["jobs", "list"],
                    ["retention", "dry-run"], ["user", "token", "admin"]):
        refused = runner.invoke(app, [*command, "--data-dir", str(folder)])
        assert refused.exit_code == 2 and "is not set up" in refused.stderr, (command, refused.output)
    assert not folder.exists()


def test_init_sets_up_an_archive_once_and_commands_say_which_one_they_use(tmp_path: Path) -> None:
    data_dir = tmp_path / "archive"
    first = runner.invoke(app, ["init", "--data-dir", str(data_dir)], env={"COLUMNS": "80"})
    assert first.exit_code == 0, first.output
    password = re.search(r"as admin with password (\S+) ", first.stdout)
    assert password, first.stdout  # on one line, whatever the terminal's width
    again = runner.invoke(app, ["init", "--data-dir", str(data_dir)])
    assert again.exit_code == 0 and "already set up: nothing changed" in again.stdout

    token = runner.invoke(app, ["user", "token", "admin", "--data-dir", str(data_dir)])
    assert token.exit_code == 0, token.output
    assert re.fullmatch(r"\S+\n", token.stdout)  # stdout: the token alone, for scripts
    assert token.stderr.splitlines() == [f"mosaic: data directory {data_dir}, index sqlite:///{data_dir}/index.sqlite"]


def test_the_index_url_is_said_with_its_password_masked(tmp_path: Path) -> None:
    config = tmp_path / "mosaic.toml"
    nobody = f"{LOCALHOST}:{free_port()}"  # no database there: the index cannot be opened
    config.write_text(f'[index]\nurl = "postgresql+psycopg://mosaic:s3cret@{nobody}/mosaic"\n')
    result = runner.invoke(app, ["user", "list", "--config", str(config), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2, result.output
    assert "s3cret" not in result.output
    said_url = f"postgresql+psycopg://mosaic:***@{nobody}/mosaic"
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == f"mosaic: data directory {tmp_path / 'data'}, index {said_url}"
    assert lines[1].startswith(f"mosaic: cannot open the index {said_url}: ") and "refused" in lines[1]

