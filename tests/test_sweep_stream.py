"""Big sweeps: counted before any work and refused over --max-points, the size and an estimated
time said first, rows streamed in grid order into a temp file renamed onto --out at the end."""

from __future__ import annotations

import os
import time
import tracemalloc

import pandas as pd
import pytest

from tests.test_plan_cli import vlscale
from vlscale.errors import ConfigError
from vlscale.plan.sweep import MAX_POINTS, Grid, check_size, expand_grid, run_sweep, write_sweep

SMALL = "base: {model: tiny-clip, global_batch: 64, samples: 1e9}\n"
HUGE = f"grid:\n  devices: {list(range(1, 5001))}\n  global_batch: {list(range(1, 4001))}\n"


def _grid(tmp_path, text: str):
    path = tmp_path / "grid.yaml"
    path.write_text(SMALL + text)
    return path


def test_grid_is_lazy_and_indexes_like_the_product():
    grid = Grid({"model": "m"}, ("a", "b", "c"), ((1, 2), ("x", "y", "z"), (True,)), {"c": 0})
    points = list(grid)
    assert len(grid) == len(points) == 6
    assert points[1] == {"model": "m", "a": 1, "b": "y", "c": 0}  # last key fastest; override
    assert [grid[i] for i in range(-6, 6)] == points + points
    assert grid[2:5] == points[2:5]
    with pytest.raises(IndexError):
        grid[6]


def test_a_twenty_million_point_grid_is_counted_not_built(tmp_path):
    path = _grid(tmp_path, HUGE)
    tracemalloc.start()
    start = time.perf_counter()
    grid = expand_grid(path)
    assert len(grid) == 20_000_000
    with pytest.raises(ConfigError) as err:
        check_size(len(grid))
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert err.value.field == "max_points" and "20,000,000" in str(err.value)
    assert "--max-points" in str(err.value)
    assert peak < 50e6 and elapsed < 10, (peak, elapsed)


def test_the_cli_refuses_a_huge_grid_in_one_line_and_writes_nothing(tmp_path):
    path = _grid(tmp_path, HUGE)
    out = tmp_path / "o.csv"
    res = vlscale("sweep", str(path), "--out", str(out), "--quiet")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: max_points: the grid has 20,000,000 points")
    assert sorted(os.listdir(tmp_path)) == ["grid.yaml"]


def test_max_points_raises_or_lowers_the_cap(tmp_path):
    path = _grid(tmp_path, "grid:\n  devices: [8, 16]\n  recipe: [clip, siglip, eva-clip]\n")
    out = tmp_path / "o.csv"
    low = vlscale("sweep", str(path), "--out", str(out), "--quiet", "--max-points", "5")
    assert low.returncode == 2 and "error: max_points: the grid has 6 points" in low.stderr
    ok = vlscale(
        "sweep", str(path), "--out", str(out), "--quiet", "--max-points", "6", "--workers", "1"
    )
    assert ok.returncode == 0, ok.stderr
    first = ok.stderr.splitlines()[0]
    assert first.startswith("sweep: 6 points; estimated") and "ms a point" in first
    assert len(pd.read_csv(out)) == 6


def test_the_help_states_the_default_cap():
    res = vlscale("sweep", "--help")
    assert f"{MAX_POINTS:,}" in res.stdout


def _points(n_devices: int = 4):
    grid = Grid(
        {"model": "tiny-clip", "global_batch": 64, "samples": 1e9},
        ("devices", "recipe", "loss_impl"),
        ((8, 16, 3, 32)[:n_devices], ("clip", "siglip"), ("gather", "ring")),
    )
    return grid


def test_rows_reach_the_temp_file_chunk_by_chunk_before_the_end(tmp_path):
    out = tmp_path / "o.csv"
    seen = []

    def on_chunk(tmp, rows_so_far):
        lines = tmp.read_text().splitlines()
        seen.append((rows_so_far, len(lines), out.exists(), tmp.parent == tmp_path))

    summary = write_sweep(_points(), out, progress=False, workers=1, on_chunk=on_chunk)
    assert summary.points == 16 and summary.planned == 9
    assert len(seen) >= 3  # the timed head, then the backend's chunks
    counts = [s[0] for s in seen]
    assert counts == sorted(counts) and counts[-1] == 16
    assert all(not final_exists and same_dir for _, _, final_exists, same_dir in seen)
    # the head holds a planned row, so the header and rows are written from the first chunk
    assert seen[0][1] == 1 + seen[0][0]
    assert [s[1] for s in seen] == [1 + c for c in counts]
    assert os.listdir(tmp_path) == ["o.csv"]


@pytest.mark.parametrize("workers", [2])
def test_the_file_is_the_same_whatever_the_backend(tmp_path, workers):
    serial, pool = tmp_path / "serial.csv", tmp_path / "pool.csv"
    write_sweep(_points(), serial, progress=False, workers=1)
    write_sweep(_points(), pool, progress=False, workers=workers)
    assert serial.read_bytes() == pool.read_bytes()
    frame = run_sweep(_points(), progress=False, workers=1)
    back = pd.read_csv(serial)
    assert list(back.columns) == list(frame.columns)
    assert back["error"].isna().tolist() == frame["error"].isna().tolist()
    assert back["step_time_s"].tolist() == pytest.approx(frame["step_time_s"].tolist(), nan_ok=True)


def test_nothing_planned_writes_nothing_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "o.csv"
    out.write_text("old results\n")
    bad = Grid({"model": "tiny-clip", "global_batch": 64}, ("devices",), ((3, 5, 7, 9, 11),))
    with pytest.raises(ConfigError) as err:
        write_sweep(bad, out, progress=False, workers=1)
    assert err.value.field == "grid" and "no configuration could be planned" in str(err.value)
    assert os.listdir(tmp_path) == ["o.csv"] and out.read_text() == "old results\n"


def test_parquet_has_the_csv_rows(tmp_path):
    pytest.importorskip("pyarrow")
    write_sweep(_points(2), tmp_path / "o.csv", progress=False, workers=1)
    write_sweep(_points(2), tmp_path / "o.parquet", progress=False, workers=1)
    csv_rows, parquet_rows = (
        pd.read_csv(tmp_path / "o.csv"),
        pd.read_parquet(tmp_path / "o.parquet"),
    )
    assert list(csv_rows.columns) == list(parquet_rows.columns) and len(parquet_rows) == 8
    assert sorted(os.listdir(tmp_path)) == ["o.csv", "o.parquet"]


def test_an_unreachable_scheduler_fails_before_any_point_is_planned(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from vlscale.plan import backends

    monkeypatch.setattr(backends, "CONNECT_TIMEOUT", "1s")
    said: list[str] = []
    with pytest.raises(ConfigError) as err:
        address = "tcp://127.0.0.1:9"
        write_sweep(_points(), tmp_path / "o.csv", scheduler=address, notify=said.append)
    assert err.value.field == "scheduler" and said == []
    assert os.listdir(tmp_path) == []
