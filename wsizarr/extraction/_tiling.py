"""Whole-slide tiling: a grid of tiles over a slide, kept where its tissue mask says tissue.

A pure function of the slide's geometry, its tissue mask and the options, vectorised over
the whole grid: every tile's share of tissue comes from the mask's integral image
(``annotations._geometry.box_sums``), so no pixel is read and, without annotations, no
polygon is tested. Annotations, when given, label the tiles kept (a point-in-polygon test of
their centres, annotation by annotation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..annotations._geometry import box_sums
from ..annotations._records import Annotation
from ..slides._slide import Resolution, SlideInfo, level0_from_level_px
from ..slides._tissue import TissueMask
from ._options import SamplingOptions, TilingOptions
from ._sampling import BACKGROUND_LABEL, PatchPlan, containing, patch_centres

__all__ = ["TISSUE_LABEL", "outline_pixel_px", "plan_tiles", "tissue_fractions", "tissue_view_px"]

TISSUE_LABEL = "tissue"  # the label of the tissue outlines in the store's annotation table
_CELLS_PER_TILE = 16  # mask pixels across a tile: finer adds nothing to a share of tissue
_OUTLINE_PIXELS_PER_TILE = 4  # the tissue outline's raster: a quarter of a tile


def _tile_extent0(slide: SlideInfo, resolution: Resolution) -> float:
    """A tile's side in level-0 pixels."""
    return resolution.read_size_px * slide.level_downsamples[resolution.level]


def tissue_view_px(slide: SlideInfo, resolution: Resolution, most: int = 4096) -> int:
    """The longer side, in pixels, of the view of the slide its tissue is found in for tiles of
    ``resolution``: about 16 pixels across a tile (at 0.5 um/px and 256 px, 8 um a pixel, the
    scale at which a tissue mask averages stroma and the glass between its fibres into tissue),
    at most ``most``."""
    return max(1, min(most, math.ceil(max(slide.dimensions) * _CELLS_PER_TILE / _tile_extent0(slide, resolution))))


def outline_pixel_px(slide: SlideInfo, resolution: Resolution) -> float:
    """The level-0 size of a pixel of the raster the tissue outline is traced on for tiles of
    ``resolution``: a quarter of a tile (32 um at 0.5 um/px and 256 px), fine enough to show
    which tiles the tissue reaches, and 4x faster to trace than the mask itself."""
    return _tile_extent0(slide, resolution) / _OUTLINE_PIXELS_PER_TILE


def tissue_fractions(tissue: TissueMask, x0: np.ndarray, y0: np.ndarray, extent0: float) -> np.ndarray:
    """The share of tissue in the level-0 squares ``[x0, x0 + extent0) x [y0, y0 + extent0)``:
    mask pixel ``(r, c)`` covers level-0 ``[c * d, (c + 1) * d)`` (``d`` the mask's downsample)
    and counts by the part of it inside the square; outside the mask is not tissue."""
    scale = 1 / tissue.downsample
    x0, y0 = np.asarray(x0, np.float64) * scale, np.asarray(y0, np.float64) * scale
    side = extent0 * scale
    return box_sums(tissue.mask, x0, y0, x0 + side, y0 + side) / side**2


def plan_tiles(
    slide: SlideInfo,
    tissue: TissueMask,
    tiling: TilingOptions,
    sampling: SamplingOptions,
    resolution: Resolution,
    *,
    slide_index: int = 0,
    labels: Mapping[str, int],
    annotations: Sequence[Annotation] | None = None,
    exclusions: Sequence[Annotation] = (),
) -> PatchPlan:
    """The tiles of one slide, row by row: tiles of ``resolution.read_size_px`` level pixels at
    level pixels ``0, stride, 2 * stride, ...`` across the level (``sampling.stride``, default
    the tile), kept when ``tissue_fractions`` of their level-0 square (level pixels ``p .. p +
    size`` times the downsample) is at least ``tiling.tile_min_tissue``. A tile crossing the
    slide's edge is ``padded``, or left out with ``sampling.drop_partial``; one centred in an
    exclusion is left out (``dropped_excluded``). Each tile takes the label and id of the last
    of ``annotations`` containing its level-0 centre, else ``background`` (id -1), or is
    unlabelled (-1) when ``annotations`` is None; ``tiling.within_annotations`` keeps only the
    tiles inside one. ``labels`` are the run's label codes."""
    level = resolution.level
    slide.check_level(level)
    downsample = slide.level_downsamples[level]
    level_w, level_h = slide.level_dimensions[level]
    footprint = resolution.read_size_px
    stride = sampling.stride or footprint
    lefts, tops = np.arange(0, level_w, stride), np.arange(0, level_h, stride)
    grid_x, grid_y = np.tile(lefts, len(tops)), np.repeat(tops, len(lefts))  # row by row
    fractions = tissue_fractions(tissue, grid_x * downsample, grid_y * downsample, footprint * downsample)
    on_tissue = fractions >= tiling.tile_min_tissue - 1e-9  # a share computed in floating point
    xs, ys = grid_x[on_tissue], grid_y[on_tissue]
    padded = (xs + footprint > level_w) | (ys + footprint > level_h)
    partial = padded & sampling.drop_partial
    centres = patch_centres(xs, ys, downsample, footprint)
    excluded = ~partial & (containing(exclusions, centres) >= 0)
    keep = ~partial & ~excluded
    # the annotation containing each centre; index -1 (in none) picks the last entry: background
    # (unlabelled without annotations)
    inside = containing(annotations or (), centres)
    outside = -1 if annotations is None else labels[BACKGROUND_LABEL]
    annotation_id = np.array([*(a.id for a in annotations or ()), -1], np.int64)[inside]
    label = np.array([*(-1 if a.label is None else labels[a.label] for a in annotations or ()), outside], np.int32)[inside]
    if tiling.within_annotations:
        keep &= inside >= 0
    xs, ys, padded, annotation_id, label = xs[keep], ys[keep], padded[keep], annotation_id[keep], label[keep]
    n = len(xs)
    return PatchPlan(
        slide=np.full(n, slide_index, np.int32),
        level=np.full(n, level, np.int32),
        x=level0_from_level_px(xs, downsample),
        y=level0_from_level_px(ys, downsample),
        annotation_id=annotation_id,
        label=label,
        padded=padded,
        dropped_partial=int(partial.sum()),
        dropped_excluded=int(excluded.sum()),
    )
