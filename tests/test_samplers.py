"""Samplers, resolution by microns, masks and slide edges, on planned and extracted patches."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point
from shapely.geometry import Polygon as ShapelyPolygon
from shapely.ops import unary_union

from wsizarr import Annotation, ParameterError, extract, open_dataset
from wsizarr.annotations._geometry import points_in_polygon
from wsizarr.extraction._sampling import plan_patches
from wsizarr.slides._slide import Resolution, SlideInfo, open_slide, resolve_resolution, slide_info
from wsizarr.slides._tiles import OpenSlideReader
from wsizarr.slides._tissue import TissueMask, tissue_mask
from wsizarr._text import count

from .conftest import SLIDES, read_like_openslide, slide_rows


def _slide(dims=(10000, 8000), downsamples=(1.0, 4.0, 16.0), mpp=(0.25, 0.25), power=40.0) -> SlideInfo:
    levels = tuple((int(dims[0] / d), int(dims[1] / d)) for d in downsamples)
    return SlideInfo("s.svs", "aperio", dims, levels, downsamples, mpp, power)


def _ring(cx, cy, r, n=32):
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles)])


DONUT = Annotation(0, "donut", "glom", "Polygon", _ring(3000, 3000, 1000), (_ring(3000, 3000, 500),))
SQUARE = Annotation(1, "square", "scl", "Rectangle", np.array([[6000, 1000], [7000, 1000], [7000, 2000], [6000, 2000.0]]))
DOT = Annotation(2, "dot", None, "Dot", np.array([[8000.0, 6000.0]]))


def test_centroid_centres_one_patch_on_each():
    plan = plan_patches([DONUT, SQUARE, DOT], _slide(), sampler="centroid", patch_size=200)
    assert len(plan) == 3
    np.testing.assert_array_equal(plan.x, [2900, 6400, 7900])
    np.testing.assert_array_equal(plan.y, [2900, 1400, 5900])
    assert plan.label.tolist() == [0, 1, -1]


def test_grid_keeps_tiles_mostly_inside_the_polygon():
    plan = plan_patches([SQUARE], _slide(), sampler="grid", patch_size=250, min_overlap=1.0)
    assert len(plan) == 16  # a 1000-px square tiles into 4x4 patches of 250
    assert set(plan.x.tolist()) == {6000, 6250, 6500, 6750}
    half = plan_patches([SQUARE], _slide(), sampler="grid", patch_size=250, stride=125, min_overlap=0.5)
    # stride 125: starts 6000..6875, 8 a side; the last row and column are half inside and
    # kept, the far corner only a quarter inside and dropped
    assert len(half) == 8 * 8 - 1
    donut = plan_patches([DONUT], _slide(), sampler="grid", patch_size=100, min_overlap=0.9)
    centres = np.column_stack([donut.x + 50, donut.y + 50]).astype(float)
    assert len(donut) > 100
    assert points_in_polygon(centres, DONUT.vertices, DONUT.holes).all()  # none in the hole


def test_random_in_polygon_respects_holes_and_is_reproducible():
    plan = plan_patches([DONUT], _slide(), sampler="random-in-polygon", patch_size=64, per_annotation=300, seed=4)
    centres = np.column_stack([plan.x + 32, plan.y + 32]).astype(float)
    inside = points_in_polygon(centres, DONUT.vertices, DONUT.holes)
    assert len(plan) == 300 and inside.mean() > 0.97  # centres floor to the pixel grid
    again = plan_patches([DONUT], _slide(), sampler="random-in-polygon", patch_size=64, per_annotation=300, seed=4)
    np.testing.assert_array_equal(plan.x, again.x)


def test_annotations_outside_the_slide_are_skipped_and_edges_flagged():
    outside = Annotation(3, "far", "glom", "Polygon", _ring(50000, 50000, 100))
    edge = Annotation(4, "edge", "glom", "Polygon", _ring(9990, 7990, 5))
    plan = plan_patches([outside, edge], _slide(), sampler="centroid", patch_size=256)
    assert plan.skipped_annotations == (3,)
    assert len(plan) == 1 and plan.padded.tolist() == [True]
    dropped = plan_patches([outside, edge], _slide(), sampler="centroid", patch_size=256, drop_partial=True)
    assert len(dropped) == 0 and dropped.dropped_partial == 1


@pytest.mark.parametrize(
    ("kwargs", "level", "read", "mpp"),
    [
        ({"mpp": 1.0}, 1, 256, 1.0),
        ({"mpp": 1.02}, 1, 256, 1.0),  # within tolerance: read the level as is
        ({"mpp": 2.0}, 1, 512, 2.0),  # between levels: the finer one, resized
        ({"magnification": 10}, 1, 256, 1.0),
        ({"magnification": 40}, 0, 256, 0.25),
        ({"mpp": 8.0}, 2, 512, 8.0),
        ({"level": 2}, 2, 256, 4.0),
    ],
)
def test_resolution_by_microns_or_magnification(kwargs, level, read, mpp):
    resolution = resolve_resolution(_slide(), 256, **kwargs)
    assert (resolution.level, resolution.read_size_px) == (level, read)
    assert resolution.mpp == pytest.approx(mpp)


def test_resolution_errors():
    with pytest.raises(ParameterError, match="records no microns per pixel.*choose a level"):
        resolve_resolution(_slide(mpp=None), 256, mpp=0.5)
    with pytest.raises(ParameterError, match="no objective power.*choose a level"):
        resolve_resolution(_slide(power=None), 256, magnification=20)
    with pytest.raises(ParameterError, match="finer than level 0"):
        resolve_resolution(_slide(), 256, mpp=0.1)
    # no placeholder for what the slide does not record: what was asked, the finest there is, the fix
    with pytest.raises(ParameterError) as finer:
        resolve_resolution(_slide(power=None), 256, mpp=0.1)
    assert "?" not in str(finer.value)
    assert str(finer.value) == (
        "s.svs: mpp=0.1 is finer than level 0 (0.25 mpp); ask for mpp=0.25 or coarser, or choose "
        "a level (wsizarr does not upsample)"
    )
    with pytest.raises(ParameterError, match=r"magnification=80 is finer than level 0 \(40x, 0.25 mpp\); ask for magnification=40 or less"):
        resolve_resolution(_slide(), 256, magnification=80)
    with pytest.raises(ParameterError, match=r"magnification=80 is finer than level 0 \(40x\); ask"):
        resolve_resolution(_slide(mpp=None), 256, magnification=80)
    with pytest.raises(ParameterError, match="only one of"):
        resolve_resolution(_slide(), 256, mpp=0.5, level=1)


def test_real_slide_without_mpp_suggests_level(tmp_path):
    path = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path) as slide:
        info = slide_info(slide, path)
    with pytest.raises(ParameterError, match="tcga-cr-7395-01a-01-ts1.svs: the slide records no microns"):
        resolve_resolution(info, 256, mpp=0.5)


def test_mpp_extraction_resizes_with_antialiasing(tmp_path, generic_case):
    store = tmp_path / "mpp.zarr"
    extract(generic_case.slide, generic_case.annotations, store, mpp=0.75, patch_size=64,
            per_annotation=4, sampler="jitter")  # 0.75 mpp: level 1 (0.5 mpp) read 96 px, resized
    group = zarr.open_group(store, mode="r")
    (slide,) = slide_rows(store)
    assert slide["read_size_px"] == 96 and slide["effective_mpp"] == pytest.approx(0.75)
    assert set(group["level"][:].tolist()) == {1}
    from PIL import Image

    for i in range(0, 24, 5):
        source = read_like_openslide(generic_case.slide, int(group["x"][i]), int(group["y"][i]), 1, 96)
        expected = np.asarray(Image.fromarray(source).resize((64, 64), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(group["patches"][i], expected)


def test_masks_follow_the_annotations(tmp_path, aperio_even_case):
    store = tmp_path / "masks.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, level=0, patch_size=384,
            sampler="centroid", masks=True)
    dataset = open_dataset(store)
    assert dataset["masks"].dims == ("patch", "row", "column")
    masks = dataset["masks"].values
    for i in range(masks.shape[0]):
        centre_value = masks[i, 192, 192]  # a centroid patch's centre lies in its glomerulus
        assert centre_value == dataset.label_code.values[i] + 1
        assert 0.15 < (masks[i] == centre_value).mean() < 0.7  # a ~260-px glomerulus in 384 px
        assert (masks[i] == 0).any()  # and its surroundings


def test_background_patches_come_from_tissue_outside_annotations(tmp_path, aperio_even_case):
    with open_slide(aperio_even_case.slide) as slide, OpenSlideReader(slide_info(slide, aperio_even_case.slide)) as reader:
        tissue = tissue_mask(reader)
    assert 0.3 < tissue.mask.mean() < 0.9  # an ellipse of tissue on glass
    store = tmp_path / "bg.zarr"
    summary = extract(aperio_even_case.slide, aperio_even_case.annotations, store, level=0,
                      patch_size=128, per_annotation=2, background=20, masks=True)
    dataset = open_dataset(store)
    background = dataset.where(dataset.label == "background", drop=True)
    assert summary.n_patches == 8 * 2 + 20 and background.sizes["patch"] == 20
    assert (background.annotation_id == -1).all()
    assert (background["masks"].values == 0).all()  # no annotation inside
    assert (background["patches"].values.reshape(20, -1).mean(axis=1) < 240).all()  # tissue, not glass


def test_invalid_sampler_parameters():
    with pytest.raises(ParameterError, match="unknown sampler 'spiral'"):
        plan_patches([SQUARE], _slide(), sampler="spiral")
    with pytest.raises(ParameterError, match="min_overlap"):
        plan_patches([SQUARE], _slide(), sampler="grid", min_overlap=0)
    with pytest.raises(ParameterError, match="stride"):
        plan_patches([SQUARE], _slide(), sampler="grid", stride=0)
    with pytest.raises(ParameterError, match="tissue mask"):
        plan_patches([SQUARE], _slide(), background=5)
    assert plan_patches([SQUARE], _slide(), resolution=Resolution(1, 64, 1.0), sampler="centroid").level.tolist() == [1]


# --- exclusions: areas to leave out ------------------------------------------------------------

def _excluded_centres(plan, exclusions, extent0):
    """Patch centres (level 0) strictly inside an exclusion, by shapely (not wsizarr's test)."""
    areas = [ShapelyPolygon(e.vertices, e.holes) for e in exclusions]
    centres = np.column_stack([plan.x + extent0 / 2, plan.y + extent0 / 2])
    return [tuple(c) for c in centres if any(area.contains(Point(c)) for area in areas)]


@settings(max_examples=60, deadline=None)
@given(
    sampler=st.sampled_from(["jitter", "centroid", "grid", "random-in-polygon"]),
    level=st.sampled_from([0, 1]),
    radius=st.integers(200, 1500),
    cuts=st.lists(st.tuples(st.integers(-1500, 1500), st.integers(-1500, 1500), st.integers(50, 1200), st.booleans()),
                  min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_no_sampler_centres_a_patch_inside_an_exclusion(sampler, level, radius, cuts, seed):
    annotation = Annotation(0, "region", "tumour", "Polygon", _ring(5000, 4000, radius, n=40))
    exclusions = [
        Annotation(k, f"cut {k}", "_2", "Polygon", _ring(5000 + dx, 4000 + dy, size, n=24) if round_
                   else np.array([[5000 + dx, 4000 + dy], [5000 + dx + size, 4000 + dy],
                                  [5000 + dx + size, 4000 + dy + size], [5000 + dx, 4000 + dy + size]], float))
        for k, (dx, dy, size, round_) in enumerate(cuts)
    ]
    plan = plan_patches([annotation], _slide(), sampler=sampler, resolution=Resolution(level, 64, None),
                        per_annotation=20, seed=seed, exclusions=exclusions, min_overlap=0.25)
    extent0 = 64 * _slide().level_downsamples[level]
    assert _excluded_centres(plan, exclusions, extent0) == []
    if sampler in ("jitter", "random-in-polygon"):  # drawn again, so the count is kept when room is left
        free = ShapelyPolygon(annotation.vertices).difference(unary_union([ShapelyPolygon(e.vertices) for e in exclusions]))
        if free.area > 0.2 * ShapelyPolygon(annotation.vertices).area:
            assert len(plan) == 20 and plan.dropped_excluded == 0


def test_exclusions_cut_every_sampler_and_leave_others_alone():
    cut = Annotation(0, "cut", "_2", "Polygon", _ring(3000, 3000, 600))  # over the donut's hole and inner ring
    ring_cut = Annotation(1, "ring cut", "_2", "Polygon", np.array([[3700, 2700], [4100, 2700], [4100, 3300], [3700, 3300.0]]))
    for sampler in ("jitter", "centroid", "grid", "random-in-polygon"):
        plain = plan_patches([DONUT, SQUARE], _slide(), sampler=sampler, patch_size=100, per_annotation=40, seed=3)
        cut_plan = plan_patches([DONUT, SQUARE], _slide(), sampler=sampler, patch_size=100, per_annotation=40, seed=3,
                                exclusions=[cut, ring_cut])
        assert _excluded_centres(cut_plan, [cut, ring_cut], 100) == []
        # the square is far from both: its patches are exactly those without exclusions
        np.testing.assert_array_equal(cut_plan.x[cut_plan.annotation_id == 1], plain.x[plain.annotation_id == 1])
        np.testing.assert_array_equal(cut_plan.y[cut_plan.annotation_id == 1], plain.y[plain.annotation_id == 1])
    # the donut's centroid is its hole's centre, inside `cut`: the patch moves onto the donut
    centroid = plan_patches([DONUT], _slide(), sampler="centroid", patch_size=100, exclusions=[cut])
    assert len(centroid) == 1 and centroid.dropped_excluded == 0
    centre = np.array([[centroid.x[0] + 50, centroid.y[0] + 50]], float)
    assert points_in_polygon(centre, DONUT.vertices, DONUT.holes).all()
    # a dot inside an exclusion gets no patch, and says so
    dot = plan_patches([DOT], _slide(), sampler="centroid", patch_size=100,
                       exclusions=[Annotation(0, "c", "_2", "Polygon", _ring(8000, 6000, 100))])
    assert len(dot) == 0 and dot.dropped_excluded == 1


def test_background_patches_avoid_exclusions():
    tissue = TissueMask(np.ones((80, 100), bool), 100.0)  # tissue everywhere, 100 px cells
    everywhere_but = Annotation(0, "cut", "_2", "Polygon", np.array([[0, 0], [10000, 0], [10000, 4000], [0, 4000.0]]))
    plan = plan_patches([SQUARE], _slide(), sampler="centroid", patch_size=200, background=30, tissue=tissue,
                        seed=1, exclusions=[everywhere_but])
    background = plan.annotation_id == -1
    assert background.sum() == 30
    assert (plan.y[background] >= 4000).all()  # below the excluded top half, touching none of it


def test_masks_show_exclusions_as_none(tmp_path, aperio_even_case):
    from .test_annotation_files import write_camelyon

    path = write_camelyon(tmp_path / "camelyon.xml", tumour=[(1000, 1000), (2000, 1000), (2000, 2000), (1000, 2000)],
                          other=[(2500, 1000), (2700, 1000), (2700, 1200), (2500, 1200)],
                          hole=[(1400, 1400), (1600, 1400), (1600, 1600), (1400, 1600)])
    store = tmp_path / "cut.zarr"
    summary = extract(aperio_even_case.slide, path, store, level=0, patch_size=256, sampler="grid", stride=128,
                      min_overlap=0.25, masks=True, exclude_labels=["_2"])
    # grid tiles a quarter inside the tumour but centred in the 200-px cut are left out, and said so
    assert summary.dropped_excluded > 0
    assert f"{count(summary.dropped_excluded, 'patch')} centred in exclusions dropped" in str(summary)
    dataset = open_dataset(store)
    assert set(dataset.label.values.tolist()) == {"_0", "_1"}
    xs, ys, masks = dataset.x.values, dataset.y.values, dataset["masks"].values
    rows, cols = np.mgrid[0:256, 0:256]
    seen_cut = False
    for x, y, mask in zip(xs, ys, masks):
        in_cut = (cols + x >= 1400) & (cols + x < 1600) & (rows + y >= 1400) & (rows + y < 1600)
        in_tumour = (cols + x >= 1000) & (cols + x < 2000) & (rows + y >= 1000) & (rows + y < 2000)
        inner = in_cut & np.roll(in_cut, 2, 0) & np.roll(in_cut, -2, 0) & np.roll(in_cut, 2, 1) & np.roll(in_cut, -2, 1)
        assert (mask[inner] == 0).all()  # the exclusion is "none"
        seen_cut |= bool(inner.any())
        around = in_tumour & ~in_cut
        if around.any():
            assert (mask[around] != 0).mean() > 0.95  # the tumour around it is labelled
        assert not (1400 <= x + 128 < 1600 and 1400 <= y + 128 < 1600)  # no patch centred in it
    assert seen_cut
