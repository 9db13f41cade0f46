"""Whole-slide tiling (``--tiles``): the grid, the tissue mask it is chosen on, labels from
annotations, the tissue outline in the store, and the command line; on generated Aperio-style
slides whose tissue is known (a disc of real H&E with a hole, on glass) and on a real slide."""

from __future__ import annotations

import math
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
import tifffile
import zarr
from PIL import Image

from wsizarr import (
    ParameterError,
    extract,
    open_dataset,
    overlay,
    read_patch_table,
    verify,
)
from wsizarr.annotations._geometry import box_sums, clean_mask, outlines
from wsizarr.extraction._tiling import tissue_view_px
from wsizarr.inspect._preview import LABEL_COLOURS
from wsizarr.slides._demo import write_pyramid
from wsizarr.slides._slide import open_slide, read_rgb, resolve_resolution, slide_info
from wsizarr.slides._tiles import OpenSlideReader
from wsizarr.slides._tissue import TissueMask, clean_tissue, tissue_mask, tissue_mask_of, tissue_outlines
from wsizarr.store._manifest import read_annotations, read_table

from .conftest import SLIDES
from .helpers import assert_one_line_error, assert_same_store, run, write_rectangles

CMU = SLIDES / "CMU-1-Small-Region.svs"
WIDTH, HEIGHT = 4003, 3001  # levels 1000 x 750 and 250 x 187: downsamples 4.0015..., 16.01...
CENTRE, RADIUS, HOLE = (2000.0, 1500.0), 1300.0, 450.0  # the tissue disc and the hole in it, level 0
MPP = 0.5
MARGIN = 48.0  # level-0 px: the mask's cells are 16 px; Otsu may move the edge by a cell or two


def _distances(x0: np.ndarray, y0: np.ndarray, extent: float) -> tuple[np.ndarray, np.ndarray]:
    """The nearest and the farthest distance from the disc's centre of each square."""
    cx, cy = CENTRE
    near_x = np.clip(cx, x0, x0 + extent) - cx
    near_y = np.clip(cy, y0, y0 + extent) - cy
    far_x = np.maximum(np.abs(x0 - cx), np.abs(x0 + extent - cx))
    far_y = np.maximum(np.abs(y0 - cy), np.abs(y0 + extent - cy))
    return np.hypot(near_x, near_y), np.hypot(far_x, far_y)


@pytest.fixture(scope="module")
def disc_slide(tmp_path_factory) -> Path:
    """An Aperio-style slide (as scanners write it: level sizes floor(w/4), a thumbnail page) of
    near-white glass with a disc of real H&E (crops of CMU-1-Small-Region's densest tissue,
    flipped and turned) with a round hole of glass in it."""
    with openslide.OpenSlide(CMU) as slide:
        source = read_rgb(slide, (768, 2048), 0, (768, 768))
    rng = np.random.default_rng(0)
    pixels = np.full((HEIGHT, WIDTH, 3), 243, np.uint8)
    pixels += rng.integers(0, 6, (HEIGHT, WIDTH, 1), dtype=np.uint8)  # glass is not flat white
    texture = np.empty_like(pixels)
    for top in range(0, HEIGHT, 768):
        for left in range(0, WIDTH, 768):
            crop = np.rot90(source, int(rng.integers(4)))[:, :: 1 if rng.random() < 0.5 else -1]
            part = texture[top:top + 768, left:left + 768]
            part[:] = crop[: part.shape[0], : part.shape[1]]
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    distance = np.hypot(cols + 0.5 - CENTRE[0], rows + 0.5 - CENTRE[1])
    tissue = (distance < RADIUS) & (distance >= HOLE)
    pixels[tissue] = texture[tissue]
    path = tmp_path_factory.mktemp("tiling") / "disc.svs"
    write_pyramid(path, Image.fromarray(pixels), levels=3, downsample=4, aperio=True, mpp=MPP)
    return path


