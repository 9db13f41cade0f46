"""The tile-native reader against independent decodes, OpenSlide's geometry and read_region."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tifffile
import zarr

from wsizarr import ParameterError, SlideError, extract, verify
from wsizarr.slides._slide import level0_from_level_px, open_slide, read_rgb, slide_info
from wsizarr.slides._tiles import (
    TileReader, TiledTiff, choose_reader, interpolate_like_openslide, openslide_origin, tiff_slide_info,
)

from .conftest import SLIDES, read_level_pixels, read_like_openslide, slide_rows
from .helpers import assert_one_line_error, assert_same_store, run

REAL = ["CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "wsipacker_example.tif"]


def _case_path(request, name):
    return SLIDES / name if name in REAL else request.getfixturevalue(name).slide


@pytest.mark.parametrize("name", [*REAL, "aperio_case", "aperio_even_case", "generic_case"])
def test_geometry_from_the_tiff_header_equals_openslide(request, name):
    path = _case_path(request, name)
    info, content_hash = tiff_slide_info(str(path))
    with open_slide(path) as slide:
        assert info == slide_info(slide, path)
    assert len(content_hash) == 64


def _edge_and_random_places(info, level, size, rng):
    width, height = info.level_dimensions[level]
    places = [(0, 0), (width - size // 2, height - size // 2), (-size // 3, 5), (width - 1, 0)]
    places += [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(12)]
    downsample = info.level_downsamples[level]
    return [(int(level0_from_level_px(px, downsample)), int(level0_from_level_px(py, downsample))) for px, py in places]


@pytest.mark.parametrize("name", [*REAL, "aperio_case", "generic_case"])
def test_tiles_equal_an_independent_decode_with_edges_white(request, name):
    """JPEG, JPEG 2000 (tcga) and the 4.0058 level of wsipacker; edges padded white; at whole
    downsamples also OpenSlide's read_region."""
    path = _case_path(request, name)
    info, _ = tiff_slide_info(str(path))
    rng = np.random.default_rng(0)
    with TileReader(info) as tiles:
        for level in range(info.level_count):
            for x, y in _edge_and_random_places(info, level, 96, rng):
                patch = tiles.read(level, x, y, 96)
                np.testing.assert_array_equal(patch, read_level_pixels(path, x, y, level, 96))
                if float(info.level_downsamples[level]).is_integer():
                    np.testing.assert_array_equal(patch, read_like_openslide(path, x, y, level, 96))
        width, height = info.level_dimensions[0]
        corner = tiles.read(0, width - 10, height - 10, 64)
        assert (corner[10:, :] == 255).all() and (corner[:, 10:] == 255).all()


@pytest.mark.parametrize("name", ["tcga-cr-7395-01a-01-ts1.svs", "wsipacker_example.tif", "aperio_case"])
def test_read_region_at_fractional_levels_is_the_level_interpolated_at_the_subpixel_offset(request, name):
    path = _case_path(request, name)
    info, _ = tiff_slide_info(str(path))
    rng = np.random.default_rng(1)
    (level,) = [k for k, d in enumerate(info.level_downsamples) if not float(d).is_integer()][:1]
    errors, own_errors = [], []
    with TileReader(info) as tiles, open_slide(path) as slide:
        for x, y in _edge_and_random_places(info, level, 64, rng)[4:]:
            through_openslide = read_rgb(slide, (x, y), level, (64, 64)).astype(np.float32)
            errors.append(np.abs(through_openslide - interpolate_like_openslide(tiles, level, x, y, 64)))
            own_errors.append(np.abs(through_openslide - tiles.read(level, x, y, 64)))
    assert max(e.max() for e in errors) <= 2.5  # cairo's fixed-point weights
    assert np.mean(own_errors) > 3 * np.mean(errors)  # the level's own pixels are not read_region's


