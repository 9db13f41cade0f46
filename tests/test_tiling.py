"""Whole-slide tiling: the geometry it stands on (exact sums over boxes, cleaning a raster and
tracing its outlines)."""

from __future__ import annotations

import numpy as np
import shapely

from wsizarr.annotations._geometry import box_sums, clean_mask, outlines


def _direct_fractions(mask: np.ndarray, downsample: float, x0: np.ndarray, y0: np.ndarray, extent: float) -> np.ndarray:
    """Each square's share of tissue, from the overlap of every mask pixel with it."""
    cols, rows = np.arange(mask.shape[1]), np.arange(mask.shape[0])
    over_x = np.clip(np.minimum(x0[:, None] + extent, (cols + 1) * downsample) - np.maximum(x0[:, None], cols * downsample), 0, None)
    over_y = np.clip(np.minimum(y0[:, None] + extent, (rows + 1) * downsample) - np.maximum(y0[:, None], rows * downsample), 0, None)
    return np.einsum("th,hw,tw->t", over_y, mask.astype(np.float64), over_x) / extent**2



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