def _direct_fractions(mask: np.ndarray, downsample: float, x0: np.ndarray, y0: np.ndarray, extent: float) -> np.ndarray:
    """Each square's share of tissue, from the overlap of every mask pixel with it."""
    cols, rows = np.arange(mask.shape[1]), np.arange(mask.shape[0])
    over_x = np.clip(np.minimum(x0[:, None] + extent, (cols + 1) * downsample) - np.maximum(x0[:, None], cols * downsample), 0, None)
    over_y = np.clip(np.minimum(y0[:, None] + extent, (rows + 1) * downsample) - np.maximum(y0[:, None], rows * downsample), 0, None)
    return np.einsum("th,hw,tw->t", over_y, mask.astype(np.float64), over_x) / extent**2


def _on_the_grid(level_px: np.ndarray, downsample: float) -> np.ndarray:
    """The smallest level-0 coordinate whose floor over the downsample is each level pixel."""
    above = np.ceil(level_px * downsample).astype(np.int64)
    below = above - 1
    return np.where(np.floor(below / downsample) == level_px, below, above)


def _expected_tiles(slide: Path, mask: np.ndarray, mask_downsample: float, level: int, size: int, threshold: float):
    """The grid tiles (level-0 x, y, row by row) whose share of tissue in ``mask`` is at least
    ``threshold``: tiles of ``size`` level pixels from level pixel 0, ``size`` apart."""
    with openslide.OpenSlide(slide) as handle:
        downsample = handle.level_downsamples[level]
        width, height = handle.level_dimensions[level]
    tops, lefts = np.meshgrid(np.arange(0, height, size), np.arange(0, width, size), indexing="ij")
    lefts, tops = lefts.ravel(), tops.ravel()
    shares = _direct_fractions(mask, mask_downsample, lefts * downsample, tops * downsample, size * downsample)
    keep = shares >= threshold
    return _on_the_grid(lefts[keep], downsample), _on_the_grid(tops[keep], downsample), shares


def _stored(store) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(store, mode="r")
    return np.asarray(group["x"][:]), np.asarray(group["y"][:])


# --- the geometry ------------------------------------------------------------------------------


def test_box_sums_equal_the_overlap_of_every_pixel():
    rng = np.random.default_rng(1)
    mask = rng.random((23, 31)) < 0.5
    x0, y0 = rng.uniform(-4, 33, 300), rng.uniform(-4, 25, 300)
    side = rng.uniform(0.1, 12, 300)
    got = box_sums(mask, x0, y0, x0 + side, y0 + side)
    expected = np.array([_direct_fractions(mask, 1.0, x0[k:k + 1], y0[k:k + 1], side[k])[0] * side[k]**2 for k in range(300)])
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_clean_mask_drops_specks_and_fills_small_holes_only():
    mask = np.zeros((60, 80), bool)
    mask[5:55, 5:75] = True
    mask[10:13, 10:13] = False  # a hole of 9 px: filled
    mask[20:40, 30:60] = False  # a hole of 600 px: kept
    mask[28:31, 40:43] = True  # a speck of 9 px in the big hole: dropped
    mask[0, 79] = mask[58, 0] = True  # specks on glass: dropped
    mask[57, 40:42] = True  # 2 px touching nothing: dropped
    expected = np.zeros_like(mask)
    expected[5:55, 5:75] = True
    expected[20:40, 30:60] = False
    np.testing.assert_array_equal(clean_mask(mask, 10, 10), expected)
    kept_speck = clean_mask(mask, 9, 10)
    assert kept_speck[28:31, 40:43].all() and not kept_speck[0, 79]
    assert clean_mask(mask, 0, 0).tolist() == mask.tolist()  # nothing to drop or fill


def test_outlines_trace_the_mask_exactly():
    rng = np.random.default_rng(2)
    for _ in range(20):
        mask = rng.random((25, 33)) < rng.uniform(0.2, 0.8)
        pieces = [shapely.Polygon(exterior, holes) for exterior, holes in outlines(mask, tolerance=0)]
        rows, cols = np.nonzero(np.ones_like(mask))
        inside = np.zeros(mask.size, bool)
        for piece in pieces:
            inside |= shapely.contains_xy(piece, cols + 0.5, rows + 0.5)
        assert inside.reshape(mask.shape).tolist() == mask.tolist()
        assert sum(piece.area for piece in pieces) == mask.sum()
    assert outlines(np.zeros((4, 4), bool)) == []


