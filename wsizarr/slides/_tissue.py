"""Tissue: a boolean mask of the whole slide from the saturation of a low-resolution view
(glass is grey)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openslide
from PIL import Image

from ._slide import read_rgb

__all__ = ["TissueMask", "tissue_mask", "tissue_mask_of"]


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A boolean tissue mask of the whole slide; pixel ``(r, c)`` covers level-0
    ``[c * downsample, (c + 1) * downsample)`` horizontally and likewise vertically."""

    mask: np.ndarray
    downsample: float


def tissue_mask(slide: openslide.OpenSlide, max_px: int = 4096) -> TissueMask:
    """Tissue from a low-resolution view of an open slide (see ``tissue_mask_of``): the
    coarsest level whole when its longer side is at most ``max_px``; otherwise a thumbnail of
    that size."""
    coarsest = slide.level_count - 1
    width, height = slide.level_dimensions[coarsest]
    if max(width, height) <= max_px:
        view = read_rgb(slide, (0, 0), coarsest, (width, height))
    else:
        view = np.asarray(slide.get_thumbnail((max_px, max_px)).convert("RGB"))
    return tissue_mask_of(view, slide.dimensions[0])


def tissue_mask_of(view: np.ndarray, level0_width: int, max_px: int = 4096) -> TissueMask:
    """Tissue in an RGB view of the whole slide: saturation above its Otsu threshold (glass is
    grey). A view larger than ``max_px`` is reduced first."""
    if max(view.shape[:2]) > max_px:
        image = Image.fromarray(view)
        image.thumbnail((max_px, max_px))
        view = np.asarray(image)
    view = view.astype(np.float32)
    high, low = view.max(axis=2), view.min(axis=2)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1), 0)
    histogram, edges = np.histogram(saturation, bins=256, range=(0, 1))
    weights = histogram.astype(np.float64)
    cumulative, cumulative_mean = np.cumsum(weights), np.cumsum(weights * edges[:-1])
    total, total_mean = cumulative[-1], cumulative_mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * cumulative - total * cumulative_mean) ** 2 / (
            cumulative * (total - cumulative)
        )
    threshold = edges[int(np.nanargmax(between))] if np.isfinite(between).any() else 0.05
    mask = saturation > max(threshold, 0.05)
    return TissueMask(mask, level0_width / mask.shape[1])
