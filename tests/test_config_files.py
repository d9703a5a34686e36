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
    from trainer.cli_args import _read_yaml
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


def test_bounded_parsers(tmp_path):
    """Deep nesting (in the parser or after it), huge integers and non-finite numbers are one
    ConfigError naming the file; YAML aliases that would expand exponentially cost nothing."""
    import time

    from vlscale.config_files import MAX_DEPTH

    cases = {
        "deep.json": ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests deeper"),
        "deep.toml": ("a = " + "[" * 100_000 + "]" * 100_000, "nests deeper"),
        "deep.yaml": ("a: " + "[" * 100_000 + "]" * 100_000, "nests deeper"),
        "65.yaml": ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nests deeper"),
        "cycle.yaml": ("a: &x [*x]\n", "nests deeper"),
        "digits.json": ('{"a": ' + "7" * 5000 + "}", "4300 digits"),
        "digits.toml": ("a = " + "7" * 5000, "4300 digits"),
        "inf.yaml": ("a: {b: [1, .inf]}\n", "a.b[1] must be a finite number, got inf"),
        "nan.json": ('{"a": NaN}', "a must be a finite number, got nan"),
        "inf.toml": ("[a]\nb = -inf\n", "a.b must be a finite number, got -inf"),
    }
    for name, (text, why) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as err:
            read_mapping(tmp_path / name, "grid")
        message = str(err.value)
        assert why in message and name in message and "\n" not in message, message
    at_limit = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    (tmp_path / "64.yaml").write_text(at_limit)
    assert read_mapping(tmp_path / "64.yaml")["a"] is not None
    # 9 levels of 9 aliases: 9**9 leaves if expanded; shared, they are read at once
    laughs = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    laughs += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    (tmp_path / "laughs.yaml").write_text("\n".join(laughs) + "\n")
    start = time.perf_counter()
    assert len(read_mapping(tmp_path / "laughs.yaml")) == 10
    assert time.perf_counter() - start < 2