def test_simplified_outlines_are_valid_polygons_close_to_the_traced_ones():
    # random masks pinch and touch corner to corner everywhere: simplified rings cross themselves
    # and GEOS used to split such a piece into a MultiPolygon (which crashed the old code on
    # mask 100 of these); every polygon must come out valid and near the exact trace
    rng = np.random.default_rng(1)
    for _ in range(200):
        mask = rng.random((rng.integers(1, 60), rng.integers(1, 60))) < rng.random()
        pieces = [shapely.Polygon(exterior, holes) for exterior, holes in outlines(mask)]
        assert all(piece.is_valid and piece.area > 0 for piece in pieces)
        traced = shapely.union_all([shapely.Polygon(e, h) for e, h in outlines(mask, tolerance=0)])
        assert traced.area == mask.sum()
        assert shapely.union_all(pieces).symmetric_difference(traced).area <= traced.length * 1.0


def test_tissue_outlines_on_a_coarser_raster_follow_the_tissue():
    rows, cols = np.mgrid[0:400, 0:600]
    radius = np.hypot(cols + 0.5 - 300, rows + 0.5 - 200)
    mask = (radius < 150) & (radius > 50)
    mask[16:24, 16:24] = mask[24:32, 24:32] = True  # two squares touching corner to corner: one piece
    tissue = TissueMask(mask, 4.0)
    for pixel_px, factor in ((0, 1), (16.0, 4), (35.0, 8)):
        pieces = tissue_outlines(tissue, pixel_px)
        polygons = [shapely.Polygon(exterior, holes) for exterior, holes in pieces]
        assert len(pieces) == 2 and all(polygon.is_valid for polygon in polygons)
        ring, squares = sorted(polygons, key=lambda polygon: -polygon.area)
        assert len(ring.interiors) == 1 and not squares.interiors
        # level-0 px^2: the squares, within a pixel of the raster along the outline
        assert abs(squares.area - 2 * 32**2) <= squares.length * 4.0 * factor
        error = 4.0 * (factor + 1)  # level-0 px: a pixel of the raster, and one of simplification
        for boundary, expected in ((ring.exterior, 150), (ring.interiors[0], 50)):
            xy = np.asarray(boundary.coords) / 4.0
            assert np.abs(np.hypot(xy[:, 0] - 300, xy[:, 1] - 200) - expected).max() * 4.0 <= error


def test_the_tissue_threshold_is_otsu_on_each_pixels_saturation():
    rng = np.random.default_rng(5)
    for case in range(6):
        view = np.repeat(rng.integers(180, 250, (90, 140, 1)), 3, axis=2).astype(np.uint8)  # grey glass
        view[20:70, 30:110] = [200, 120, 170]  # pink tissue
        view = np.clip(view + rng.integers(-25, 26, view.shape), 0, 255).astype(np.uint8)
        view[0, :case] = 0  # black pixels: saturation 0
        high, low = view.max(axis=2).astype(np.float64), view.min(axis=2).astype(np.float64)
        saturation = np.where(high > 0, (high - low) / np.maximum(high, 1), 0).astype(np.float32)
        histogram, edges = np.histogram(saturation, bins=256, range=(0, 1))
        best, threshold = -1.0, 0.0
        for t in range(1, 256):  # Otsu: the split of the histogram with most variance between
            w0, w1 = histogram[:t].sum(), histogram[t:].sum()
            if w0 and w1:
                m0 = (histogram[:t] * edges[:t]).sum() / w0
                m1 = (histogram[t:] * edges[t:-1]).sum() / w1
                if w0 * w1 * (m0 - m1) ** 2 > best:
                    best, threshold = w0 * w1 * (m0 - m1) ** 2, edges[t - 1]
        expected = saturation > max(threshold, 0.05)
        assert 0.2 < expected.mean() < 0.5
        np.testing.assert_array_equal(tissue_mask_of(view, 1400).mask, expected)


