"""Samplers, resolution by microns, masks and slide edges, on planned and extracted patches."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from wsizarr import Annotation, ParameterError, extract, open_dataset
from wsizarr._geometry import points_in_polygon
from wsizarr._sampling import plan_patches
from wsizarr._slide import Resolution, SlideInfo, open_slide, resolve_resolution, slide_info, tissue_mask

from .conftest import SLIDES, read_like_openslide


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
    with pytest.raises(ParameterError, match="records no microns per pixel.*--level"):
        resolve_resolution(_slide(mpp=None), 256, mpp=0.5)
    with pytest.raises(ParameterError, match="no objective power.*--level"):
        resolve_resolution(_slide(power=None), 256, magnification=20)
    with pytest.raises(ParameterError, match="finer than level 0"):
        resolve_resolution(_slide(), 256, mpp=0.1)
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
    (slide,) = group.attrs["wsizarr"]["slides"]
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
    with open_slide(aperio_even_case.slide) as slide:
        tissue = tissue_mask(slide)
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
    with pytest.raises(ParameterError, match="--min-overlap"):
        plan_patches([SQUARE], _slide(), sampler="grid", min_overlap=0)
    with pytest.raises(ParameterError, match="--stride"):
        plan_patches([SQUARE], _slide(), sampler="grid", stride=0)
    with pytest.raises(ParameterError, match="tissue mask"):
        plan_patches([SQUARE], _slide(), background=5)
    assert plan_patches([SQUARE], _slide(), resolution=Resolution(1, 64, 1.0), sampler="centroid").level.tolist() == [1]
