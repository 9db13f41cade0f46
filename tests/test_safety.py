"""Never lose a user's data: overwrite replaces only wsizarr stores and only once the new one is
complete, resume finishes the same plan or refuses, failures are one line and resumable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from wsizarr import open_dataset, store_info, verify

from .helpers import WSIZARR, assert_one_line_error, assert_same_store, run
from .test_crash import start_and_kill



def _args(case, out, *extra):
    return ["extract", case.slide, "--annotations", case.annotations, "--out", out,
            "--patch-size", "64", "--per-annotation", "5", "--shard-size", "8", *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def slide_folder(tmp_path, aperio_even_case) -> Path:
    """A user's folder: the slide, its annotations and a notes file."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(aperio_even_case.slide, folder / "slide.svs")
    shutil.copy(aperio_even_case.annotations, folder / "slide.xml")
    (folder / "notes.txt").write_text("not wsizarr's")
    return folder


@pytest.mark.parametrize("where", ["slide-folder", "dot", "regular-file", "store-plus-user-file"])
def test_overwrite_refuses_what_is_not_a_wsizarr_store(tmp_path, slide_folder, where):
    slide, xml = slide_folder / "slide.svs", slide_folder / "slide.xml"
    cwd = None
    if where == "slide-folder":
        out = slide_folder
    elif where == "dot":
        out, cwd = ".", slide_folder
    elif where == "regular-file":
        out = slide_folder / "notes.txt"
    else:
        out = slide_folder / "mine.zarr"
        run("extract", slide, "--annotations", xml, "--out", out, "--per-annotation", "1")
        (out / "my-notes.txt").write_text("a user's file inside the store folder")
    before = _snapshot(slide_folder)
    result = run("extract", slide, "--annotations", xml, "--out", out, "--overwrite", cwd=cwd, expect=1)
    assert_one_line_error(result, "is not a wsizarr store", "choose another output location")
    assert _snapshot(slide_folder) == before


def test_a_failed_overwrite_keeps_the_old_store(tmp_path, aperio_even_case, slide_folder):
    out = tmp_path / "store.zarr"
    run(*_args(aperio_even_case, out))
    before = _snapshot(out)
    impossible = run(*_args(aperio_even_case, out, "--overwrite", "--mpp", "1e9"), expect=1)
    assert_one_line_error(impossible, "more than the whole level")
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(Path(aperio_even_case.slide).read_bytes()[:50_000])
    run("extract", corrupt, "--annotations", aperio_even_case.annotations, "--out", out, "--overwrite", expect=1)
    assert _snapshot(out) == before
    assert len(open_dataset(out).patch) == 40


def test_a_killed_overwrite_keeps_the_old_store_and_resumes_into_its_place(tmp_path, aperio_even_case):
    out = tmp_path / "store.zarr"
    run(*_args(aperio_even_case, out, "--per-annotation", "1"))
    old = _snapshot(out)
    partial = tmp_path / "store.zarr.partial.zarr"
    markers = partial / "_shards_done" / "c"
    new_args = _args(aperio_even_case, out, "--per-annotation", "60", "--seed", "3")
    start_and_kill([*new_args, "--overwrite", "--workers", "1"],
                   when=lambda: markers.is_dir() and sum(1 for _ in markers.iterdir()) >= 2)
    assert _snapshot(out) == old  # the old store is untouched while the new one is unfinished
    assert len(open_dataset(out).patch) == 8
    assert_one_line_error(run(*new_args, expect=1), "store.zarr.partial.zarr", "unfinished", "--resume")
    run(*new_args, "--resume")
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]
    reference = tmp_path.parent / f"{tmp_path.name}-reference.zarr"
    run(*_args(aperio_even_case, reference, "--per-annotation", "60", "--seed", "3"))
    assert_same_store(reference, out)
    shutil.rmtree(reference)


def test_output_files_are_never_replaced_without_overwrite(tmp_path, aperio_even_case):
    store = tmp_path / "s.zarr"
    run(*_args(aperio_even_case, store, "--per-annotation", "1"))
    for command, name in (("preview", "m.png"), ("overlay", "o.png"), ("report", "r.html")):
        path = tmp_path / name
        path.write_text("the user's own file")
        assert_one_line_error(run(command, store, "--out", path, expect=1), str(path), "exists", "--overwrite")
        assert path.read_text() == "the user's own file"
        run(command, store, "--out", path, "--overwrite")
        assert path.read_bytes()[:4] in (b"\x89PNG", b"<!DO")
        assert_one_line_error(run(command, store, "--out", tmp_path / "missing" / name, expect=1), "does not exist")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert_one_line_error(run("preview", store, "--out", tmp_path / "n.png", "--per-label", "-3", expect=1),
                          "at least 1, got -3")


def test_report_into_a_missing_folder_fails_before_extracting(tmp_path, aperio_even_case):
    out = tmp_path / "s.zarr"
    result = run(*_args(aperio_even_case, out, "--report", tmp_path / "missing" / "r.html"), expect=1)
    assert_one_line_error(result, "r.html", "does not exist")
    assert not out.exists()


