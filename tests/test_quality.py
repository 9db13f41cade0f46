"""Per-patch quality measures on real H&E (CMU-1-Small-Region) and on its known alterations:
glass, half glass, Gaussian blur of known radius, marker strokes of known area, fading."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pathlib import Path

from wsizarr import DemoSlide, extract, open_dataset, store_info, verify, write_demo_annotations
from wsizarr.slides._demo import write_pyramid
from wsizarr._errors import ParameterError, StoreError
from wsizarr.extraction._quality import MIN_TISSUE_SATURATION, QUALITY_MEASURES, measure_patches
from wsizarr.slides._slide import read_rgb, slide_info
from wsizarr.slides._tiles import OpenSlideReader
from wsizarr.slides._tissue import tissue_mask

from .conftest import SLIDES

P = 256


def _windows(mask: np.ndarray, size: int, step: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    corners = [(r, c) for r in range(0, mask.shape[0] - size + 1, step)
               for c in range(0, mask.shape[1] - size + 1, step)]
    return np.array([mask[r:r + size, c:c + size].mean() for r, c in corners]), corners


@pytest.fixture(scope="module")
def cmu() -> tuple[np.ndarray, np.ndarray]:
    """CMU-1-Small-Region at level 0 and its tissue mask (level 0 too: the slide is small)."""
    with openslide.OpenSlide(SLIDES / "CMU-1-Small-Region.svs") as slide, \
            OpenSlideReader(slide_info(slide, SLIDES / "CMU-1-Small-Region.svs")) as reader:
        mask = tissue_mask(reader)
        image = read_rgb(slide, (0, 0), 0, slide.dimensions)
    assert mask.downsample == 1 and mask.mask.shape == image.shape[:2]
    return image, mask.mask


@pytest.fixture(scope="module")
def tissue(cmu) -> np.ndarray:
    """The 256-px patch of real H&E that the slide's tissue mask covers most (96 %)."""
    image, mask = cmu
    shares, corners = _windows(mask, P, 64)
    r, c = corners[int(np.argmax(shares))]
    assert shares.max() > 0.95
    return image[r:r + P, c:c + P].copy()


@pytest.fixture(scope="module")
def stroma(cmu) -> np.ndarray:
    """The brightest 256-px patch of real H&E that the slide's tissue mask covers to >= 90 %."""
    image, mask = cmu
    shares, corners = _windows(mask, P, 64)
    full = [corners[i] for i in np.flatnonzero(shares >= 0.9)]
    r, c = max(full, key=lambda rc: image[rc[0]:rc[0] + P:4, rc[1]:rc[1] + P:4].mean())
    return image[r:r + P, c:c + P].copy()


@pytest.fixture(scope="module")
def glass(cmu) -> np.ndarray:
    """A 256-px patch of the same slide's glass (no tissue in the mask)."""
    image, mask = cmu
    shares, corners = _windows(mask, P, 64)
    r, c = corners[int(np.flatnonzero(shares == 0)[0])]
    return image[r:r + P, c:c + P].copy()


def _one(patch: np.ndarray, **kwargs) -> dict[str, float]:
    return {name: float(values[0]) for name, values in measure_patches(patch[None], **kwargs).items()}


def test_every_measure_is_one_float32_per_patch(tissue, glass):
    out = measure_patches(np.stack([tissue, glass, tissue]))
    assert list(out) == list(QUALITY_MEASURES)
    assert all(v.dtype == np.float32 and v.shape == (3,) for v in out.values())
    assert {name: dtype for name, (dtype, _) in QUALITY_MEASURES.items()} == {k: v.dtype for k, v in out.items()}
    for name, values in out.items():  # a patch's values do not depend on its batch
        assert values[0] == values[2] == _one(tissue)[name]
    empty = measure_patches(np.zeros((0, P, P, 3), np.uint8))
    assert all(v.shape == (0,) for v in empty.values())
    # a batch longer than one internal chunk, odd sizes
    odd = np.stack([tissue[:250, :199]] * 19)
    assert all(v.shape == (19,) and np.all(v == v[0]) for v in measure_patches(odd).values())


@pytest.mark.parametrize("bad", [
    np.zeros((2, P, P, 3), np.float32), np.zeros((P, P, 3), np.uint8),
    np.zeros((2, P, P, 4), np.uint8), np.zeros((2, 4, P, 3), np.uint8),
])
def test_malformed_batches_are_refused(bad):
    with pytest.raises(ParameterError, match="patches must be"):
        measure_patches(bad)


