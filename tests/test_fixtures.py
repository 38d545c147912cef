"""The test run's own servers work: PostgreSQL, the local S3 endpoint and the dcmtk tools."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, text

from tests.helpers import DCMTK_TOOLS, LOCALHOST, MotoServer, free_port, is_listening, wait_until


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind((LOCALHOST, port))
    assert not is_listening(LOCALHOST, port)


def test_postgres_url_is_a_working_sqlalchemy_url(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
            server = connection.execute(text("SHOW listen_addresses")).scalar_one()
        assert server == LOCALHOST
    finally:
        engine.dispose()


def test_fresh_postgres_url_is_an_empty_database_of_its_own(postgres_url: str, fresh_postgres_url: str) -> None:
    assert fresh_postgres_url.rsplit("/", 1)[1] != postgres_url.rsplit("/", 1)[1]
    conninfo = fresh_postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)


def test_s3_server_answers_the_s3_protocol(moto: MotoServer, s3_server: str, s3_bucket: str) -> None:
    assert s3_server == moto.endpoint_url
    client = moto.client()
    client.put_object(Bucket=s3_bucket, Key="a/b", Body=b"0123456789")
    assert client.get_object(Bucket=s3_bucket, Key="a/b", Range="bytes=2-4")["Body"].read() == b"234"
    assert [item["Key"] for item in client.list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["a/b"]


def test_each_test_gets_an_empty_bucket(moto: MotoServer, s3_bucket: str) -> None:
    assert moto.client().list_objects_v2(Bucket=s3_bucket).get("Contents", []) == []


def test_dcmtk_env_turns_nagle_off_and_the_tools_run(dcmtk: dict[str, str]) -> None:
    assert dcmtk["TCP_NODELAY"] == "1"
    for tool in DCMTK_TOOLS:
        result = subprocess.run([tool, "--version"], env=dcmtk, capture_output=True, text=True, check=False)
        assert result.returncode == 0, (tool, result.stderr)


def test_echoscu_reaches_storescp_on_loopback(dcmtk: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    scp = subprocess.Popen(
        ["storescp", "--aetitle", "STORESCP", "--output-directory", str(tmp_path), str(port)],
        env=dcmtk,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: is_listening(LOCALHOST, port), timeout=10, what="storescp", process=scp)
        result = subprocess.run(
            ["echoscu", "-aec", "STORESCP", LOCALHOST, str(port)],
            env=dcmtk,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    finally:
        scp.terminate()
        scp.wait(10)
