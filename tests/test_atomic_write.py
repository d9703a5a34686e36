"""vlscale.paths.atomic_path and its shorthands: the one way every file is written.

A new file gets the permissions of a plain ``open()`` (0666 minus the umask); a failure leaves
no temp file and the old file as it was; the callback form writes by path (pandas, torch.save).
"""

from __future__ import annotations

import os
import stat

import pytest

from vlscale.errors import ConfigError
from vlscale.paths import atomic_path, atomic_write_bytes, atomic_write_text, atomic_write_with


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one after it."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_mode_follows_the_umask_like_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    (tmp_path / "plain.txt").write_text("x")
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_bytes(tmp_path / "b.bin", b"x")
    atomic_write_with(tmp_path / "c.csv", lambda tmp: tmp.write_text("a,b\n"))
    want = 0o666 & ~mask
    assert _mode(tmp_path / "plain.txt") == want
    assert [_mode(tmp_path / n) for n in ("a.txt", "b.bin", "c.csv")] == [want] * 3


def test_text_bytes_and_callback_write_what_they_are_given(tmp_path):
    assert atomic_write_text(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff").read_bytes() == b"\x00\xff"
    pd = pytest.importorskip("pandas")
    atomic_write_with(tmp_path / "c.csv", lambda tmp: pd.DataFrame({"a": [1]}).to_csv(tmp))
    assert pd.read_csv(tmp_path / "c.csv")["a"].tolist() == [1]
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.csv"]


def test_an_exception_leaves_no_temp_file_and_the_old_file_untouched(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="half way"), atomic_path(target) as tmp:
        tmp.write_text("new, half written")
        raise RuntimeError("half way")
    assert os.listdir(tmp_path) == ["out.csv"] and target.read_text() == "old"

    def failing_writer(tmp):
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt  # not only Exception: an interrupt cleans up too

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, failing_writer)
    assert os.listdir(tmp_path) == ["out.csv"] and target.read_text() == "old"


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "t.json"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["t.json"] and target.read_text() == "old"


def test_the_temp_file_is_in_the_same_folder_and_hidden(tmp_path):
    with atomic_path(tmp_path / "r.html") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".r.html.") and tmp.exists()
        tmp.write_text("x")
    assert (tmp_path / "r.html").read_text() == "x" and not tmp.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_folder_is_a_config_error_on_the_field(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ConfigError) as err:
            atomic_write_text(folder / "r.html", "x", field="report")
        assert err.value.field == "report" and "cannot write" in str(err.value)
        with pytest.raises(PermissionError):  # no field: the OSError itself
            atomic_write_text(folder / "r.html", "x")
    finally:
        folder.chmod(0o755)
