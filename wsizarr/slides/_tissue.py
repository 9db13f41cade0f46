"""Tissue: a boolean mask of the whole slide, from the saturation of a low-resolution view
(glass is grey) or from a mask image the user drew; cleaned of specks and small holes; its
outlines."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .._errors import ParameterError, option
from ..annotations._geometry import clean_mask, outlines
from ._tiles import SlideReader

__all__ = ["TissueMask", "clean_tissue", "mask_image", "tissue_mask", "tissue_mask_of", "tissue_outlines"]


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask of the whole slide; pixel ``(r, c)`` covers level-0
    ``[c * downsample, (c + 1) * downsample)`` horizontally and likewise vertically."""

    mask: np.ndarray
    downsample: float


def tissue_mask(reader: SlideReader, max_px: int = 4096) -> TissueMask:
    """Tissue from the coarsest level of a slide read by ``reader`` (see ``tissue_mask_of``),
    reduced by the whole factor that brings it within ``max_px`` on its longer side, strip by
    strip (a slide without a pyramid never needs its whole level 0 in memory)."""
    info = reader.info
    coarsest = info.level_count - 1
    reduce_by = math.ceil(max(info.level_dimensions[coarsest]) / max_px)
    return tissue_mask_of(reader.read_level(coarsest, reduce_by), info.dimensions[0])


def _saturation_table() -> np.ndarray:
    """The saturation ``(max - min) / max`` (0 where max is 0) of every ``(max, min)`` pair of
    8-bit channel values, as float32, indexed ``max * 256 + min`` (0 for pairs with min > max,
    which no pixel has)."""
    high, low = np.divmod(np.arange(256 * 256, dtype=np.float32), 256)
    return np.where(high >= low, (high - low) / np.maximum(high, 1), 0).astype(np.float32)


_SATURATION = _saturation_table()
_SATURATION_EDGES = np.linspace(0, 1, 257)  # np.histogram's 256 bins over [0, 1]
_SATURATION_BIN = np.minimum(np.searchsorted(_SATURATION_EDGES, _SATURATION, "right") - 1, 255)  # its binning


def tissue_mask_of(view: np.ndarray, level0_width: int) -> TissueMask:
    """Tissue in an RGB view of the whole slide, ``level0_width`` level-0 pixels wide:
    saturation above its Otsu threshold (glass is grey)."""
    red, green, blue = view[..., 0], view[..., 1], view[..., 2]  # channel by channel: 5x faster than axis=2
    high = np.maximum(np.maximum(red, green), blue).astype(np.uint16)
    pair = (high << 8) | np.minimum(np.minimum(red, green), blue)
    # each pixel's saturation is looked up by its (max, min) pair, and counted by pair: 4x
    # faster than computing and binning it pixel by pixel, with the same values
    histogram = np.bincount(_SATURATION_BIN, np.bincount(pair.ravel(), minlength=256 * 256), 256)
    edges = _SATURATION_EDGES
    cumulative, cumulative_mean = np.cumsum(histogram), np.cumsum(histogram * edges[:-1])
    total, total_mean = cumulative[-1], cumulative_mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * cumulative - total * cumulative_mean) ** 2 / (
            cumulative * (total - cumulative)
        )
    threshold = edges[int(np.nanargmax(between))] if np.isfinite(between).any() else 0.05
    mask = (_SATURATION > max(threshold, 0.05))[pair]
    return TissueMask(mask, level0_width / mask.shape[1])


