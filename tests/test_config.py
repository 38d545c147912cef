"""Configuration: the TOML file, MOSAIC_* overrides, validation, and docs that stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mosaic.config import ConfigurationError, DuplicatePolicy, StorageBackend, iter_options, load_settings

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


def test_every_documented_example_file_loads(tmp_path: Path) -> None:
    examples = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert len(examples) >= 2
    for number, example in enumerate(examples):
        config = tmp_path / f"example{number}.toml"
        config.write_text(example)
        load_settings(config)
    rules = load_settings(tmp_path / "example1.toml").retention.rules
    assert [rule.name for rule in rules] == ["minors", "mammo-site-a", "ct-mr-7y"]


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
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert raised.value.problems == [
        f"configuration error in {config}: dicom.port: input should be less than or equal to 65535 (got 70000)",
        f"configuration error in {config}: dicom.peers[0].ae_title: AE title 'THIS_TITLE_IS_TOO_LONG' must be "
        "1-16 characters without backslash (got 'THIS_TITLE_IS_TOO_LONG')"]


def test_unknown_options_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "mosaic.toml"
    config.write_text("dicom_prot = 1\n")
    monkeypatch.setenv("MOSAIC_CONFIG", str(config))
    with pytest.raises(ConfigurationError, match="dicom_prot: unknown key"):
        load_settings()


# a typo in a permission granted it; guessed retention keys matched every study and kept none
TYPOS = """\
[dicom]
allow_unknown_calling_aes = false
[[dicom.peers]]
ae_title = "CT01"
host = "10.0.0.21"
port = 104
[[dicom.peers]]
ae_title = "MR01"
host = "10.0.0.22"
port = 104
[[dicom.peers]]
ae_title = "NM01"
host = "10.0.0.23"
port = 104
may_stor = false
[dicom.tls]
enabeld = true
[security.oidc]
isuser = "https://idp.example.org"
[[retention.rules]]
name = "ct-10y"
modality = "CT"
keep_years = 10
"""


def test_unknown_keys_are_refused_in_nested_tables_and_list_items_with_a_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "mosaic.toml"
    config.write_text(TYPOS)
    with pytest.raises(ConfigurationError) as raised:
        load_settings(config)
    where = f"configuration error in {config}"
    assert raised.value.problems == [
        f"{where}: dicom.peers[2].may_stor: unknown key (did you mean may_store?)",
        f"{where}: dicom.tls.enabeld: unknown key (did you mean enabled?)",
        f"{where}: security.oidc.isuser: unknown key (did you mean issuer?)",
        f"{where}: retention.rules[0].modality: unknown key (did you mean modalities?)",
        f"{where}: retention.rules[0].keep_years: unknown key (did you mean keep_years_after_study?)",
    ]


def test_a_retention_rule_without_a_keep_period_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "mosaic.toml"
    config.write_text('[[retention.rules]]\nname = "ct"\nmodalities = ["CT"]\n')
    with pytest.raises(ConfigurationError) as raised:
        load_settings(config)
    assert raised.value.problems == [
        f"configuration error in {config}: retention.rules[0]: retention rule 'ct' has no keep period: set "
        "keep_years_after_study and/or keep_until_patient_age"]
    config.write_text('[[retention.rules]]\nname = "ct"\nmodalities = ["CT"]\nkeep_years_after_study = 10\n'
                      '[[retention.rules]]\nname = "minors"\nkeep_until_patient_age = 25\n')
    assert [rule.keep_years_after_study for rule in load_settings(config).retention.rules] == [10, None]


def test_unknown_environment_variables_are_refused_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOSAIC_DICOM__PROT", "104")
    monkeypatch.setenv("MOSAIC_DICOMPORT", "104")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert raised.value.problems == [
        "configuration error in the environment: MOSAIC_DICOMPORT: unknown option (did you mean "
        "MOSAIC_DICOM__PORT?)"]
    monkeypatch.delenv("MOSAIC_DICOMPORT")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert raised.value.problems == [
        "configuration error in the environment (MOSAIC_DICOM__PROT): dicom.prot: unknown key (did you mean port?)"]


def test_a_broken_file_is_named_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "mosaic.toml"
    config.write_text("[dicom]\nport 104\n")
    with pytest.raises(ConfigurationError, match=rf"^configuration error in {config}: not valid TOML: .*line 2"):
        load_settings(config)
    with pytest.raises(ConfigurationError, match=r"^cannot read the configuration file .*: no such file"):
        load_settings(tmp_path / "missing.toml")


def test_every_option_is_documented() -> None:
    documented = DOCS.read_text()
    missing = [name for name, _type, _default, _doc in iter_options() if f"`{name}`" not in documented]
    assert missing == []
    assert all(doc for _name, _type, _default, doc in iter_options() if not _name.startswith("dicom.peers"))


def test_configuration_doc_is_the_generated_one() -> None:
    from mosaic.config_docs import render

    assert DOCS.read_text() == render(), "run `mosaic config docs > docs/configuration.md`"
