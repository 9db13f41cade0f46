"""`verify` catches altered and missing shards; `export` writes sanitised loose files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import zarr
from PIL import Image

from wsizarr import ParameterError, export, extract, verify
from wsizarr._shards import encode_shard
from wsizarr._store import CODECS

from .conftest import ANNOTATIONS, SLIDES
from .helpers import run

KWARGS = dict(level=1, patch_size=48, per_annotation=5, shard_size=16, seed=4)


@pytest.fixture
def store(tmp_path, aperio_even_case):
    path = tmp_path / "s.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, path, **KWARGS)
    return path


def test_a_good_store_verifies(store):
    report = verify(store, sample=40)
    assert report.ok and report.patches_compared == 40 and report.shards == 3
    result = run("verify", store, "--sample", "8")
    assert result.stdout.strip().endswith("OK")


def test_real_slide_store_verifies(tmp_path):
    path = tmp_path / "wsipacker.zarr"
    extract(SLIDES / "wsipacker_example.tif", ANNOTATIONS / "wsipacker_example.xml", path,
            level=2, patch_size=64, per_annotation=10)
    assert verify(path, sample=10).ok


def test_altered_pixels_are_caught(store):
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    pixels = np.asarray(group["patches"][16:32]).copy()
    pixels[3, 10:20, 10:20] = 0  # a black square in patch 19
    data = encode_shard(pixels, 16, CODECS["zstd"].encoder())
    (store / "patches" / "c" / "1" / "0" / "0" / "0").write_bytes(data)
    report = verify(store, sample=40)
    assert not report.ok and any("patch 19 " in p and "differs from its slide" in p for p in report.problems)
    result = run("verify", store, "--sample", "40", expect=1)
    assert "patch 19" in result.stdout


def test_missing_shard_and_altered_coordinates_are_caught(store):
    (store / "patches" / "c" / "2" / "0" / "0" / "0").unlink()
    report = verify(store)
    assert any("1 shard files of 'patches' missing (first: shard 2" in p for p in report.problems)
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    group["x"][0] = group["x"][0] + 4
    assert any("do not match the plan digest" in p for p in verify(store).problems)


def test_export_writes_sanitised_files_and_metadata(tmp_path, aperio_even_case):
    hostile = tmp_path / "hostile.xml"
    hostile.write_text(aperio_even_case.annotations.read_text().replace(
        'PartOfGroup="sclerotic"', 'PartOfGroup="../../evil"').replace(
        'PartOfGroup="glomerulus"', 'PartOfGroup="/etc/glom erulus"'))
    path = tmp_path / "h.zarr"
    extract(aperio_even_case.slide, hostile, path, **KWARGS)
    out = tmp_path / "export"
    count = export(path, out)
    assert count == 40
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 41 and "metadata.csv" in files
    assert not list(tmp_path.glob("evil*")) and all("/" not in f and not f.startswith(".") for f in files)
    assert all(p.parent == out for p in out.iterdir())
    with (out / "metadata.csv").open() as table:
        rows = list(csv.DictReader(table))
    first = rows[0]
    image = np.asarray(Image.open(out / first["file"]))
    np.testing.assert_array_equal(image, zarr.open_group(path, mode="r")["patches"][int(first["index"])])
    assert first["file"].startswith(aperio_even_case.slide.stem + "_")
    labels = {r["label"] for r in rows}
    assert labels and labels <= {"../../evil", "/etc/glom erulus"}  # the CSV keeps the real names
    sanitised = {"../../evil": "_evil_", "/etc/glom erulus": "_etc_glom_erulus_"}
    assert all(sanitised[r["label"]] in r["file"] for r in rows)
    only = export(path, tmp_path / "only", label="../../evil", format="jpg")
    assert 0 < only < 40 and all(p.suffix in (".jpg", ".csv") for p in (tmp_path / "only").iterdir())
    with pytest.raises(ParameterError, match="label 'nope' is not in the store"):
        export(path, tmp_path / "x", label="nope")
    result = run("export", path, tmp_path / "cli", "--format", "jpg")
    assert "wrote 40 jpg files" in result.stdout