def mask_image(path: str | Path, dimensions: tuple[int, int], max_px: int = 4096) -> TissueMask:
    """A tissue mask drawn by the user: an image file (PNG, TIFF, JPEG, ...; of a pyramidal
    TIFF the level nearest ``max_px`` px) of any size whose non-zero pixels are tissue (colour
    channels but not alpha), stretched over the slide of level-0 ``dimensions`` (nearest to its
    own size and at most ``max_px`` px, by area: a mask pixel is tissue where most of what it
    covers is). ``ParameterError`` naming the file when it is missing or not an image."""
    path = Path(path)
    fix = f"give a PNG or TIFF whose non-zero pixels are tissue ({option('tissue_mask')})"
    if not path.is_file():
        raise ParameterError(f"{path}: tissue mask not found; {fix}")
    try:
        pixels = _read_tiff_mask(path, max_px) if path.suffix.lower() in (".tif", ".tiff") else _read_image(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ParameterError(f"{path}: cannot read the tissue mask as an image ({exc}); {fix}") from None
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):  # grey or colour with alpha: not the alpha
        pixels = pixels[..., :-1]
    if pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise ParameterError(f"{path}: the tissue mask is not a 2-D image (shape {pixels.shape}); {fix}")
    tissue = pixels.any(axis=2) if pixels.ndim == 3 else pixels != 0
    width, height = dimensions
    scale = max(width / tissue.shape[1], height / tissue.shape[0], max(width, height) / max_px)
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    if size != tissue.shape[::-1]:
        image = Image.fromarray(tissue.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
        tissue = np.asarray(image) > 127
    return TissueMask(tissue, width / tissue.shape[1])


def _read_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _read_tiff_mask(path: Path, max_px: int) -> np.ndarray:
    """The level of the TIFF's first series nearest ``max_px`` px on its longer side from above
    (the coarsest at least that large, else the finest)."""
    with tifffile.TiffFile(path) as tiff:
        levels = tiff.series[0].levels
        large = [level for level in levels if max(level.shape[:2]) >= max_px]
        return np.asarray((large[-1] if large else levels[0]).asarray())


def clean_tissue(tissue: TissueMask, min_area: float, max_hole_area: float) -> TissueMask:
    """``tissue`` without its pieces smaller than ``min_area`` level-0 pixels^2 and with its
    holes smaller than ``max_hole_area`` filled (``annotations._geometry.clean_mask``)."""
    cell = tissue.downsample**2  # level-0 pixels^2 of a mask pixel
    return TissueMask(clean_mask(tissue.mask, min_area / cell, max_hole_area / cell), tissue.downsample)


def tissue_outlines(tissue: TissueMask, pixel_px: float = 0) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The outline of every piece of tissue, ``(exterior, holes)`` in level-0 pixels, traced
    on the mask reduced by the whole factor that brings its pixels nearest ``pixel_px`` level-0
    pixels from below (a reduced pixel is tissue where at least half of the mask pixels it covers
    are; 0: the mask itself), with tissue that touches corner to corner joined, and simplified
    to within one pixel of that raster. The cost of tracing grows with the outline's length in
    pixels, so a coarser raster is faster."""
    mask = tissue.mask
    factor = max(1, int(pixel_px // tissue.downsample))
    if factor > 1:
        height, width = -(-mask.shape[0] // factor), -(-mask.shape[1] // factor)
        padded = np.zeros((height * factor, width * factor), np.uint16)
        padded[: mask.shape[0], : mask.shape[1]] = mask
        rows = sum(padded[k::factor] for k in range(factor))  # strided sums: 40x faster than a
        covered = sum(rows[:, k::factor] for k in range(factor))  # reshape and a sum over axes
        mask = 2 * covered >= factor * factor
    scale = tissue.downsample * factor
    return [(exterior * scale, [hole * scale for hole in holes]) for exterior, holes in outlines(_joined(mask))]


def _joined(mask: np.ndarray) -> np.ndarray:
    """``mask`` with tissue that touches only corner to corner joined (the two glass pixels of
    each such 2x2 square made tissue, until none is left): then each traced ring is simple,
    and few need repair after simplification."""
    mask = mask.copy()
    while True:
        top_left, top_right, bottom_left, bottom_right = mask[:-1, :-1], mask[:-1, 1:], mask[1:, :-1], mask[1:, 1:]
        rows, cols = np.nonzero((top_left == bottom_right) & (top_right == bottom_left) & (top_left != top_right))
        if not len(rows):
            return mask
        falling = mask[rows, cols]  # tissue top left and bottom right: fill the other two
        mask[rows, cols + falling] = True
        mask[rows + 1, cols + ~falling] = True