def _edge_places(info, level, size):
    """Level-0 places of patches crossing every edge of a level: left of and above the slide
    (negative x, y), past its right and bottom, and the corners; each on the level's grid
    (as the planner puts patches, ``True``) and one level-0 pixel off it (``False``)."""
    width, height = info.level_dimensions[level]
    downsample = info.level_downsamples[level]
    places = []
    for px, py in [(-size // 3, 7), (9, -size // 2), (-size + 2, -size // 4), (-1, -1), (5, 11),
                   (width - size // 2, 3), (4, height - size // 3), (width - 5, height - 7)]:
        x, y = (int(level0_from_level_px(v, downsample)) for v in (px, py))
        places += [(x, y, True), (x + 1, y - 1, False)]
    return places


@pytest.mark.parametrize("name", ["tcga-cr-7395-01a-01-ts1.svs", "wsipacker_example.tif", "aperio_case"])
def test_openslide_at_negative_and_positive_offsets_is_the_model_of_it(request, name):
    """At a fractional level OpenSlide truncates a negative offset toward zero (whole level
    pixels, no interpolation on that axis) and interpolates a positive one by its sub-pixel
    rest: ``interpolate_like_openslide`` follows it at every edge of every fractional level."""
    path = _case_path(request, name)
    info, _ = tiff_slide_info(str(path))
    levels = [k for k, d in enumerate(info.level_downsamples) if not float(d).is_integer()]
    with TileReader(info) as tiles, open_slide(path) as slide:
        for level in levels:
            for x, y, _ in _edge_places(info, level, 48):
                through_openslide = read_rgb(slide, (x, y), level, (48, 48)).astype(np.float32)
                error = np.abs(through_openslide - interpolate_like_openslide(tiles, level, x, y, 48)).max()
                assert error <= 2.5, (level, x, y, error)  # cairo's fixed-point weights


def test_openslide_origin_truncates_negative_offsets_toward_zero():
    assert openslide_origin(-8, 4.0004) == (-1, 0.0)  # -1.9998: OpenSlide's -1, not floor's -2
    assert openslide_origin(-8, 4.0) == (-2, 0.0)
    assert openslide_origin(-3, 4.0004) == (0, 0.0)
    pixel, fraction = openslide_origin(9, 4.0004)
    assert pixel == 2 and fraction == pytest.approx(9 / 4.0004 - 2)


@pytest.mark.parametrize("name", [*REAL, "aperio_case", "aperio_even_case", "generic_case"])
def test_tiles_place_edge_patches_where_openslide_does(request, name):
    """Patches crossing the slide's edges (negative x, y; past the right and bottom): on the
    level's grid at whole downsamples (level 0 included) the tiles reader equals read_region
    pixel for pixel; elsewhere (fractional levels; off the grid, where OpenSlide interpolates
    or truncates) its pixels, interpolated as OpenSlide interpolates, are within 2.5 levels of
    read_region. Both readers white outside the level."""
    path = _case_path(request, name)
    info, _ = tiff_slide_info(str(path))
    with TileReader(info) as tiles:
        for level in range(info.level_count):
            whole = float(info.level_downsamples[level]).is_integer()
            for x, y, on_grid in _edge_places(info, level, 48):
                expected = read_like_openslide(path, x, y, level, 48)
                if whole and on_grid:
                    np.testing.assert_array_equal(tiles.read(level, x, y, 48), expected, err_msg=f"{level, x, y}")
                else:
                    error = np.abs(expected - interpolate_like_openslide(tiles, level, x, y, 48)).max()
                    assert error <= 2.5, (level, x, y, error)


def test_a_tiny_tile_cache_gives_the_same_pixels(aperio_case):
    info, _ = tiff_slide_info(str(aperio_case.slide))
    small = TiledTiff(str(aperio_case.slide), "small", info.level_dimensions, cache_bytes=1)
    large = TiledTiff(str(aperio_case.slide), "large", info.level_dimensions)
    for x in range(0, 3000, 450):
        np.testing.assert_array_equal(small.region(0, x, x // 2, 600, 500), large.region(0, x, x // 2, 600, 500))
    assert len(small._cache) == 1 and len(large._cache) > 1
    small.close(), large.close()


@pytest.fixture(scope="module")
def grey_tiff(tmp_path_factory):
    """A tiled greyscale TIFF: OpenSlide reads it (generic-tiff), the tile reader does not."""
    path = tmp_path_factory.mktemp("grey") / "grey.tif"
    pixels = np.random.default_rng(0).integers(0, 255, (700, 900), dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(256, 256), compression="zlib")
    return path


def test_auto_falls_back_to_openslide_and_tiles_says_why(grey_tiff, aperio_case):
    with open_slide(grey_tiff) as slide:
        info = slide_info(slide, grey_tiff)
    assert choose_reader(info, "auto") == "openslide"
    with pytest.raises(SlideError, match=r"grey.tif: tifffile finds no tiled 8-bit RGB pyramid .*reader='openslide'"):
        choose_reader(info, "tiles")
    aperio, _ = tiff_slide_info(str(aperio_case.slide))
    assert choose_reader(aperio, "auto") == "tiles"
    other_vendor = dataclasses.replace(aperio, vendor="ventana")  # overlapping tiles OpenSlide places
    assert choose_reader(other_vendor, "auto") == "openslide" and choose_reader(other_vendor, "tiles") == "tiles"
    with pytest.raises(ParameterError, match="unknown reader 'fast'; choose one of auto, tiles, openslide"):
        extract(aperio_case.slide, aperio_case.annotations, grey_tiff.with_suffix(".zarr"), reader="fast")


def _rectangle(name, x0, y0, x1, y1):
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return (
        f'<Annotation Name="{name}" Type="Rectangle" PartOfGroup="tissue"><Coordinates>'
        + "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(corners))
        + "</Coordinates></Annotation>"
    )


def test_padded_edges_on_the_jpeg2000_slide_with_both_readers(tmp_path):
    """Patches centred on the corner and edges of the JPEG 2000 slide (4443 x 3567): padded,
    flagged, white beyond the edge; both readers store the same pixels at level 0, and verify
    cross-checks them at the fractional level 1 (2.0005)."""
    xml = tmp_path / "edges.xml"
    xml.write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        + _rectangle("corner", 4400, 3530, 4486, 3604) + _rectangle("right", 4400, 1500, 4486, 1700)
        + _rectangle("bottom", 2000, 3530, 2300, 3604) + _rectangle("inside", 1000, 1000, 1300, 1300)
        + "</Annotations></ASAP_Annotations>"
    )
    slide = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
    stores = {}
    for reader in ("tiles", "openslide"):
        for level in (0, 1):
            store = tmp_path / f"{reader}-{level}.zarr"
            extract(slide, xml, store, level=level, patch_size=128, sampler="centroid", reader=reader)
            group = zarr.open_group(store, mode="r")
            assert group["padded"][:].tolist() == [True, True, True, False]
            reference = read_level_pixels if reader == "tiles" else read_like_openslide
            for i in range(4):
                x, y = int(group["x"][i]), int(group["y"][i])
                np.testing.assert_array_equal(group["patches"][i], reference(slide, x, y, level, 128))
            assert (group["patches"][0][80:, 80:] == 255).all()  # beyond the corner
            report = verify(store, sample=4)
            assert report.ok, report.problems
            stores[reader, level] = group["patches"][:]
    np.testing.assert_array_equal(stores["tiles", 0], stores["openslide", 0])
    assert not np.array_equal(stores["tiles", 1], stores["openslide", 1])  # 2.0005: interpolated


def test_verify_rereads_with_the_reader_that_wrote_the_store(tmp_path, aperio_case):
    store = tmp_path / "fractional.zarr"
    extract(aperio_case.slide, aperio_case.annotations, store, level=1, patch_size=64, per_annotation=4)
    group = zarr.open_group(store, mode="a")
    assert slide_rows(store)[0]["reader"] == "tiles"
    assert verify(store, sample=16).ok
    group["slides/reader"][0] = "openslide"  # as if OpenSlide had written these pixels: it did not
    report = verify(store, sample=16)
    assert not report.ok
    assert "differs from its slide read with openslide" in report.problems[0]


@pytest.mark.parametrize(
    "options",
    [
        dict(sampler="jitter", level=1, masks=True),
        dict(sampler="centroid", level=2, patch_size=128),
        dict(sampler="grid", level=0, stride=96, min_overlap=0.8),
        dict(sampler="random-in-polygon", level=1, background=6),
        dict(sampler="jitter", mpp=2.0),  # between levels 1 and 2: level 1 read at 128 px, resized
        dict(sampler="jitter", magnification=2.5, drop_partial=True),
    ],
)
def test_both_readers_write_the_same_store_at_whole_downsamples(tmp_path, aperio_even_case, options):
    """Every sampler, masks, background, --mpp/--magnification resampling and edges: at
    downsamples 1, 4 and 16 the tiles and openslide readers store identical pixels."""
    groups = {}
    for reader in ("tiles", "openslide"):
        store = tmp_path / f"{reader}.zarr"
        kwargs = dict(patch_size=64, per_annotation=8, seed=2, shard_size=32) | options
        extract(aperio_even_case.slide, aperio_even_case.annotations, store, reader=reader, **kwargs)
        groups[reader] = zarr.open_group(store, mode="r")
        assert groups[reader].attrs["wsizarr"]["parameters"]["reader"] == reader
    assert_same_store(groups["tiles"], groups["openslide"], ignore_attrs=["reader"],
                      ignore_arrays=["slides/reader"])  # the reader recorded
    assert groups["tiles"]["patches"].shape[0] > 0


def test_cli_reader_option_is_recorded(tmp_path, aperio_case):
    store = tmp_path / "cli.zarr"
    args = ["extract", str(aperio_case.slide), "--annotations", str(aperio_case.annotations), "--out", str(store),
            "--level", "2", "--patch-size", "32", "--per-annotation", "2"]
    run(*args, "--reader", "openslide")
    metadata = zarr.open_group(store, mode="r").attrs["wsizarr"]
    assert metadata["parameters"]["reader"] == "openslide" and slide_rows(store)[0]["reader"] == "openslide"
    run(*args, "--overwrite")
    metadata = zarr.open_group(store, mode="r").attrs["wsizarr"]
    assert metadata["parameters"]["reader"] == "auto" and slide_rows(store)[0]["reader"] == "tiles"


def test_missing_tiles_are_white_and_transparency_is_composited(tmp_path):
    """A tile the file does not hold reads white, like OpenSlide; an RGBA slide is composited
    onto white (within 1 of OpenSlide, which round-trips through premultiplied alpha)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (512, 768, 3), dtype=np.uint8)
    sparse = tmp_path / "sparse.tif"
    tiles = (
        None if (row, column) == (1, 1) else np.ascontiguousarray(pixels[row * 256 : (row + 1) * 256, column * 256 : (column + 1) * 256])
        for row in range(2) for column in range(3)
    )
    tifffile.imwrite(sparse, tiles, shape=pixels.shape, dtype=np.uint8, tile=(256, 256), compression="zlib", photometric="rgb")
    rgba = tmp_path / "rgba.tif"
    alpha = rng.integers(0, 256, (512, 768, 1), dtype=np.uint8)
    tifffile.imwrite(rgba, np.concatenate([pixels, alpha], axis=2), tile=(256, 256), compression="zlib",
                     photometric="rgb", extrasamples=["unassalpha"])
    for path, tolerance in ((sparse, 0), (rgba, 1)):
        info, _ = tiff_slide_info(str(path))
        with TileReader(info) as tiles:
            patch = tiles.read(0, 200, 200, 200)
        with open_slide(path) as slide:
            expected = read_rgb(slide, (200, 200), 0, (200, 200))
        assert np.abs(patch.astype(int) - expected).max() <= tolerance, path.name
    info, _ = tiff_slide_info(str(sparse))
    with TileReader(info) as tiles:
        assert (tiles.read(0, 300, 300, 200)[:, :] == 255).all()  # inside the missing tile
        np.testing.assert_array_equal(tiles.read(0, 0, 0, 256), pixels[:256, :256])


def test_slide_command_shows_levels_and_the_reader_auto_picks(grey_tiff, aperio_case, tmp_path):
    with open_slide(aperio_case.slide) as slide:
        expected = slide_info(slide, aperio_case.slide)
    described = json.loads(run("slide", aperio_case.slide, "--json").stdout)
    assert described["vendor"] == "aperio" and described["auto_reader"] == "tiles"
    assert [level["dimensions"] for level in described["levels"]] == [list(d) for d in expected.level_dimensions]
    assert [level["downsample"] for level in described["levels"]] == list(expected.level_downsamples)
    assert described["levels"][1]["mpp"] == pytest.approx([m * expected.level_downsamples[1] for m in expected.mpp])
    text = run("slide", aperio_case.slide).stdout
    assert f"downsample {expected.level_downsamples[1]:.6g}" in text and "vendor      aperio" in text
    assert "auto reads it with tiles: tifffile finds a tiled 8-bit RGB pyramid" in text

    grey = run("slide", grey_tiff).stdout
    assert "vendor      generic-tiff" in grey and "mpp not recorded" in grey
    assert "auto reads it with openslide: its tiles cannot be read directly (tifffile finds no tiled 8-bit RGB" in grey
    real = json.loads(run("slide", SLIDES / "tcga-cr-7395-01a-01-ts1.svs", "--json").stdout)
    assert real["icc_profile"] is True and real["mpp"] is None and len(real["levels"]) == 2

    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00" + bytes(100))
    assert_one_line_error(run("slide", broken, expect=1), "broken.svs")
    assert_one_line_error(run("slide", tmp_path / "missing.svs", expect=1), "missing.svs")


@pytest.fixture(scope="module")
def subifd_case(tmp_path_factory):
    """An OME-TIFF pyramid as bioformats writes it: the reduced levels are SubIFDs of level 0
    (sizes floor(w / 2), so fractional downsamples), which OpenSlide does not see."""
    from wsizarr.slides._demo import write_demo_annotations, write_demo_slide

    folder = tmp_path_factory.mktemp("subifd")
    demo = write_demo_slide(folder / "demo.svs", width=3001, height=2003, n_glomeruli=4, seed=5)
    with open_slide(demo.path) as slide:
        level0 = read_rgb(slide, (0, 0), 0, slide.dimensions)
    levels = [level0]
    for _ in range(2):
        h, w = levels[-1].shape[0] // 2, levels[-1].shape[1] // 2
        levels.append(np.ascontiguousarray(levels[-1][: 2 * h : 2, : 2 * w : 2]))
    path = folder / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        options = dict(tile=(256, 256), compression="jpeg", photometric="rgb")
        tif.write(level0, subifds=2, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER",
                  metadata={"axes": "YXS"}, **options)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)
    return path, write_demo_annotations(demo, folder / "pyramid.xml"), [lv.shape[1::-1] for lv in levels]


def test_subifd_levels_are_offered_by_the_tiles_reader(subifd_case, tmp_path):
    path, annotations, sizes = subifd_case
    with open_slide(path) as slide:
        assert slide.level_count == 1  # what OpenSlide sees
    described = json.loads(run("slide", path, "--json").stdout)
    assert [tuple(level["dimensions"]) for level in described["levels"]] == sizes
    downsamples = [(sizes[0][0] / w + sizes[0][1] / h) / 2 for w, h in sizes]
    assert [level["downsample"] for level in described["levels"]] == downsamples
    assert described["auto_reader"] == "tiles" and "2 SubIFD levels OpenSlide does not see" in described["auto_reader_reason"]

    args = ["--annotations", annotations, "--level", "2", "--patch-size", "48", "--per-annotation", "6", "--seed", "3"]
    run("extract", path, *args, "--out", tmp_path / "auto.zarr")
    run("extract", path, *args, "--out", tmp_path / "tiles.zarr", "--reader", "tiles")
    assert_same_store(tmp_path / "auto.zarr", tmp_path / "tiles.zarr", ignore_attrs=["reader"])
    rows = slide_rows(tmp_path / "auto.zarr")[0]
    assert rows["reader"] == "tiles" and rows["level"] == 2
    assert list(rows["level_downsamples"][:3]) == downsamples
    stored = zarr.open_group(tmp_path / "auto.zarr", mode="r")
    with tifffile.TiffFile(path) as tif:
        level2 = tif.series[0].levels[2].asarray()
    padded = np.pad(level2, ((48, 48), (48, 48), (0, 0)), constant_values=255)
    for i in range(stored["x"].shape[0]):
        px, py = (int(np.floor(int(stored[axis][i]) / downsamples[2])) for axis in ("x", "y"))
        np.testing.assert_array_equal(stored["patches"][i], padded[py + 48 : py + 96, px + 48 : px + 96])
    assert verify(tmp_path / "auto.zarr", sample=20).ok

    refused = run("extract", path, *args, "--out", tmp_path / "os.zarr", "--reader", "openslide", expect=1)
    assert_one_line_error(refused, "pyramid.ome.tif: level 2 is a SubIFD level", "--reader tiles")
