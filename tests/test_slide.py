from __future__ import annotations

import numpy as np
import openslide
import pytest

from wsizarr import ParameterError, SlideError
from wsizarr.slides._slide import composite_on_white, level0_from_level_px, open_slide, read_rgb, slide_info

from .conftest import SLIDES


def _info(path):
    with open_slide(path) as slide:
        return slide_info(slide, path)


def test_aperio_geometry_uses_real_downsamples(aperio_case):
    info = _info(aperio_case.slide)
    assert info.vendor == "aperio"
    assert info.level_dimensions == ((4001, 3003), (1000, 750), (250, 187))
    assert info.level_downsamples[1] == pytest.approx(4.0025, abs=1e-3)
    assert info.level_downsamples[1] != 4 and info.level_downsamples[2] != 16
    assert info.mpp == pytest.approx((0.25, 0.25))
    assert info.objective_power == 40


def test_generic_and_real_geometry(generic_case):
    generic = _info(generic_case.slide)
    assert generic.vendor == "generic-tiff"
    assert generic.level_downsamples == (1.0, 2.0, 4.0, 8.0)
    packer = _info(SLIDES / "wsipacker_example.tif")
    assert packer.dimensions == (1472, 690)
    assert packer.level_downsamples[2] == pytest.approx(4.0058, abs=1e-4)
    cmu = _info(SLIDES / "CMU-1-Small-Region.svs")
    assert cmu.level_count == 1 and cmu.mpp[0] == pytest.approx(0.499, abs=1e-3)
    no_mpp = _info(SLIDES / "tcga-cr-7395-01a-01-ts1.svs")
    assert no_mpp.mpp is None and no_mpp.objective_power is None


@pytest.mark.parametrize("downsample", [1.0, 2.0, 4.0, 4.00009, 4.0025, 4.0058139534883725, 16.0213, 32.5])
def test_level0_coordinates_land_on_the_level_grid(downsample):
    level_px = np.arange(0, 20000, 7)
    level0 = level0_from_level_px(level_px, downsample)
    np.testing.assert_array_equal(np.floor(level0 / downsample).astype(np.int64), level_px)
    assert (level0 - 1 < level_px * downsample).all()  # the smallest such coordinate


def test_composite_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[0, 1] = (100, 100, 100, 128)
    rgb = composite_on_white(rgba)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [177, 177, 177]  # 100*128/255 + 127 = 177.2, rounded


def test_outside_the_slide_is_white_not_black(aperio_case):
    with open_slide(aperio_case.slide) as slide:
        patch = read_rgb(slide, (3900, 2900), 0, (256, 256))
    assert patch.shape == (256, 256, 3) and patch.dtype == np.uint8
    assert (patch[200:, 200:] == 255).all()  # beyond the 4001x3003 slide
    assert (patch[:50, :50] != 255).any()  # inside it: tissue or glass, not blank


def test_missing_unsupported_and_corrupt_slides(tmp_path, aperio_case):
    with pytest.raises(SlideError, match="slide not found"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(SlideError, match="does not recognise this file"):
        open_slide(SLIDES / "histolab_kidney-48-5.tif")
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    with pytest.raises(SlideError, match="notes.svs"):
        open_slide(text)
    corrupt = tmp_path / "corrupt.svs"
    data = aperio_case.slide.read_bytes()
    corrupt.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideError, match="corrupt.svs"):
        slide = open_slide(corrupt)
        read_rgb(slide, (0, 0), 0, (4001, 3003))


def test_level_that_does_not_exist(aperio_case):
    with pytest.raises(ParameterError, match=r"level 3 does not exist; this slide has levels 0..2"):
        _info(aperio_case.slide).check_level(3)


def test_openslide_still_agrees_on_cmu():
    with openslide.OpenSlide(SLIDES / "CMU-1-Small-Region.svs") as slide:
        assert slide.dimensions == (2220, 2967)
