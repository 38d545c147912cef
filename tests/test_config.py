"""Configuration: the TOML file, MOSAIC_* overrides, validation, and docs that stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from mosaic.config import DuplicatePolicy, StorageBackend, iter_options, load_settings

DOCS = Path(__file__).parent.parent / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("MOSAIC_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_ones() -> None:
    settings = load_settings()
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert (settings.dicom.ae_title, settings.dicom.port) == ("MOSAIC", 11112)
    assert settings.data_dir == Path("mosaic-data")
    assert settings.index_url.startswith("sqlite:///") and settings.index_url.endswith("mosaic-data/index.sqlite")
    assert settings.storage.backend == StorageBackend.FILESYSTEM


def test_the_documented_example_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert example is not None
    config = tmp_path / "mosaic.toml"
    config.write_text(example.group(1))
    monkeypatch.setenv("MOSAIC_CONFIG", str(config))
    settings = load_settings()
    assert settings.dicom.peers[0].ae_title == "CT01" and settings.dicom.peers[0].may_find is False
    assert settings.storage.backend == StorageBackend.S3
    assert settings.index_url.startswith("postgresql+psycopg://")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mosaic.toml"
    config.write_text('[ingest]\nduplicate_policy = "reject"\n[dicom]\nport = 104\n')
    monkeypatch.setenv("MOSAIC_CONFIG", str(config))
    monkeypatch.setenv("MOSAIC_INGEST__DUPLICATE_POLICY", "keep-new-version")
    settings = load_settings()
    assert settings.ingest.duplicate_policy == DuplicatePolicy.KEEP_NEW_VERSION
    assert settings.dicom.port == 104


def test_bad_values_are_refused_with_the_option_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mosaic.toml"
    config.write_text('[dicom]\nport = 70000\n[[dicom.peers]]\nae_title = "THIS_TITLE_IS_TOO_LONG"\n'
                      'host = "x"\nport = 104\n')
    monkeypatch.setenv("MOSAIC_CONFIG", str(config))
    with pytest.raises(ValidationError) as raised:
        load_settings()
    text = str(raised.value)
    assert "dicom.port" in text and "dicom.peers.0.ae_title" in text


def test_unknown_options_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mosaic.toml"
    config.write_text("dicom_prot = 1\n")
    monkeypatch.setenv("MOSAIC_CONFIG", str(config))
    with pytest.raises(ValidationError, match="dicom_prot"):
        load_settings()


def test_every_option_is_documented() -> None:
    documented = DOCS.read_text()
    missing = [name for name, _type, _default, _doc in iter_options() if f"`{name}`" not in documented]
    assert missing == []
    assert all(doc for _name, _type, _default, doc in iter_options() if not _name.startswith("dicom.peers"))


def test_configuration_doc_is_the_generated_one() -> None:
    from mosaic.config_docs import render

    assert DOCS.read_text() == render(), "run `mosaic config docs > docs/configuration.md`"
