"""Sweep backends: the same rows whatever runs them (this process, a process pool, Dask).

The grid is 200 configurations of the tiny-clip preset (device count × global batch × recipe /
loss), 40 of them invalid on purpose (a batch the devices do not divide, ring with CLIP), so
that error rows must also come back in place. The Dask cluster is a local one started here (two
worker processes, one thread each): it is what ``--scheduler ADDRESS`` connects to.
"""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from vlscale.errors import ConfigError
from vlscale.plan import backends
from vlscale.plan.backends import chunk_size, map_points
from vlscale.plan.sweep import run_sweep


def grid_200() -> list[dict]:
    devices = [8, 16, 32, 64, 128]
    batches = [128, 256, 512, 1024, 1536, 2048, 3072, 4096]
    variants = [
        ("clip", "gather"),
        ("siglip", "gather"),
        ("siglip", "ring"),
        ("clip", "ring"),
        ("eva-clip", "gather"),
    ]
    points = [
        dict(model="tiny-clip", devices=d, global_batch=b, recipe=r, loss_impl=i, samples=1e9)
        for (r, i), d, b in itertools.product(variants, devices, batches)
    ]
    assert len(points) == 200
    return points


@pytest.fixture(scope="module")
def serial_rows():
    return run_sweep(grid_200(), progress=False, workers=1)


def test_the_grid_has_valid_and_invalid_points(serial_rows):
    errors = serial_rows["error"].notna()
    assert 0 < errors.sum() < len(serial_rows)
    assert serial_rows.loc[errors, "error"].str.contains("loss_impl|divisible").all()


def test_process_pool_gives_the_serial_rows(serial_rows):
    rows = run_sweep(grid_200(), progress=False, workers=2)
    pd.testing.assert_frame_equal(rows, serial_rows)
    assert rows is not serial_rows and len(rows) == 200


def test_local_dask_cluster_gives_the_serial_rows(serial_rows):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        rows = run_sweep(grid_200(), progress=False, scheduler=cluster.scheduler_address)
    pd.testing.assert_frame_equal(rows, serial_rows)


def test_results_come_back_in_input_order_even_when_chunks_finish_out_of_order():
    out = map_points(_sleepy, list(range(40)), progress=False, workers=2)
    assert out == [x * x for x in range(40)]


def _sleepy(x: int) -> int:
    """The first chunk sleeps, so later chunks finish first."""
    import time

    if x < 5:
        time.sleep(0.05)
    return x * x


def test_chunks_give_every_worker_about_four_tasks():
    assert chunk_size(200, 2) == 25
    assert chunk_size(10**6, 16) == 64  # capped
    assert chunk_size(3, 8) == 1


def test_progress_never_writes_to_stdout(capfd):
    """stdout carries the command's summary (and may be piped); the bar belongs on stderr."""
    assert map_points(_sleepy, list(range(4)), progress=True, workers=1) == [0, 1, 4, 9]
    out, _ = capfd.readouterr()
    assert out == ""


def test_bad_workers_and_unreachable_scheduler_name_the_field(monkeypatch):
    with pytest.raises(ConfigError) as err:
        map_points(_sleepy, [1], workers=0)
    assert err.value.field == "workers"
    pytest.importorskip("distributed")
    monkeypatch.setattr(backends, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ConfigError) as err:
        map_points(_sleepy, [1], scheduler="tcp://127.0.0.1:9")
    assert err.value.field == "scheduler"
