"""Crash safety: SIGKILL a running extraction, resume it, get the identical store."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from wsizarr import IncompleteStoreError, open_dataset, store_info

from .helpers import WSIZARR, assert_one_line_error, assert_same_store, run


def _extract_args(case, out, *extra):
    return [
        "extract", case.slide, "--annotations", case.annotations, "--out", out, "--level", "0",
        "--patch-size", "128", "--per-annotation", "100", "--shard-size", "8", "--seed", "11", *extra,
    ]


def start_and_kill(args, env=None, *, when, interval=0.005):
    """Run ``wsizarr ARGS`` and SIGKILL it as soon as ``when()`` holds (while it still runs)."""
    process = subprocess.Popen(
        [WSIZARR, *map(str, args)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not when():
        time.sleep(interval)
    assert process.poll() is None, "the extraction finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _finished(markers):
    """The shards whose done-marker is written (not a killed write's ``*.partial`` file)."""
    return [int(marker.name) for marker in markers.iterdir() if marker.name.isdigit()]


def test_sigkill_then_resume_gives_the_identical_store(tmp_path, aperio_even_case):
    reference = tmp_path / "reference.zarr"
    run(*_extract_args(aperio_even_case, reference))
    crashed = tmp_path / "crashed.zarr"
    markers = crashed / "_shards_done" / "c"
    start_and_kill(
        _extract_args(aperio_even_case, crashed, "--workers", "1"),
        when=lambda: markers.is_dir() and len(_finished(markers)) >= 3,
    )

    info = store_info(crashed)
    assert info["complete"] is False and 3 <= info["shards_done"] < info["n_shards"] == 100
    assert "INCOMPLETE" in run("info", crashed).stdout
    with pytest.raises(IncompleteStoreError):
        open_dataset(crashed)
    done_before = info["shards_done"]
    done = _finished(markers)
    assert len(done) == done_before

    def shard_file(i):
        return crashed / "patches" / "c" / str(i) / "0" / "0" / "0"

    mtimes = {i: shard_file(i).stat().st_mtime_ns for i in done}

    resumed = run(*_extract_args(aperio_even_case, crashed, "--resume"))
    assert f"({100 - done_before} of 100 shards written)" in resumed.stdout
    # the count and the rate are of this run's patches, 8 a shard
    assert f"{8 * (100 - done_before)} patches written now and {8 * done_before} already there, " in resumed.stdout
    assert_same_store(reference, crashed)
    assert {i: shard_file(i).stat().st_mtime_ns for i in done} == mtimes  # not redone
    assert len(open_dataset(crashed).patch) == 800


def test_resume_with_paths_typed_relative(tmp_path, aperio_even_case):
    """The README's way of calling it: slide, annotations and store typed relative to the
    working directory, killed, then resumed with the same relative paths; a resume naming
    another slide says which."""
    import shutil

    for name in (aperio_even_case.slide, aperio_even_case.annotations):
        shutil.copy(name, tmp_path)
    case = type(aperio_even_case)("relative", "even.svs", "even.xml")
    markers = tmp_path / "crashed.zarr" / "_shards_done" / "c"
    args = [*_extract_args(case, "crashed.zarr"), "--workers", "1"]
    process = subprocess.Popen([WSIZARR, *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    while process.poll() is None and not (markers.is_dir() and len(_finished(markers)) >= 2):
        time.sleep(0.005)
    assert process.poll() is None, "the extraction finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    shutil.copy(tmp_path / "even.svs", tmp_path / "other.svs")
    other = run(*_extract_args(type(case)("other", "other.svs", "even.xml"), "crashed.zarr", "--resume"),
                cwd=tmp_path, expect=1)
    assert_one_line_error(other, "slide 1 of the interrupted run was", str((tmp_path / "even.svs").resolve()),
                          f"now {(tmp_path / 'other.svs').resolve()}", "--overwrite")
    run(*_extract_args(case, "crashed.zarr", "--resume"), cwd=tmp_path)
    run(*_extract_args(case, "reference.zarr"), cwd=tmp_path)
    assert_same_store(tmp_path / "reference.zarr", tmp_path / "crashed.zarr")


def _kill_after(args, seconds):
    """Run ``wsizarr ARGS`` and SIGKILL it after ``seconds`` unless it finished first."""
    process = subprocess.Popen(
        [WSIZARR, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_kills_then_resume_give_the_identical_verified_store(tmp_path, aperio_even_case, seed):
    """Property: whenever the writer dies (even twice, even before the store exists), a resume
    gives the store an uninterrupted run gives, and every checksum and sampled patch verifies."""
    from wsizarr import verify

    reference = tmp_path / "reference.zarr"
    started = time.monotonic()
    run(*_extract_args(aperio_even_case, reference, "--workers", "2"))
    duration = time.monotonic() - started
    rng = np.random.default_rng(seed)
    crashed = tmp_path / "crashed.zarr"
    for _ in range(1 + seed % 2):  # odd seeds: killed again while resuming
        _kill_after(_extract_args(aperio_even_case, crashed, "--resume", "--workers", "2"),
                    rng.uniform(0.05, 1.0) * duration)
    run(*_extract_args(aperio_even_case, crashed, "--resume"))
    assert_same_store(reference, crashed)
    report = verify(crashed)
    assert report.ok, report
    assert not list(crashed.rglob("*.partial"))


def test_killed_right_after_marking_complete_then_resumed(tmp_path, aperio_even_case):
    """The last steps of a run (shard markers removed, metadata consolidated) are redone by a
    resume that finds the store already marked complete."""
    import json

    import zarr

    from wsizarr import extract

    options = dict(level=0, patch_size=64, per_annotation=4, shard_size=16, seed=2)
    reference, killed = tmp_path / "reference.zarr", tmp_path / "killed.zarr"
    for out in (reference, killed):
        extract(aperio_even_case.slide, aperio_even_case.annotations, out, **options)
    root = json.loads((killed / "zarr.json").read_text())
    root["consolidated_metadata"] = None  # as left by a kill between the two steps
    (killed / "zarr.json").write_text(json.dumps(root))
    zarr.open_group(killed, mode="r+", use_consolidated=False).create_array(
        "_shards_done", shape=(3,), dtype="uint8", chunks=(1,), fill_value=1,
    )
    extract(aperio_even_case.slide, aperio_even_case.annotations, killed, **options, resume=True)
    assert_same_store(reference, killed)