def test_the_tissue_of_a_slide_without_a_pyramid_is_read_in_strips(tmp_path, monkeypatch):
    from wsizarr.slides import _tiles

    # a generic tiled TIFF of one level, 12,000 x 8,000 px (288 MB as RGB), tissue in its middle
    pixels = np.full((8000, 12000, 3), 238, np.uint8)
    pixels[2000:6000, 3000:9000] = [200, 120, 170]
    path = tmp_path / "flat.tif"
    write_pyramid(path, Image.fromarray(pixels), levels=1, aperio=False)
    del pixels
    with open_slide(path) as handle:
        info = slide_info(handle, path)
    assert info.level_count == 1
    monkeypatch.setattr(_tiles, "_LEVEL_STRIP_BYTES", 4 << 20)  # 4 MiB: 75 strips of 108 rows
    with _tiles.TileReader(info) as reader:
        tracemalloc.start()
        try:
            tissue = tissue_mask(reader, 1000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert tissue.mask.shape == (667, 1000) and tissue.downsample == 12.0  # reduced 12x, rounded up
    expected = np.zeros((667, 1000), bool)
    expected[167:500, 250:750] = True  # level-0 rows 2000..6000 and columns 3000..9000, 12 px a pixel
    assert (tissue.mask != expected).sum() < 0.01 * expected.size  # only the edges' mixed pixels may differ
    # the tile cache (64 MiB) and a strip, never the whole level
    assert peak < 288e6 / 2, f"{peak / 1e6:.0f} MB at the peak"
    with OpenSlideReader(info) as reader:  # OpenSlide's strips: the same mask
        np.testing.assert_array_equal(tissue_mask(reader, 1000).mask, tissue.mask)


# --- tiles on the disc slide ---------------------------------------------------------------------


def test_tiles_cover_the_disc_and_leave_out_the_glass_and_the_hole(disc_slide, tmp_path):
    out = tmp_path / "disc.zarr"
    summary = extract(disc_slide, None, out, tiles=True, mpp=MPP, patch_size=256, workers=2)
    xs, ys = _stored(out)
    assert summary.n_patches == len(xs) > 0
    # against the known tissue: every tile well inside the ring is there; none on glass alone
    grid_y, grid_x = (a.ravel() * 256 for a in np.meshgrid(np.arange(12), np.arange(16), indexing="ij"))
    near, far = _distances(grid_x.astype(float), grid_y.astype(float), 256)
    inside_ring = (far <= RADIUS - MARGIN) & (near >= HOLE + MARGIN)
    on_glass = (near >= RADIUS + MARGIN) | (far <= HOLE - MARGIN)
    stored = set(zip(xs.tolist(), ys.tolist()))
    assert inside_ring.sum() > 30 and (far <= HOLE - MARGIN).sum() >= 3  # the case tests something
    assert {(x, y) for x, y in zip(grid_x[inside_ring].tolist(), grid_y[inside_ring].tolist())} <= stored
    assert not {(x, y) for x, y in zip(grid_x[on_glass].tolist(), grid_y[on_glass].tolist())} & stored
    # against the mask it was planned on: exactly the tiles whose share of tissue is >= 0.5
    with open_slide(disc_slide) as handle:
        info = slide_info(handle, disc_slide)
        resolution = resolve_resolution(info, 256, mpp=MPP)
        with OpenSlideReader(info) as reader:  # OpenSlide's pixels: the same as the tiles reader's
            tissue = clean_tissue(tissue_mask(reader, tissue_view_px(info, resolution)), 256.0**2, 256.0**2)
    expected_x, expected_y, _ = _expected_tiles(disc_slide, tissue.mask, tissue.downsample, 0, 256, 0.5)
    np.testing.assert_array_equal(xs, expected_x)
    np.testing.assert_array_equal(ys, expected_y)
    # OpenSlide as the reader (its own view of the coarsest level): the same tiles
    extract(disc_slide, None, tmp_path / "openslide.zarr", tiles=True, mpp=MPP, patch_size=256, reader="openslide",
            quality=False)
    np.testing.assert_array_equal(np.stack(_stored(tmp_path / "openslide.zarr")), np.stack((xs, ys)))
    # the pixels agree: tiles are tissue, as measured on what was extracted
    fractions = np.asarray(zarr.open_group(out, mode="r")["tissue_fraction"][:])
    assert np.median(fractions) > 0.8
    report = verify(out, sample=16)
    assert report.ok, report.problems


def test_tiles_from_a_mask_image_at_a_fractional_level_equal_a_direct_computation(disc_slide, tmp_path):
    # the mask: the known ring, drawn at 1/8 of the slide (no resize: 500 x 375 fits it)
    mask = np.zeros((375, 500), bool)
    rows, cols = np.mgrid[:375, :500]
    scale = WIDTH / 500
    distance = np.hypot((cols + 0.5) * scale - CENTRE[0], (rows + 0.5) * scale - CENTRE[1])
    mask[(distance < RADIUS) & (distance >= HOLE)] = True
    image = tmp_path / "ring.png"
    Image.fromarray(mask.astype(np.uint8) * 200).save(image)
    out = tmp_path / "ring.zarr"
    extract(disc_slide, None, out, tiles=True, level=1, patch_size=48, stride=40, tissue_mask=image,
            tile_min_tissue=0.75, max_hole_area=0, min_tissue_area=0, workers=2, quality=False)
    xs, ys = _stored(out)
    # stride 40 < 48: overlapping tiles; the grid steps 40 level-1 pixels
    with openslide.OpenSlide(disc_slide) as handle:
        downsample = handle.level_downsamples[1]
        width, height = handle.level_dimensions[1]
    assert downsample % 1 != 0
    tops, lefts = np.meshgrid(np.arange(0, height, 40), np.arange(0, width, 40), indexing="ij")
    lefts, tops = lefts.ravel(), tops.ravel()
    shares = _direct_fractions(mask, scale, lefts * downsample, tops * downsample, 48 * downsample)
    keep = shares >= 0.75
    np.testing.assert_array_equal(xs, _on_the_grid(lefts[keep], downsample))
    np.testing.assert_array_equal(ys, _on_the_grid(tops[keep], downsample))
    assert np.all(np.floor(xs / downsample) % 40 == 0)
    assert verify(out, sample=8).ok


def test_a_tiff_mask_of_another_shape_is_stretched_over_the_slide(disc_slide, tmp_path):
    image = np.zeros((90, 90), np.uint8)
    image[:, :45] = 1  # the left half of whatever it covers: non-zero is tissue, however dim
    tifffile.imwrite(tmp_path / "left.tif", image)
    out = tmp_path / "left.zarr"
    extract(disc_slide, None, out, tiles=True, patch_size=256, tissue_mask=tmp_path / "left.tif", quality=False)
    xs, ys = _stored(out)
    half = WIDTH / 2
    assert xs.max() + 128 <= half  # centres in the left half only
    assert set(xs.tolist()) == {x for x in range(0, WIDTH, 256) if min(x + 256, half) - x >= 128}
    assert set(ys.tolist()) == set(range(0, HEIGHT, 256))  # every row: the mask spans the height


def test_annotations_label_the_tiles_and_can_restrict_them(disc_slide, tmp_path):
    boxes = [(700, 300, 1700, 1100), (1500, 900, 3300, 1700), (2600, 2000, 3000, 2400)]
    xml = write_rectangles(tmp_path / "disc.xml", boxes, ["tumour", "stroma", "_2"])
    out = tmp_path / "labelled.zarr"
    summary = extract(disc_slide, xml, out, tiles=True, patch_size=256, exclude_labels=["_2"], masks=True, workers=2)
    assert summary.dropped_excluded >= 2
    table = read_patch_table(out)
    names = table.label_names
    assert {"tumour", "stroma", "background", "tissue"} <= set(names)
    centres_x, centres_y = table.x + 128.0, table.y + 128.0

    def inside(box):
        x0, y0, x1, y1 = box
        return (centres_x >= x0) & (centres_x <= x1) & (centres_y >= y0) & (centres_y <= y1)

    stroma, tumour = inside(boxes[1]), inside(boxes[0]) & ~inside(boxes[1])  # the later one wins
    assert tumour.sum() > 0 and stroma.sum() > 0
    assert (table.label[stroma] == names.index("stroma")).all() and (table.annotation_id[stroma] == 1).all()
    assert (table.label[tumour] == names.index("tumour")).all() and (table.annotation_id[tumour] == 0).all()
    rest = ~stroma & ~tumour
    assert (table.label[rest] == names.index("background")).all() and (table.annotation_id[rest] == -1).all()
    assert not inside(boxes[2]).any()  # centred in the exclusion: left out
    # the masks paint the tissue outline under the annotations (codes + 1)
    masks = np.asarray(zarr.open_group(out, mode="r")["masks"][:])
    near, far = _distances(table.x.astype(float), table.y.astype(float), 256)
    touches = np.zeros(len(table.x), bool)
    for x0, y0, x1, y1 in boxes:
        touches |= (table.x < x1) & (table.x + 256 > x0) & (table.y < y1) & (table.y + 256 > y0)
    plain = np.flatnonzero(~touches & (far <= RADIUS - MARGIN) & (near >= HOLE + MARGIN))
    assert len(plain) and (masks[plain] == names.index("tissue") + 1).mean() > 0.99
    # within the annotations only: the labelled tiles, the same
    within = tmp_path / "within.zarr"
    extract(disc_slide, xml, within, tiles=True, patch_size=256, exclude_labels=["_2"], within_annotations=True,
            quality=False)
    restricted = read_patch_table(within)
    assert set(zip(restricted.x.tolist(), restricted.y.tolist())) == set(
        zip(table.x[~rest].tolist(), table.y[~rest].tolist())
    )


def test_the_tissue_outline_is_stored_and_drawn(disc_slide, tmp_path):
    out = tmp_path / "outline.zarr"
    extract(disc_slide, None, out, tiles=True, patch_size=256, quality=False)
    group = zarr.open_group(out, mode="r")
    names = list(group.attrs["wsizarr"]["label_names"])
    assert names == ["tissue"]  # no annotations: the tiles are unlabelled, the outline is tissue
    assert (np.asarray(group["label"][:]) == -1).all()
    (disc,) = read_annotations(group["annotations"], range(group["annotations/id"].shape[0]))
    assert disc.label == names.index("tissue") and not disc.exclusion
    exterior, hole = disc.rings  # one piece, one hole
    table = read_table(group["annotations"], ["type", "name"])
    assert list(table["type"]) == ["Polygon"] and list(table["name"]) == ["tissue 1"]
    radii = np.hypot(exterior[:, 0] - CENTRE[0], exterior[:, 1] - CENTRE[1])
    assert np.abs(radii - RADIUS).max() < 3 * MARGIN
    hole_radii = np.hypot(hole[:, 0] - CENTRE[0], hole[:, 1] - CENTRE[1])
    assert np.abs(hole_radii - HOLE).max() < 3 * MARGIN
    image = np.asarray(Image.open(overlay(out, tmp_path / "o.png", max_px=800)).convert("RGB"))
    tissue_colour = (image == LABEL_COLOURS[names.index("tissue")]).all(axis=2)
    rows, cols = np.nonzero(tissue_colour[40:])  # below the legend
    scale = image.shape[1] / WIDTH
    drawn = np.hypot(cols / scale - CENTRE[0], (rows + 40) / scale - CENTRE[1])
    assert ((np.abs(drawn - RADIUS) < 3 * MARGIN) | (np.abs(drawn - HOLE) < 3 * MARGIN)).mean() > 0.95
    assert (np.abs(drawn - HOLE) < 3 * MARGIN).sum() > 100  # the hole is drawn too


def test_a_tiled_store_records_its_options_and_resumes(disc_slide, aperio_case, tmp_path):
    out = tmp_path / "resume.zarr"
    first = extract(disc_slide, None, out, tiles=True, patch_size=256, quality=False, tile_min_tissue=0.9)
    again = extract(disc_slide, None, out, tiles=True, patch_size=256, quality=False, tile_min_tissue=0.9, resume=True)
    assert again.n_patches == first.n_patches and again.shards_written == 0
    parameters = zarr.open_group(out, mode="r").attrs["wsizarr"]["parameters"]
    assert parameters["tiles"] is True and parameters["tile_min_tissue"] == 0.9
    assert parameters["min_tissue_area"] == parameters["max_hole_area"] == 65536
    plain = tmp_path / "plain.zarr"
    extract(aperio_case.slide, aperio_case.annotations, plain, patch_size=64, per_annotation=2, quality=False)
    assert "tiles" not in zarr.open_group(plain, mode="r").attrs["wsizarr"]["parameters"]  # as before tiling


def test_a_cohort_with_a_folder_of_masks_skips_the_slide_without_one(disc_slide, tmp_path):
    other = shutil.copy(disc_slide, tmp_path / "other.svs")
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.full((30, 40), 255, np.uint8)).save(masks / "disc.png")
    summary = extract([disc_slide, other], None, tmp_path / "cohort.zarr", tiles=True, patch_size=512,
                      tissue_mask=masks, quality=False)
    assert summary.n_slides == 1 and summary.n_patches == math.ceil(WIDTH / 512) * math.ceil(HEIGHT / 512)
    (failure,) = summary.failed_slides
    assert "other.svs" in failure.reason and "no tissue mask named like" in failure.reason