def test_tissue_fraction_glass_tissue_and_half(tissue, glass):
    assert _one(glass)["tissue_fraction"] < 0.02
    assert _one(tissue)["tissue_fraction"] > 0.95
    half = glass.copy()
    half[:, : P // 2] = tissue[:, : P // 2]
    assert abs(_one(half)["tissue_fraction"] - 0.5) < 0.05
    quarter = glass.copy()
    quarter[: P // 2, : P // 2] = tissue[: P // 2, : P // 2]
    assert abs(_one(quarter)["tissue_fraction"] - 0.25) < 0.04


def test_tissue_is_the_slide_masks_notion(cmu):
    """With the slide's own threshold, a patch's tissue_fraction is the share of its pixels in
    the slide's tissue mask (up to sampling: 1 pixel in 16); with the default (the mask's
    floor) it is at least that share."""
    image, mask = cmu
    view = image.astype(np.float32)
    high, low = view.max(axis=2), view.min(axis=2)
    saturation = (high - low) / np.maximum(high, 1)
    threshold = float(saturation[~mask].max())  # the mask is saturation > threshold
    assert MIN_TISSUE_SATURATION <= threshold < float(saturation[mask].min())
    shares, corners = _windows(mask, P, P)
    patches = np.stack([image[r:r + P, c:c + P] for r, c in corners])
    own = measure_patches(patches, tissue_threshold=threshold)["tissue_fraction"]
    assert np.abs(own - shares).mean() < 0.01 and np.abs(own - shares).max() < 0.04
    assert np.corrcoef(own, shares)[0, 1] > 0.99
    floor = measure_patches(patches)["tissue_fraction"]
    assert np.all(floor >= shares - 0.04) and floor.mean() > shares.mean()


def test_sharpness_falls_monotonically_with_blur(tissue, glass):
    radii = [0, 0.5, 1, 1.5, 2, 3, 4]
    blurred = np.stack([
        np.asarray(Image.fromarray(tissue).filter(ImageFilter.GaussianBlur(r))) if r else tissue for r in radii
    ])
    sharpness = measure_patches(blurred)["sharpness"]
    assert np.all(np.diff(sharpness) < 0), sharpness
    assert sharpness[2] < 0.5 * sharpness[0]  # a 1-px blur at 0.5 um/px
    assert sharpness[-1] < 0.05 * sharpness[0]
    assert _one(glass)["sharpness"] < 0.01 * sharpness[0]


def test_sharpness_is_the_laplacian_variance_of_the_sampled_green_channel(tissue):
    cv2 = pytest.importorskip("cv2")
    laplacian = cv2.Laplacian(tissue[::2, ::2, 1].astype(np.float32), cv2.CV_32F, ksize=1)
    assert _one(tissue)["sharpness"] == pytest.approx(float(laplacian[1:-1, 1:-1].var()), rel=1e-4)


# marker ink seen in transmitted light: the ink's transmittance times the tissue's
INKS = {"blue": (50, 100, 220), "green": (60, 170, 80), "black": (30, 30, 33)}


def _stroke(patch: np.ndarray, ink: tuple[int, int, int], width: int) -> tuple[np.ndarray, float]:
    canvas = Image.new("L", (P, P), 0)
    ImageDraw.Draw(canvas).line([(-20, 40), (P + 20, P - 60)], fill=255, width=width)
    stroke = np.asarray(canvas) > 0
    inked = patch.copy()
    inked[stroke] = (patch[stroke] * (np.array(ink) / 255)).astype(np.uint8)
    return inked, float(stroke.mean())


@pytest.mark.parametrize("ink", INKS)
def test_pen_fraction_follows_a_stroke_across_tissue(stroma, tissue, ink):
    for patch in (stroma, tissue):
        clean = _one(patch)["pen_fraction"]
        assert clean < 0.03  # ~0.02: cyan colour fringes along clefts (real: not ink)
        for width in (20, 60):
            inked, share = _stroke(patch, INKS[ink], width)
            measured = _one(inked)["pen_fraction"] - clean
            assert share * 0.85 < measured < share + 0.02, (ink, width, share, measured)


def test_pen_fraction_ignores_h_and_e_pink_and_purple(tissue):
    """Pure eosin-pink, haematoxylin-purple and dark-nucleus colours and the real patch."""
    for rgb in [(232, 172, 205), (214, 140, 190), (95, 55, 150), (60, 25, 100), (45, 20, 70), (150, 120, 190),
                (210, 200, 90), (160, 110, 60)]:  # and hues below 60 deg: pale yellow, DAB brown
        assert _one(np.full((P, P, 3), rgb, np.uint8))["pen_fraction"] == 0, rgb
    for rgb in [(50, 100, 220), (60, 170, 80), (0, 128, 128), (30, 30, 33), (20, 20, 20), (12, 12, 86)]:
        assert _one(np.full((P, P, 3), rgb, np.uint8))["pen_fraction"] == 1, rgb


def test_brightness_and_saturation(tissue, glass):
    g, t = _one(glass), _one(tissue)
    assert g["brightness"] > 0.9 and 0.25 < t["brightness"] < 0.85
    assert g["saturation"] < t["saturation"]
    assert _one(np.full((P, P, 3), 243, np.uint8))["saturation"] == 0  # no tissue: 0
    uniform = _one(np.full((P, P, 3), (200, 100, 50), np.uint8))
    assert uniform["brightness"] == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-6)
    assert uniform["saturation"] == pytest.approx(150 / 200)
    half = glass.copy()
    half[:, : P // 2] = tissue[:, : P // 2]
    assert abs(_one(half)["saturation"] - _one(tissue[:, : P // 2])["saturation"]) < 0.02  # tissue's mean
    faded = (255 - (255 - tissue.astype(np.float32)) * 0.5).astype(np.uint8)  # half the stain
    f = _one(faded)
    assert f["brightness"] > t["brightness"] and f["saturation"] < 0.7 * t["saturation"]
    assert f["tissue_fraction"] > 0.9  # still tissue


def _tissue_patches(name: str, n: int = 50) -> dict[str, np.ndarray]:
    """Up to ``n`` 256-px level-0 patches at least half tissue, evenly spread over the slide."""
    with openslide.OpenSlide(SLIDES / name) as slide:
        image = read_rgb(slide, (0, 0), 0, slide.dimensions)
    step = P // 4 if min(image.shape[:2]) < 1200 else P // 2
    patches = np.stack([image[r:r + P, c:c + P] for r in range(0, image.shape[0] - P + 1, step)
                        for c in range(0, image.shape[1] - P + 1, step)])
    measures = measure_patches(patches)
    keep = np.flatnonzero(measures["tissue_fraction"] >= 0.5)
    keep = keep[np.linspace(0, len(keep) - 1, min(n, len(keep))).astype(int)]
    return {name: values[keep] for name, values in measures.items()}


# Measured (median, range) over tissue patches (>= 0.5 tissue), 256 px at level 0:
# CMU-1-Small-Region.svs (50 patches, 0.499 um/px): tissue 0.88 (0.51-1.00), sharpness 10362
#   (3108-18269), pen 0.022 (0.003-0.076: cyan colour fringes at tissue edges), brightness 0.59
#   (0.34-0.75), saturation 0.40 (0.33-0.52)
# tcga-cr-7395-01a-01-ts1.svs (50, JPEG 2000): tissue 0.99 (0.62-1.00), sharpness 3777
#   (704-8071), pen 0.000 (0-0.001), brightness 0.56 (0.45-0.74), saturation 0.49 (0.38-0.58)
# wsipacker_example.tif (33, 0.987 um/px): tissue 0.68 (0.51-0.97), sharpness 15194
#   (11132-21650), pen 0.000 (0-0.000), brightness 0.71 (0.59-0.80), saturation 0.27 (0.18-0.28)
# (histolab_kidney-48-5.tif, IHC, is glass but for one pale bluish fragment: its patch has
#   tissue 0.06, sharpness 2074, pen 0.001, brightness 0.97, saturation 0.15)
@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs", "wsipacker_example.tif"])
def test_real_slides_give_plausible_values(name):
    m = _tissue_patches(name)
    assert len(m["tissue_fraction"]) >= 30
    median = {k: float(np.median(v)) for k, v in m.items()}
    assert 0.6 < median["tissue_fraction"] <= 1
    assert median["sharpness"] > 1000 and m["sharpness"].min() > 300
    assert median["pen_fraction"] < 0.03 and m["pen_fraction"].max() < 0.15
    assert 0.45 < median["brightness"] < 0.8
    assert 0.2 < median["saturation"] < 0.6


REGION = 768  # px per region of the known-content slide


@pytest.fixture(scope="module")
def known_content_store(tmp_path_factory, tissue) -> tuple[Path, dict[str, np.ndarray]]:
    """An Aperio-style slide (JPEG tiles, fractional downsamples) with four regions of known
    content side by side: glass, real H&E tissue, the same tissue blurred (Gaussian, radius 4 px)
    and the same tissue crossed by a blue marker stroke; a square annotation named after each
    region, extracted with the quality arrays. Returns the store and its arrays."""
    folder = tmp_path_factory.mktemp("known")
    tile = Image.fromarray(np.tile(tissue, (3, 3, 1)))  # 768 px of real tissue
    regions = {
        "glass": Image.new("RGB", (REGION, REGION), (243, 243, 243)),
        "tissue": tile,
        "blurred": tile.filter(ImageFilter.GaussianBlur(4)),
        "pen": tile.copy(),
    }
    ImageDraw.Draw(regions["pen"]).line([(0, REGION // 2), (REGION, REGION // 2)], fill=(30, 60, 200), width=60)
    image = Image.new("RGB", (4 * REGION + 1, REGION + 3), (243, 243, 243))
    for k, region in enumerate(regions.values()):
        image.paste(region, (k * REGION, 0))
    slide = folder / "known.svs"
    write_pyramid(slide, image, levels=2)
    corners = [(k * REGION + REGION // 2 - 128, REGION // 2 - 128) for k in range(len(regions))]
    polygons = tuple(np.array([(x, y), (x + 256, y), (x + 256, y + 256), (x, y + 256)], float) for x, y in corners)
    annotations = write_demo_annotations(DemoSlide(slide, image.size, polygons, tuple(regions)), folder / "known.xml")
    store = folder / "known.zarr"
    extract(slide, annotations, store, per_annotation=8, seed=1, workers=2)
    dataset = open_dataset(store)
    return store, {name: dataset[name].values for name in (*QUALITY_MEASURES, "label", "y")}


def _by_label(values: dict[str, np.ndarray], label: str, measure: str) -> np.ndarray:
    return values[measure][values["label"] == label]


def test_extraction_stores_the_measures_of_known_content(known_content_store):
    store, values = known_content_store
    assert set(values["label"]) == {"glass", "tissue", "blurred", "pen"}
    assert _by_label(values, "glass", "tissue_fraction").max() < 0.02
    assert _by_label(values, "tissue", "tissue_fraction").min() > 0.9
    assert _by_label(values, "blurred", "sharpness").max() < 0.3 * _by_label(values, "tissue", "sharpness").min()
    # the stroke covers rows 354..413 of the slide, the whole width: a patch's share is its overlap
    tops = _by_label(values, "pen", "y")
    overlap = np.clip(np.minimum(tops + P, REGION // 2 + 30) - np.maximum(tops, REGION // 2 - 30), 0, None) / P
    assert overlap.max() > 0.1
    np.testing.assert_allclose(_by_label(values, "pen", "pen_fraction"), overlap, atol=0.04)
    assert _by_label(values, "tissue", "pen_fraction").max() < 0.02
    assert _by_label(values, "glass", "brightness").min() > 0.9


def test_stored_measures_are_those_of_the_stored_pixels(known_content_store):
    store, values = known_content_store
    patches = open_dataset(store)["patches"].values
    measured = measure_patches(patches)
    for name in QUALITY_MEASURES:
        np.testing.assert_array_equal(values[name], measured[name])
    assert verify(store, sample=8).ok


def test_quality_is_recorded_and_summarised(known_content_store):
    store, values = known_content_store
    info = store_info(store)
    assert info["parameters"]["quality"] is True
    assert set(info["quality"]) == set(QUALITY_MEASURES)
    p5, median, p95 = info["quality"]["tissue_fraction"]["glass"]
    assert p5 <= median <= p95 < 0.02
    assert info["quality"]["sharpness"]["blurred"][1] < info["quality"]["sharpness"]["tissue"][1]


def test_quality_off_writes_no_arrays_and_a_resume_keeps_the_choice(aperio_case, tmp_path):
    store = tmp_path / "plain.zarr"
    extract(aperio_case.slide, aperio_case.annotations, store, per_annotation=2, quality=False)
    dataset = open_dataset(store)
    assert not set(QUALITY_MEASURES) & set(dataset.variables)
    assert store_info(store)["quality"] == {}
    with pytest.raises(StoreError, match="other parameters"):
        extract(aperio_case.slide, aperio_case.annotations, store, per_annotation=2, append=True)


def test_a_damaged_or_altered_quality_array_fails_verify(known_content_store, tmp_path):
    import shutil

    import zarr

    store = tmp_path / "copy.zarr"
    shutil.copytree(known_content_store[0], store)
    array = zarr.open_array(store / "sharpness", mode="r+")
    values = array[:]
    values[3] += 100  # (glass has sharpness ~0: a multiple would not change it)
    array[:] = values
    report = verify(store, sample=32)
    assert any("'sharpness' does not match patch 3" in problem for problem in report.problems)
    chunk = store / "tissue_fraction" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    assert any("'tissue_fraction', rows 0..: unreadable" in problem for problem in verify(store, sample=0).problems)
