"""`verify` catches altered and missing shards; `export` writes sanitised loose files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import zarr
from PIL import Image

from wsizarr import ParameterError, export, extract, verify
from wsizarr.store._shards import encode_shard
from wsizarr.store._codecs import CODECS

from .conftest import ANNOTATIONS, SLIDES
from .helpers import run, write_rectangles

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


CODECS_ALL = ("zstd", "blosc-lz4", "none", "jpegxl", "jpeg")


@pytest.mark.parametrize("codec", CODECS_ALL)
def test_an_untouched_store_of_every_codec_verifies(tmp_path, aperio_even_case, codec):
    path = tmp_path / f"{codec}.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, path, codec=codec, **KWARGS)
    report = verify(path, sample=40)
    assert report.ok, report.problems
    assert report.patches_compared == 40  # every patch


@pytest.fixture(scope="module")
def cmu_jpeg_store(tmp_path_factory):
    """Real H&E (CMU-1-Small-Region) as a ``jpeg`` store: regions over most of the slide."""
    folder = tmp_path_factory.mktemp("cmu_jpeg")
    xml = write_rectangles(folder / "cmu.xml", [(100, 100, 1000, 1400), (1000, 1400, 2100, 2850)])
    path = folder / "cmu.zarr"
    extract(SLIDES / "CMU-1-Small-Region.svs", xml, path, codec="jpeg", patch_size=128, per_annotation=40,
            shard_size=16, seed=1)
    return path


def test_a_real_jpeg_store_verifies_every_patch(cmu_jpeg_store):
    report = verify(cmu_jpeg_store, sample=80)
    assert report.ok, report.problems
    assert report.patches_compared == 80


def test_appending_to_a_jpeg_store_keeps_the_earlier_patches_as_stored(tmp_path, aperio_case, aperio_even_case):
    """The last, partial shard is written again with the appended patches: its earlier patches
    are copied as stored (decoded and encoded again, a lossy codec would change them)."""
    from wsizarr.store._reader import PatchReader

    path = tmp_path / "appended.zarr"
    kwargs = {**KWARGS, "per_annotation": 3, "codec": "jpeg"}  # 24 patches: shard 1 half full
    extract(aperio_even_case.slide, aperio_even_case.annotations, path, **kwargs)
    before = PatchReader(path).read_chunks(range(16, 24))
    extract(aperio_case.slide, aperio_case.annotations, path, append=True, **kwargs)
    after = PatchReader(path).read_chunks(range(16, 24))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    report = verify(path, sample=48)
    assert report.ok, report.problems


def test_tampered_jpeg_pixels_are_caught(tmp_path, cmu_jpeg_store):
    """A patch replaced by a slightly brighter one (a JPEG well above 30 dB of the original, its
    checksum right) fails: the slide's pixels through the same codec are compared exactly."""
    import shutil

    from wsizarr.store._reader import PatchReader
    from wsizarr.store._shards import checksum, pack_shard

    path = tmp_path / "tampered.zarr"
    shutil.copytree(cmu_jpeg_store, path)
    reader = PatchReader(path)
    chunks = reader.read_chunks(range(16, 32))
    pixels = reader.read_patches([19])[0].astype(int)
    pixels[40:60, 40:60] += 4  # a faint square in patch 19
    encoded = bytes(CODECS["jpeg"].encoder().encode(np.clip(pixels, 0, 255).astype(np.uint8)))
    chunks[3] = np.frombuffer(encoded + checksum(encoded), np.uint8)
    (path / "patches" / "c" / "1" / "0" / "0" / "0").write_bytes(pack_shard(chunks, 16))
    report = verify(path, sample=80)
    assert not report.ok
    assert any("patch 19 " in p and "differs from its slide" in p for p in report.problems), report.problems


@pytest.fixture(scope="module")
def fractional_case(tmp_path_factory):
    """A generic pyramidal TIFF whose odd sizes give fractional downsamples (2.0008, 4.0037,
    8.0073), with annotations at the top-left corner and left edge (patches at negative x, y)
    and at the bottom-right corner."""
    from wsizarr.slides._demo import write_demo_slide

    folder = tmp_path_factory.mktemp("fractional")
    slide = write_demo_slide(folder / "frac.tif", width=3001, height=2003, levels=4, downsample=2,
                             aperio=False, n_glomeruli=4, seed=5)
    xml = write_rectangles(folder / "edges.xml", [(0, 0, 150, 130), (10, 1500, 90, 1900), (2850, 1880, 3001, 2003)])
    return slide.path, xml


@pytest.mark.parametrize("reader", ["tiles", "openslide"])
def test_patches_across_the_top_left_edge_at_a_fractional_level_verify(tmp_path, fractional_case, reader):
    """Level 3 (8.0073), 32-px patches, most of them at negative x or y: the cross-check's model
    of OpenSlide truncates negative offsets toward zero as OpenSlide does."""
    slide, xml = fractional_case
    path = tmp_path / "edges.zarr"
    extract(slide, xml, path, level=3, patch_size=32, per_annotation=30, shard_size=16, seed=1,
            sampler="random-in-polygon", reader=reader)
    group = zarr.open_group(path, mode="r")
    assert (np.asarray(group["x"][:]) < 0).sum() > 20 and (np.asarray(group["y"][:]) < 0).sum() > 10
    report = verify(path, sample=90)
    assert report.ok, report.problems
    assert report.patches_compared == 90


@pytest.fixture(scope="module")
def rgba_case(tmp_path_factory):
    """An RGBA generic pyramidal TIFF (zlib, unassociated alpha) whose alpha is partial nearly
    everywhere, at downsamples 1, 2.0013 and 4.0040, and annotations inside and at its edges."""
    import tifffile
    from PIL import Image

    folder = tmp_path_factory.mktemp("rgba")
    rng = np.random.default_rng(3)
    height, width = 1503, 2001
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([128 + 100 * np.sin(xx / 23.0), 100 + 80 * np.cos(yy / 17.0), 150 + 60 * np.sin((xx + yy) / 31.0)], axis=2)
    rgb = np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    alpha = np.clip(40 + 200 * xx / width + rng.normal(0, 10, (height, width)), 1, 254).astype(np.uint8)
    image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    path = folder / "rgba.tif"
    with tifffile.TiffWriter(path) as tiff:
        for level in range(3):
            if level:
                image = image.resize((image.width // 2, image.height // 2), Image.Resampling.BOX)
            tiff.write(np.asarray(image), tile=(256, 256), compression="zlib", photometric="rgb",
                       extrasamples=["unassalpha"], subfiletype=1 if level else 0, metadata=None)
    xml = write_rectangles(folder / "rgba.xml", [(0, 0, 200, 160), (700, 500, 1300, 1000), (1850, 1380, 2001, 1503)])
    return path, xml


@pytest.mark.parametrize("level", [0, 1, 2])
def test_an_rgba_slide_with_partial_alpha_verifies(tmp_path, rgba_case, level):
    """OpenSlide composites through premultiplied alpha: the cross-check allows the 1 level
    the README promises (and 1 more than the interpolation tolerance at fractional levels)."""
    slide, xml = rgba_case
    path = tmp_path / "rgba.zarr"
    extract(slide, xml, path, level=level, patch_size=48, per_annotation=20, shard_size=16, seed=2,
            sampler="random-in-polygon")
    report = verify(path, sample=60)
    assert report.ok, report.problems
    assert report.patches_compared == 60


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