def test_a_folder_of_slides_is_tiled_as_its_slide_files_listed(disc_slide, aperio_case, tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    shutil.copy(disc_slide, folder / "b-disc.svs")
    shutil.copy(aperio_case.slide, folder / "a-aperio.SVS")  # suffixes in any case
    (folder / "a-aperio.xml").write_text("<ASAP_Annotations/>")  # not a slide
    (folder / "data").mkdir()  # a folder (MIRAX keeps one beside its .mrxs): not a slide
    listed = extract([folder / "a-aperio.SVS", folder / "b-disc.svs"], None, tmp_path / "listed.zarr", tiles=True,
                     patch_size=256, quality=False)
    assert listed.n_slides == 2
    run("extract", folder, "--tiles", "--patch-size", "256", "--no-quality", "--out", tmp_path / "folder.zarr")
    assert_same_store(tmp_path / "listed.zarr", tmp_path / "folder.zarr")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no slides here")
    result = run("extract", empty, "--tiles", "--out", tmp_path / "none.zarr", expect=1)
    assert_one_line_error(result, "empty: no slides in it (files ending in .svs, .tif", "check the path")
    assert not (tmp_path / "none.zarr").exists()


def test_library_errors_name_the_fix(disc_slide, tmp_path):
    with pytest.raises(ParameterError, match="no annotations given.*tiles=True"):
        extract(disc_slide, None, tmp_path / "a.zarr")
    with pytest.raises(ParameterError, match="no slides given"):
        extract([], None, tmp_path / "b.zarr", tiles=True)
    with pytest.raises(ParameterError, match="tissue_mask applies to whole-slide tiling: add tiles=True"):
        extract(disc_slide, None, tmp_path / "c.zarr", tissue_mask="m.png")
    with pytest.raises(ParameterError, match="drop sampler='grid'"):
        extract(disc_slide, None, tmp_path / "d.zarr", tiles=True, sampler="grid")
    with pytest.raises(ParameterError, match="tile_min_tissue=0"):
        extract(disc_slide, None, tmp_path / "e.zarr", tiles=True, tile_min_tissue=0)
    with pytest.raises(ParameterError, match="within_annotations=True keeps the tiles in annotations"):
        extract(disc_slide, None, tmp_path / "f.zarr", tiles=True, within_annotations=True)
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ParameterError, match="no tile has tile_min_tissue=0.5 of tissue"):
        extract(disc_slide, None, tmp_path / "g.zarr", tiles=True, tissue_mask=tmp_path / "empty.png")
    assert not (tmp_path / "g.zarr").exists()  # the store it began is removed again


