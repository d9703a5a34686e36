"""vlscale.config_files.read_mapping: every way a YAML / TOML / JSON file can be wrong is one
ConfigError on the caller's field that names the file; every reader of such files uses it."""

from __future__ import annotations

import pytest

from vlscale.config_files import read_mapping
from vlscale.errors import ConfigError


def _bad_files(tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "bin.yaml").write_bytes(bytes(range(128, 256)))
    (tmp_path / "nul.yaml").write_bytes(b"a: 1\x00\n")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "bad.toml").write_text("model = \n")
    (tmp_path / "bad.json").write_text('{"a": }')
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "scalar.toml.yaml").write_text("42\n")
    return {
        "missing.yaml": "no such file",
        "folder.yaml": "is a folder",
        "bin.yaml": "not a UTF-8 text file",
        "nul.yaml": "binary file",
        "bad.yaml": "not valid YAML",
        "bad.toml": "not valid TOML",
        "bad.json": "not valid JSON",
        "list.yaml": "must hold a mapping",
        "scalar.toml.yaml": "must hold a mapping",
    }


def test_every_bad_file_is_one_line_naming_field_and_file(tmp_path):
    for name, why in _bad_files(tmp_path).items():
        with pytest.raises(ConfigError) as err:
            read_mapping(tmp_path / name, "grid", "a grid file")
        message = str(err.value)
        assert err.value.field == "grid" and why in message and name in message, message
        assert "\n" not in message


def test_yaml_toml_json_and_empty_files(tmp_path):
    (tmp_path / "a.yaml").write_text("model: tiny-clip\ndevices: 8\n")
    (tmp_path / "a.toml").write_text('model = "tiny-clip"\ndevices = 8\n')
    (tmp_path / "a.json").write_text('{\n\t"model": "tiny-clip",\n\t"devices": 8\n}\n')  # tabs
    (tmp_path / "empty.yaml").write_text("")
    want = {"model": "tiny-clip", "devices": 8}
    assert [read_mapping(tmp_path / f"a.{s}") for s in ("yaml", "toml", "json")] == [want] * 3
    assert read_mapping(tmp_path / "empty.yaml") == {}


def test_plan_model_and_trainer_files_go_through_it(tmp_path):
    from trainer.config import _read_yaml
    from vlscale.plan.config import read_config_file
    from vlscale.specs.presets import resolve_model

    _bad_files(tmp_path)
    for reader, field in (
        (read_config_file, "config"),
        (resolve_model, "model"),
        (_read_yaml, "config"),
    ):
        for name in ("folder.yaml", "bin.yaml", "bad.yaml", "list.yaml"):
            with pytest.raises(ConfigError) as err:
                reader(str(tmp_path / name))
            assert err.value.field == field and name in str(err.value), (reader, name)