def test_resume_refuses_edited_annotations(tmp_path, aperio_even_case):
    xml = tmp_path / "moved.xml"
    shutil.copy(aperio_even_case.annotations, xml)
    out = tmp_path / "s.zarr"
    markers = out / "_shards_done" / "c"
    args = ["extract", aperio_even_case.slide, "--annotations", xml, "--out", out, "--patch-size", "64",
            "--per-annotation", "100", "--shard-size", "8", "--workers", "1"]
    start_and_kill(args, when=lambda: markers.is_dir() and sum(1 for _ in markers.iterdir()) >= 2)
    text = xml.read_text()
    first = text.index('X="') + 3
    end = text.index('"', first)
    xml.write_text(text[:first] + str(float(text[first:end].replace(",", ".")) + 37) + text[end:])  # same names
    refused = run(*args, "--resume", expect=1)
    assert_one_line_error(refused, "moved.xml", "changed since the interrupted run", "--overwrite")
    assert store_info(out)["complete"] is False


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--mpp", "inf"], "--mpp must be a positive number"),
        (["--mpp", "1e9"], "more than the whole level"),
        (["--patch-size", "1000", "--level", "2"], "more than the whole level (256x192)"),
        (["--patch-size", "8000", "--level", "0"], "GiB in memory"),
        (["--seed", "-1"], "--seed must be a whole number >= 0"),
        (["--magnification", "nan"], "--magnification must be a positive number"),
    ],
    ids=["mpp-inf", "mpp-huge", "patch-larger-than-level", "shard-too-big", "negative-seed", "nan-magnification"],
)
def test_impossible_parameters_are_one_line(tmp_path, aperio_even_case, extra, fragment):
    out = tmp_path / "s.zarr"
    result = run("extract", aperio_even_case.slide, "--annotations", aperio_even_case.annotations,
                 "--out", out, *extra, expect=1)
    assert_one_line_error(result, fragment)
    assert not out.exists()


def test_recorded_level_is_the_level_used(tmp_path, aperio_even_case):
    out = tmp_path / "s.zarr"
    run(*_args(aperio_even_case, out, "--per-annotation", "1"))
    assert json.loads(run("info", out, "--json").stdout)["parameters"]["level"] == 0


def test_info_of_an_unfinished_zip_says_resume(tmp_path, aperio_even_case):
    target = tmp_path / "s.zip"
    markers = tmp_path / "s.zip.partial.zarr" / "_shards_done" / "c"
    start_and_kill(_args(aperio_even_case, target, "--per-annotation", "100", "--workers", "1"),
                   when=lambda: markers.is_dir() and any(markers.iterdir()))
    assert_one_line_error(run("info", target, expect=1), "s.zip.partial.zarr", "unfinished extraction", "--resume")


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def test_a_full_disk_is_one_line_and_the_store_resumes(tmp_path, aperio_even_case):
    """A real full filesystem: a 2 MiB tmpfs (CI runs as root), then grown to finish."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "2m")
    try:
        out = disk / "s.zarr"
        args = _args(aperio_even_case, out, "--patch-size", "128", "--per-annotation", "30", "--codec", "none")
        full = run(*args, expect=1)
        assert_one_line_error(full, "the disk is full", "--resume")
        assert store_info(out)["complete"] is False
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        run(*args, "--resume")
        assert verify(out).ok
        reference = tmp_path / "reference.zarr"
        run(*_args(aperio_even_case, reference, "--patch-size", "128", "--per-annotation", "30",
                          "--codec", "none"))
        assert_same_store(reference, out)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_sigterm_exits_quietly_and_leaves_no_workers(tmp_path, aperio_even_case, executor):
    out = tmp_path / "s.zarr"
    markers = out / "_shards_done" / "c"
    args = _args(aperio_even_case, out, "--per-annotation", "150", "--executor", executor, "--workers", "2")
    process = subprocess.Popen([WSIZARR, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (markers.is_dir() and any(markers.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.01)
    children = psutil.Process(process.pid).children(recursive=True)
    assert executor == "threads" or len(children) >= 2
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert stderr.strip().splitlines() == ["wsizarr: interrupted; finish the store with --resume"]
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"orphaned workers: {alive}"
    assert store_info(out)["complete"] is False
    run(*args, "--resume")
    assert verify(out).ok


def test_stray_partial_writes_are_removed_when_the_store_is_finished(tmp_path, aperio_even_case):
    out = tmp_path / "s.zarr"
    markers = out / "_shards_done" / "c"
    args = _args(aperio_even_case, out, "--per-annotation", "100", "--workers", "1")
    start_and_kill(args, when=lambda: markers.is_dir() and any(markers.iterdir()))
    stray = out / "patches" / "c" / "5" / "0" / "0" / f"0.{'ab' * 16}.partial"  # as zarr names them
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(os.urandom(100))
    user_file = out.parent / "keep.partial"
    user_file.write_text("not in the store")
    run(*args, "--resume")
    assert not list(out.rglob("*.partial")) and user_file.exists()


def test_a_killed_writers_temporary_files_are_the_stores_own(tmp_path, aperio_even_case):
    """A SIGKILL while zarr writes ``zarr.json`` leaves ``zarr.<uuid hex>.partial`` at the top of
    the store: the store is still wsizarr's, so a resume that starts it again (or an overwrite)
    replaces it; a user's file of another name is still refused."""
    from wsizarr._locations import parse_location
    from wsizarr.store._store import why_not_a_store

    out = tmp_path / "s.zarr"
    run(*_args(aperio_even_case, out))
    (out / f"zarr.{'cd' * 16}.partial").write_bytes(b"{")  # as zarr names it for zarr.json
    assert why_not_a_store(parse_location(str(out))) is None
    run(*_args(aperio_even_case, out, "--overwrite"))
    assert not list(out.glob("*.partial")) and verify(out, sample=0).ok
    for name in (f"zarr.{'cd' * 15}.partial", "notes.1234.partial", f"mine.{'cd' * 16}.partial"):
        (out / name).write_bytes(b"a user's")
        assert why_not_a_store(parse_location(str(out))) == f"it also holds {name}"
        (out / name).unlink()