# --- the command line ----------------------------------------------------------------------------


def test_cli_tiles_equal_the_library_and_say_what_is_wrong(disc_slide, tmp_path):
    library = tmp_path / "library.zarr"
    extract(disc_slide, None, library, tiles=True, mpp=2.0, patch_size=64, stride=48, drop_partial=True)
    cli = tmp_path / "cli.zarr"
    result = run("extract", disc_slide, "--tiles", "--out", cli, "--mpp", "2", "--patch-size", "64",
                 "--stride", "48", "--drop-partial", "--workers", "2")
    assert "patches in" in result.stdout
    assert_same_store(library, cli)
    assert verify(cli, sample=4).ok
    (tmp_path / "notes.png").write_text("not an image")
    for arguments, fragments in [
        ((), ("no annotations given", "--annotations", "--tiles")),
        (("--tiles", "--tissue-mask", tmp_path / "notes.png"), ("notes.png", "cannot read the tissue mask")),
        (("--tiles", "--tissue-mask", tmp_path / "missing.png"), ("missing.png", "tissue mask not found")),
        (("--tissue-mask", tmp_path / "notes.png"), ("--tissue-mask applies to whole-slide tiling", "add --tiles")),
        (("--tiles", "--sampler", "grid"), ("--tiles lays its own grid", "drop --sampler grid")),
        (("--tiles", "--background", "5"), ("drop --background",)),
        (("--tiles", "--tile-min-tissue", "1.5"), ("--tile-min-tissue 1.5",)),
        (("--tiles", "--min-tissue-area", "-1"), ("--min-tissue-area -1",)),
        (("--tiles", "--within-annotations"), ("--within-annotations keeps the tiles in annotations",)),
    ]:
        failed = run("extract", disc_slide, "--out", tmp_path / "x.zarr", *arguments, expect=1)
        assert_one_line_error(failed, *fragments)
    assert not (tmp_path / "x.zarr").exists()


