"""The --out lock: exclusive, owner named, stale locks of dead processes on this host replaced."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from trainer.run_lock import LOCK_FILE, RunLock, read_lock
from vlscale.errors import ConfigError


def test_second_lock_refused_naming_the_owner(tmp_path):
    first = RunLock(tmp_path / "out")
    first.acquire()
    owner = read_lock(tmp_path / "out")
    assert owner["host"] == socket.gethostname() and owner["pid"] > 0
    with pytest.raises(ConfigError, match=f"in use by pid {owner['pid']}"):
        RunLock(tmp_path / "out").acquire()
    first.release()
    assert not (tmp_path / "out" / LOCK_FILE).exists()
    again = RunLock(tmp_path / "out")
    again.acquire()  # free again after release
    again.release()


def test_stale_lock_of_a_dead_process_is_replaced(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.notes and "stale" in lock.notes[0]
    assert read_lock(tmp_path)["pid"] != int(dead.stdout)
    lock.release()


def test_lock_from_another_host_is_not_taken(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(ConfigError, match=r"on elsewhere\.example"):
        RunLock(tmp_path).acquire()
