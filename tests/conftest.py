"""Session-wide real servers for the test suite, bound to 127.0.0.1 and stopped at the end.

Fixtures:

- ``postgres_server`` (session): the running :class:`~tests.helpers.PostgresServer`.
- ``postgres_url`` (session): SQLAlchemy URL of one database shared by the session.
- ``fresh_postgres_url`` (function): SQLAlchemy URL of a new, empty database for one test.
- ``s3_server`` (session): endpoint URL of a local ``moto_server``.
- ``moto`` (session): the :class:`~tests.helpers.MotoServer` behind ``s3_server``.
- ``s3_bucket`` (function): name of a new, empty bucket on ``s3_server``.
- ``s3_storage_settings`` (function): ``StorageSettings`` for S3 on a fresh bucket (created on start-up).
- ``dcmtk`` (session): environment for dcmtk tools (``TCP_NODELAY=1``); fails when the tools are missing.

Missing system packages make these fixtures FAIL, not skip: ``make test`` installs them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mosaic.config import StorageSettings
from tests.helpers import MotoServer, PostgresServer, ServerError, dcmtk_env, new_bucket_name


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    problem = ""
    try:
        server = PostgresServer()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)  # binaries or the postgres user are missing: nothing to clean
    try:
        server.start()
    except ServerError as exc:
        problem = f"cannot start PostgreSQL for the tests: {exc}"
    if problem:
        server.stop()
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql+psycopg://mosaic@127.0.0.1:PORT/mosaic``: one database for the whole session."""
    return postgres_server.url(postgres_server.create_database("mosaic"))


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database for one test (dropped afterwards, open connections or not)."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    problem = ""
    try:
        server.start()
    except ServerError as exc:
        problem = f"cannot start moto_server (pip install 'moto[server]'): {exc}"
    if problem:
        server.stop()
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(moto: MotoServer) -> str:
    """Endpoint URL of a local S3 server (access key and secret: ``test``/``test``, region us-east-1)."""
    return moto.endpoint_url


@pytest.fixture
def s3_bucket(moto: MotoServer) -> str:
    """A new, empty bucket on the local S3 server."""
    return moto.create_bucket()


@pytest.fixture
def s3_storage_settings(moto: MotoServer) -> StorageSettings:
    """Storage settings for the S3 backend on a fresh bucket, created when the store is opened."""
    return StorageSettings(  # type: ignore[call-arg]
        backend="s3",  # type: ignore[arg-type]
        s3_endpoint_url=moto.endpoint_url,
        s3_bucket=new_bucket_name(),
        s3_access_key_id=moto.access_key_id,
        s3_secret_access_key=moto.secret_access_key,
        s3_region=moto.region,
        s3_create_bucket=True,
    )


@pytest.fixture(scope="session")
def dcmtk() -> dict[str, str]:
    """Environment for ``subprocess`` calls of dcmtk tools: ``os.environ`` plus ``TCP_NODELAY=1``."""
    try:
        return dcmtk_env()
    except ServerError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)