# --- a real slide, and a slide on S3 ----------------------------------------------------------------


def test_tiles_of_a_real_slide_lie_on_tissue(tmp_path):
    out = tmp_path / "cmu.zarr"
    summary = extract(CMU, None, out, tiles=True, mpp=0.5, patch_size=256, workers=2)
    ds = open_dataset(out)
    fractions = ds.tissue_fraction.values
    assert summary.n_patches == len(fractions) >= 25
    assert np.median(fractions) > 0.85 and fractions.min() > 0.4  # measured on the pixels extracted
    assert verify(out, sample=8).ok


def test_tiles_of_a_slide_on_s3_equal_the_local_ones(s3_server, disc_slide, tmp_path):
    import obstore
    from obstore.store import S3Store

    bucket = S3Store(s3_server.bucket, endpoint=s3_server.endpoint, access_key_id=s3_server.access_key_id,
                     secret_access_key=s3_server.secret_access_key, client_options={"allow_http": True})
    obstore.put(bucket, "tiling/disc.svs", disc_slide.read_bytes())
    local = tmp_path / "local.zarr"
    extract(disc_slide, None, local, tiles=True, patch_size=256, quality=False)
    remote = tmp_path / "remote.zarr"
    extract(s3_server.url("tiling/disc.svs"), None, remote, tiles=True, patch_size=256, quality=False,
            storage_options=s3_server.options)
    np.testing.assert_array_equal(np.stack(_stored(local)), np.stack(_stored(remote)))
    with pytest.raises(ParameterError, match=r"tiling-empty/: no slides in it \(files ending in .svs, .tif, .tiff\)"):
        extract(s3_server.url("tiling-empty/"), None, tmp_path / "none.zarr", tiles=True, storage_options=s3_server.options)
