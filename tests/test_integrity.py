"""Issue 11: damaged stores fail loudly and name the damage; user text is inert in the CLI and CSV.

Every test damages a real store on disk (a flipped byte, a missing, empty or truncated shard)
and reads it through each reader: ``PatchReader``, xarray, plain zarr over ``checked_store``,
``verify`` and ``export``.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from wsizarr import CorruptStoreError, ParameterError, export, extract, open_dataset, verify
from wsizarr._locations import parse_location
from wsizarr.store._manifest import Manifest, RunState
from wsizarr.store._reader import PatchReader
from wsizarr.store._shards import CHECKSUM_BYTES, encode_shard, has_chunk_checksums, index_size
from wsizarr.store._codecs import CODECS
from wsizarr.store._store import (
    COORDINATE_ARRAYS, MASK_CODEC, begin_run, create_store, end_planning, finalize_store, read_manifest, write_shard,
)

from .helpers import assert_one_line_error, run

SHARD = 16
KWARGS = dict(level=1, patch_size=48, per_annotation=5, shard_size=SHARD, seed=4, masks=True)
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # every control character but newline


@pytest.fixture(scope="module")
def good(tmp_path_factory, aperio_even_case) -> dict[str, Path]:
    """A finished 40-patch store (shards of 16, masks) per codec: zstd and none."""
    root = tmp_path_factory.mktemp("integrity")
    stores = {}
    for codec in ("zstd", "none"):
        stores[codec] = root / f"{codec}.zarr"
        extract(aperio_even_case.slide, aperio_even_case.annotations, stores[codec], codec=codec, **KWARGS)
    return stores


@pytest.fixture
def store(tmp_path, good) -> Path:
    """A private copy of the zstd store, to damage."""
    return Path(shutil.copytree(good["zstd"], tmp_path / "s.zarr"))


def shard_file(store: Path, shard: int, name: str = "patches") -> Path:
    return store.joinpath(name, "c", str(shard), *["0"] * (3 if name == "patches" else 2))


def patch_at(data: bytes, position: int, first_patch: int) -> int | None:
    """The patch whose chunk holds byte ``position`` of a shard file (None: the index)."""
    index = np.frombuffer(data[-index_size(SHARD):-CHECKSUM_BYTES], "<u8").reshape(SHARD, 2)
    for row, (offset, nbytes) in enumerate(index.tolist()):
        if offset <= position < offset + nbytes:
            return first_patch + row
    return None


# --- the checksum per patch ----------------------------------------------------------------


def _write(path: Path, pixels: np.ndarray, codec: str) -> None:
    """A store of ``pixels`` written the way extraction writes it: create, size, shard by shard."""
    group = create_store(path, Manifest("test", {}, SHARD, codec), patch_size=pixels.shape[1])
    n = len(pixels)
    manifest = replace(read_manifest(group), run=RunState(0, 0, 0), n_patches=n)
    writers = begin_run(group, manifest)
    writers["patches"].append({name: np.zeros(n, dtype) for name, dtype in COORDINATE_ARRAYS.items()})
    for writer in writers.values():
        writer.close()
    end_planning(group, manifest)
    for shard in range(-(-n // SHARD)):
        write_shard(group, shard, {"patches": pixels[shard * SHARD:(shard + 1) * SHARD]})
    finalize_store(group, parse_location(path))


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_encode_shard_writes_what_zarr_writes_and_reads(tmp_path, good, codec):
    pixels = np.asarray(zarr.open_group(good["none"], mode="r")["patches"][:20])  # H&E-like
    _write(tmp_path / "w.zarr", pixels, codec)
    patches = zarr.open_group(tmp_path / "w.zarr", mode="r")["patches"]
    inner = patches.metadata.codecs[0].codecs
    assert type(inner[-1]).__name__ == "Crc32cCodec" and has_chunk_checksums(patches)
    read = patches[:]  # plain zarr, which checks every chunk's crc32c
    if CODECS[codec].lossless:
        np.testing.assert_array_equal(read, pixels)
    else:
        assert np.abs(read.astype(int) - pixels).mean() < 4
    # zarr's own writer, given the same codecs, writes the very same shard bytes
    plain = zarr.create_array(tmp_path / "z.zarr", shape=(SHARD, 48, 48, 3), dtype="uint8",
                              chunks=(1, 48, 48, 3), shards=(SHARD, 48, 48, 3), serializer=inner[0],
                              compressors=inner[1:], fill_value=255)
    plain[:] = pixels[:SHARD]
    assert (tmp_path / "z.zarr" / "c" / "0" / "0" / "0" / "0").read_bytes() == encode_shard(pixels[:SHARD], SHARD, CODECS[codec].encoder())
    for name in COORDINATE_ARRAYS:  # the 1-D arrays carry checksums too
        codecs = zarr.open_group(tmp_path / "w.zarr", mode="r")[name].metadata.codecs
        assert type(codecs[-1]).__name__ == "Crc32cCodec"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_every_flipped_byte_is_caught(tmp_path, good, codec, seed):
    store = Path(shutil.copytree(good[codec], tmp_path / "s.zarr"))
    rng = np.random.default_rng(seed)
    for name, shard in [("patches", 1), ("patches", 2), ("masks", 0)]:
        path = shard_file(store, shard, name)
        original = path.read_bytes()
        for position in rng.choice(len(original), size=4, replace=False).tolist():
            damaged = bytearray(original)
            damaged[position] ^= 1 << int(rng.integers(8))
            path.write_bytes(bytes(damaged))
            patch = patch_at(original, position, shard * SHARD)
            expected = f"patch {patch} " if patch is not None else "its index fails its checksum"
            report = verify(store, sample=0)
            assert len(report.problems) == 1, (position, report.problems)
            assert f"shard {shard} of '{name}'" in report.problems[0] and expected in report.problems[0]
            with pytest.raises(CorruptStoreError, match=re.escape(expected)):
                PatchReader(store).read_shard(shard, name)
            path.write_bytes(original)
    assert verify(store, sample=0).ok


def test_a_flipped_byte_fails_verify_on_the_command_line(store):
    path = shard_file(store, 1)
    data = bytearray(path.read_bytes())
    data[5000] ^= 0x10
    path.write_bytes(bytes(data))
    result = run("verify", store, "--sample", "0", expect=1)
    assert "shard 1 of 'patches' is unreadable (patch 16 fails its checksum" in result.stdout


# --- missing, empty, truncated or damaged shards, through every reader ----------------------


def _damage(path: Path, kind: str) -> str:
    """Damage one shard file; returns what a whole-shard read says about it."""
    if kind == "missing":
        path.unlink()
        return "the shard file is missing"
    data = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
        return "the shard file is empty"
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
        return "its index fails its checksum: the file is damaged or truncated"
    if kind == "cut":  # the index survives, the bytes it points at do not
        path.write_bytes(data[: len(data) // 2] + data[-index_size(SHARD):])
        return "the shard file is truncated"
    index = np.frombuffer(data[-index_size(SHARD):-CHECKSUM_BYTES], "<u8").reshape(SHARD, 2)
    offset, nbytes = index[-1].tolist()
    damaged = bytearray(data)
    damaged[offset + nbytes // 2] ^= 0x80  # inside patch 31, the shard's last
    path.write_bytes(bytes(damaged))
    return "patch 31 fails its checksum"


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "cut", "flipped"])
def test_a_damaged_shard_fails_loudly_in_every_reader(store, kind):
    why = _damage(shard_file(store, 1), kind)
    named = f"shard 1 of 'patches' is unreadable ({why}"
    reader = PatchReader(store)
    for read in (lambda: reader.read_shard(1), lambda: reader.read_patches([0, 31])):
        with pytest.raises(CorruptStoreError, match=re.escape(named)):
            read()
    np.testing.assert_array_equal(reader.read_patches([3]), zarr.open_group(store)["patches"][3:4])
    dataset = open_dataset(store)  # dask: one chunk per shard, read whole
    for read in (lambda: dataset.patches.values, lambda: dataset.patches[16:32].load(),
                 lambda: dataset.patches[31].values):
        with pytest.raises(CorruptStoreError, match=re.escape(named)):
            read()
    assert int(dataset.patches[3].values.sum()) > 0  # the other shards still read
    checked = reader.checked_store()
    lazy = xr.open_zarr(checked, consolidated=True, chunks=None, zarr_format=3)  # without dask
    with pytest.raises(CorruptStoreError, match=re.escape(named)):
        lazy.patches.values
    with pytest.raises(CorruptStoreError, match=re.escape(named)):
        zarr.open_group(checked, mode="r")["patches"][31]  # a ranged read of one chunk
    report = verify(store, sample=0)
    assert not report.ok and any("shard 1" in p for p in report.problems)
    assert_one_line_error(run("export", store, store.parent / "out", expect=1), "shard 1 of 'patches'")
    assert_one_line_error(run("preview", store, "--out", store.parent / "p.png", "--per-label", "40", expect=1), "shard 1 of 'patches'")
    result = run("verify", store, expect=1)
    assert "shard 1" in result.stdout


@pytest.mark.parametrize("kind", ["missing", "flipped"])
def test_append_never_rewrites_a_damaged_last_shard(store, aperio_case, kind):
    path = shard_file(store, 2)  # patches 32..39: the partial last shard an append rewrites
    if kind == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 4] ^= 0x80
        path.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="shard 2 of 'patches' is unreadable"):
        extract(aperio_case.slide, aperio_case.annotations, store, append=True, **KWARGS)


# --- stores written before the checksums ----------------------------------------------------


def _drop_checksums(store: Path) -> None:
    """Rewrite ``store`` as wsizarr wrote it before chunk checksums (metadata and shards)."""
    group = zarr.open_group(store, mode="r")
    pixels = {name: np.asarray(group[name][:]) for name in ("patches", "masks")}
    codec = group.attrs["wsizarr"]["codec"]

    def strip(node: object) -> object:
        if isinstance(node, dict):
            if node.get("name") == "sharding_indexed":
                inner = node["configuration"]["codecs"]
                node["configuration"]["codecs"] = [c for c in inner if c["name"] != "crc32c"]
            return {key: strip(value) for key, value in node.items()}
        return [strip(item) for item in node] if isinstance(node, list) else node

    for document in (store / "zarr.json", store / "patches" / "zarr.json", store / "masks" / "zarr.json"):
        document.write_text(json.dumps(strip(json.loads(document.read_text()))))
    for name, values in pixels.items():
        for shard in range(-(-len(values) // SHARD)):
            encoder = CODECS[codec if name == "patches" else MASK_CODEC].encoder()
            data = encode_shard(values[shard * SHARD:(shard + 1) * SHARD], SHARD, encoder, checksums=False)
            shard_file(store, shard, name).write_bytes(data)


def test_stores_without_checksums_still_read_verify_and_append(store, aperio_case):
    expected = np.asarray(zarr.open_group(store, mode="r")["patches"][:])
    _drop_checksums(store)
    assert not has_chunk_checksums(zarr.open_group(store, mode="r")["patches"])
    reader = PatchReader(store)
    np.testing.assert_array_equal(np.concatenate([reader.read_shard(s) for s in range(3)]), expected)
    np.testing.assert_array_equal(reader.read_patches([39, 2]), expected[[39, 2]])
    np.testing.assert_array_equal(open_dataset(store).patches.values, expected)
    report = verify(store, sample=8)
    assert report.ok and report.patches_checked == 40 and report.patches_compared == 8
    extract(aperio_case.slide, aperio_case.annotations, store, append=True, **KWARGS)
    group = zarr.open_group(store, mode="r")
    assert not has_chunk_checksums(group["patches"]) and group["patches"].shape[0] > 40
    assert verify(store, sample=16).ok
    path = shard_file(store, 1)
    data = bytearray(path.read_bytes())
    data[0:4] = bytes(4)  # patch 16's zstd magic number: without checksums, only decoding tells
    path.write_bytes(bytes(data))
    problems = verify(store, sample=0).problems
    assert any("shard 1 of 'patches' is unreadable (patch 16 does not decode" in p for p in problems), problems


# --- verify --------------------------------------------------------------------------------


def test_verify_checks_every_patch_and_reports_stray_files(store):
    report = verify(store, sample=0)
    assert report.ok and report.patches_checked == 40 and report.patches_compared == 0
    assert "40 checked, 0 re-read from their slides: OK" in str(report)
    stray = shard_file(store, 1).with_name("0.1f2e3d.partial")  # what a killed LocalStore write leaves
    stray.write_bytes(b"half a shard")
    report = verify(store, sample=0)
    assert report.problems == (
        f"1 stray files in the store (first: {stray.relative_to(store).as_posix()}), e.g. left by a "
        "killed writer; delete them",
    )
    with pytest.raises(ParameterError, match="sample=-5"):
        verify(store, sample=-5)
    assert_one_line_error(run("verify", store, "--sample", "-5", expect=1), "--sample -5", "0 or more")


# --- export --------------------------------------------------------------------------------

HOSTILE = {"glomerulus": "=cmd|' /C calc'!A0", "sclerotic": "\x1b[2J\x1b]0;owned\x07@SUM(1)\x00"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, aperio_even_case) -> Path:
    """A store whose labels and slide path hold control characters and spreadsheet formulas."""
    root = tmp_path_factory.mktemp("hostile")
    slide = root / "sl\x1b[31mide\r.svs"
    shutil.copy(aperio_even_case.slide, slide)
    path = root / "h.zarr"
    extract(slide, aperio_even_case.annotations, path, label_map=HOSTILE, background=3, **KWARGS)
    return path


def test_export_metadata_cells_are_inert(tmp_path, hostile):
    out = tmp_path / "out"
    assert export(hostile, out) == 43
    text = (out / "metadata.csv").read_text()
    assert "\x00" not in text and "\x1b" not in text and "\x07" not in text
    rows = list(csv.DictReader(text.splitlines()))
    labels = {row["label"] for row in rows}
    assert labels == {"'=cmd|' /C calc'!A0", "[2J]0;owned@SUM(1)", "background"}
    assert all(not row[column].startswith(("=", "+", "-", "@")) for row in rows for column in ("file", "slide", "label"))
    assert {row["annotation_id"] for row in rows if row["label"] == "background"} == {"-1"}  # still a number
    assert all("\r" not in row["slide"] and row["slide"].endswith("sl[31mide.svs") for row in rows)


def test_export_keeps_files_it_does_not_own(tmp_path, store):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "metadata.csv").write_text("an older table")
    with pytest.raises(ParameterError, match="already holds 1 of the files export writes .first: metadata.csv"):
        export(store, out)
    assert (out / "metadata.csv").read_text() == "an older table" and len(list(out.iterdir())) == 2
    assert_one_line_error(run("export", store, out, expect=1), "metadata.csv", "--overwrite")
    result = run("export", store, out, "--overwrite")
    assert "wrote 40 png files" in result.stdout
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 42
    with pytest.raises(ParameterError, match="already holds 41 of the files"):
        export(store, out)


# --- info ----------------------------------------------------------------------------------


def test_info_escapes_control_characters(hostile):
    result = run("info", hostile)
    assert not CONTROL.search(result.stdout), repr(result.stdout)
    assert "\\x1b[2J\\x1b]0;owned\\x07@SUM(1)\\x00: " in result.stdout
    assert "sl\\x1b[31mide\\x0d.svs: 43" in result.stdout
    as_json = run("info", hostile, "--json")
    assert not CONTROL.search(as_json.stdout)
    data = json.loads(as_json.stdout)
    assert HOSTILE["sclerotic"] in data["per_label"] and data["parameters"]["label_map"] == HOSTILE
