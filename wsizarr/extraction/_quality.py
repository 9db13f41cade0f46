"""Per-patch quality measures: a batch of RGB patches -> one float32 value per patch and measure.

Cheap by sampling, not by resizing: focus is measured on every 2nd pixel of every 2nd row
(a quarter of the pixels), colour on every 4th of every 4th (1/16; a share's standard error
is then at most 0.008 for a 256-px patch). Sampling keeps each pixel's own value, so the
shares are unbiased estimates of the whole patch's and the criteria are per-pixel ones.

Tissue is the slide tissue mask's criterion (``slides._tissue.tissue_mask_of``): HSV saturation
``(max - min) / max`` above a threshold (glass is grey). The mask thresholds a whole-slide
view at ``max(Otsu, 0.05)``; a patch has no slide-wide histogram, so the default here is the
mask's floor, 0.05: a patch's tissue is then a superset of the mask's. Pass the slide's own
threshold as ``tissue_threshold`` to match its mask.

Beside tissue, focus and ink, two extras that cost almost nothing (the pixels are already
read): ``brightness`` flags what tissue_fraction cannot (dark folds, thick or over-stained
tissue, black scan borders are all "tissue" or all glass-bright) and ``saturation`` is stain
intensity, which separates faded or weak staining from folds at a glance.
"""

from __future__ import annotations

import numpy as np

from .._errors import ParameterError
from ..store._manifest import QUALITY_MEASURES

__all__ = ["MIN_TISSUE_SATURATION", "QUALITY_MEASURES", "measure_patches"]

MIN_TISSUE_SATURATION = 0.05
"""The tissue mask's saturation floor (``slides._tissue.tissue_mask_of``: ``saturation > max(otsu, 0.05)``;
a literal there, so repeated here; ``tests/test_quality.py`` checks the two notions agree)."""


_FOCUS_STEP = 2  # sharpness: every 2nd pixel of every 2nd row
_COLOUR_STEP = 4  # the other measures: every 4th pixel of every 4th row
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 grey
_CHUNK = 8  # patches per pass: the temporaries of one chunk (< 1 MB) stay in cache


def measure_patches(
    patches: np.ndarray, tissue_threshold: float = MIN_TISSUE_SATURATION
) -> dict[str, np.ndarray]:
    """Every measure of ``QUALITY_MEASURES`` for a batch of patches.

    ``patches`` is ``(B, H, W, 3)`` uint8 RGB, ``H`` and ``W`` at least 6;
    ``tissue_threshold`` the saturation (0-1) above which a pixel is tissue. Returns one
    float32 array of length B per measure, in ``QUALITY_MEASURES`` order.
    """
    patches = np.asarray(patches)
    if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[3] != 3:
        raise ParameterError(
            f"patches must be (B, H, W, 3) uint8 RGB, got {patches.shape} {patches.dtype}"
        )
    n, height, width, _ = patches.shape
    if min(height, width) < 3 * _FOCUS_STEP:
        raise ParameterError(f"patches must be at least 6 px high and wide, got {height}x{width}")
    if not 0 <= tissue_threshold < 1:
        raise ParameterError(f"tissue_threshold must be in [0, 1), got {tissue_threshold}")
    out = {name: np.zeros(n, dtype) for name, (dtype, _) in QUALITY_MEASURES.items()}
    for start in range(0, n, _CHUNK):
        chunk = _measure_chunk(patches[start:start + _CHUNK], tissue_threshold)
        for name, values in chunk.items():
            out[name][start:start + len(values)] = values
    return out


def _measure_chunk(patches: np.ndarray, tissue_threshold: float) -> dict[str, np.ndarray]:
    # focus: the green channel of every 2nd pixel of every 2nd row
    grey = patches[:, ::_FOCUS_STEP, ::_FOCUS_STEP, 1].astype(np.int16)
    laplacian = grey[:, 1:-1, 1:-1] * np.int16(4)
    laplacian -= grey[:, :-2, 1:-1]
    laplacian -= grey[:, 2:, 1:-1]
    laplacian -= grey[:, 1:-1, :-2]
    laplacian -= grey[:, 1:-1, 2:]
    laplacian = laplacian.reshape(len(grey), -1).astype(np.float32)
    mean = laplacian.mean(axis=1)
    sharpness = np.einsum("ij,ij->i", laplacian, laplacian) / np.float32(laplacian.shape[1]) - mean * mean

    # colour: every 4th pixel of every 4th row
    red, green, blue = (patches[:, ::_COLOUR_STEP, ::_COLOUR_STEP, c].astype(np.int16) for c in range(3))
    high = np.maximum(np.maximum(red, green), blue)
    chroma = high - np.minimum(np.minimum(red, green), blue)
    saturation = chroma / np.maximum(high, 1).astype(np.float32)
    tissue = saturation > tissue_threshold
    # saturated hues from yellow-green through cyan and blue to 248 deg (H&E purple: > 250 deg)
    cool = (chroma >= 16) & (4 * chroma >= high) & (high != red) & (15 * (red - green) <= 2 * chroma)
    black = (high < 24) | ((high < 48) & (chroma + chroma < high))  # dark nuclei are purple
    n = len(high)
    pixels = np.float32(high[0].size)
    channel_sums = np.stack([plane.reshape(n, -1).sum(axis=1, dtype=np.int32) for plane in (red, green, blue)])
    n_tissue = tissue.reshape(n, -1).view(np.uint8).sum(axis=1, dtype=np.int32)
    tissue_saturation = np.einsum("ij,ij->i", saturation.reshape(n, -1), tissue.reshape(n, -1).astype(np.float32))
    return {
        "tissue_fraction": n_tissue / pixels,
        "sharpness": np.maximum(sharpness, 0),
        "pen_fraction": (cool | black).reshape(n, -1).view(np.uint8).sum(axis=1, dtype=np.int32) / pixels,
        "brightness": _LUMA @ channel_sums.astype(np.float32) / (255 * pixels),
        "saturation": tissue_saturation / np.maximum(n_tissue, 1),
    }
