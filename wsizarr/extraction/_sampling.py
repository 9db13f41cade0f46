"""Annotations + slide geometry -> a patch plan: plain numpy arrays, deterministic from a seed.

Every sampler is a pure function of the annotations, the slide's geometry (and, for
``background``, a tissue mask computed beforehand) and the seed. No patch is centred inside an
exclusion (an area to leave out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .._errors import ParameterError
from ..annotations._geometry import (
    centroid,
    has_area,
    point_inside,
    points_in_polygon,
    rasterize,
    window_sums,
)
from ..annotations._records import Annotation
from ..slides._slide import Resolution, SlideInfo, level0_from_level_px
from ..slides._tissue import TissueMask
from ._options import SamplingOptions

__all__ = [
    "BACKGROUND_LABEL", "SAMPLERS", "PatchPlan", "containing", "label_codes", "patch_centres", "plan_jitter",
    "plan_patches",
]

BACKGROUND_LABEL = "background"


@dataclass(frozen=True, eq=False)
class PatchPlan:
    """Where every patch comes from: aligned 1-D arrays of one length N.

    ``x``/``y`` are level-0 top-left pixels on ``level``'s pixel grid, ``annotation_id`` is the
    annotation the patch was cut around (-1 for background patches), ``label`` an index into
    the label names (-1 unlabelled), ``slide`` an index into the slide table and ``padded``
    True where the patch crosses the slide's edge (those pixels are white).
    ``skipped_annotations`` lists ids of annotations entirely outside the slide,
    ``dropped_partial`` counts edge patches left out on request and ``dropped_excluded`` the
    patches a sampler drew inside an exclusion that could not be drawn again elsewhere.
    """

    slide: np.ndarray  # int32
    level: np.ndarray  # int32
    x: np.ndarray  # int64
    y: np.ndarray  # int64
    annotation_id: np.ndarray  # int64
    label: np.ndarray  # int32
    padded: np.ndarray  # bool
    skipped_annotations: tuple[int, ...] = ()
    dropped_partial: int = 0
    dropped_excluded: int = 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The plan's arrays by store name."""
        return {
            "x": self.x, "y": self.y, "level": self.level, "annotation_id": self.annotation_id,
            "label": self.label, "slide": self.slide, "padded": self.padded,
        }


def label_codes(annotations: Sequence[Annotation], extra: Sequence[str] = ()) -> dict[str, int]:
    """Label name -> code, codes assigned in sorted name order so they are stable."""
    names = sorted({a.label for a in annotations if a.label is not None} | set(extra))
    return {name: code for code, name in enumerate(names)}


@dataclass(frozen=True)
class _Context:
    downsample: float
    footprint: int  # patch side in pixels of the level read
    level_size: tuple[int, int]
    per_annotation: int
    stride: int
    min_overlap: float


Sampler = Callable[[Annotation, _Context, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _level_vertices(annotation: Annotation, ctx: _Context) -> np.ndarray:
    return annotation.vertices / ctx.downsample


def _overlap_range(lo: float, hi: float, footprint: int, level_px: int) -> tuple[int, int]:
    """Inclusive range of patch starts whose span overlaps ``[lo, hi]``, inside the level if possible."""
    first = int(np.floor(lo)) - footprint + 1
    last = max(int(np.ceil(hi)) - 1, first)
    inside_first, inside_last = max(first, 0), min(last, level_px - footprint)
    if inside_first <= inside_last:
        return inside_first, inside_last
    return first, last


def _jitter(annotation: Annotation, ctx: _Context, rng: np.random.Generator):
    vertices = _level_vertices(annotation, ctx)
    (x_min, y_min), (x_max, y_max) = vertices.min(axis=0), vertices.max(axis=0)
    x_lo, x_hi = _overlap_range(x_min, x_max, ctx.footprint, ctx.level_size[0])
    y_lo, y_hi = _overlap_range(y_min, y_max, ctx.footprint, ctx.level_size[1])
    xs = rng.integers(x_lo, x_hi, ctx.per_annotation, endpoint=True)
    ys = rng.integers(y_lo, y_hi, ctx.per_annotation, endpoint=True)
    return xs, ys


def _centred(cx: np.ndarray, cy: np.ndarray, ctx: _Context) -> tuple[np.ndarray, np.ndarray]:
    half = ctx.footprint / 2
    return np.floor(cx - half).astype(np.int64), np.floor(cy - half).astype(np.int64)


def _centroid(annotation: Annotation, ctx: _Context, rng: np.random.Generator):
    cx, cy = centroid(_level_vertices(annotation, ctx))
    return _centred(np.array([cx]), np.array([cy]), ctx)


def _random_in_polygon(annotation: Annotation, ctx: _Context, rng: np.random.Generator):
    vertices = _level_vertices(annotation, ctx)
    if not has_area(vertices):  # dots and point sets: centre on their points
        picks = rng.integers(0, len(vertices), ctx.per_annotation)
        return _centred(vertices[picks, 0], vertices[picks, 1], ctx)
    holes = [hole / ctx.downsample for hole in annotation.holes]
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    found: list[np.ndarray] = []
    n_found = 0
    for _ in range(200):
        points = rng.uniform(low, high, size=(4 * ctx.per_annotation, 2))
        inside = points[points_in_polygon(points, vertices, holes)]
        found.append(inside)
        n_found += len(inside)
        if n_found >= ctx.per_annotation:
            break
    points = np.concatenate(found)[: ctx.per_annotation]
    return _centred(points[:, 0], points[:, 1], ctx)


def _grid(annotation: Annotation, ctx: _Context, rng: np.random.Generator):
    vertices = _level_vertices(annotation, ctx)
    if not has_area(vertices):
        return _centroid(annotation, ctx, rng)
    x0, y0 = np.floor(vertices.min(axis=0)).astype(np.int64)
    x1, y1 = np.ceil(vertices.max(axis=0)).astype(np.int64)
    lefts = np.arange(x0, max(x1, x0 + 1), ctx.stride)
    tops = np.arange(y0, max(y1, y0 + 1), ctx.stride)
    lefts, tops = (a.ravel() for a in np.meshgrid(lefts, tops))
    # overlap measured on a coarse raster: 16 cells a patch side are plenty for a threshold
    cell = max(1, ctx.footprint // 16)
    size = (int((x1 - x0) // cell) + 2, int((y1 - y0) // cell) + 2)
    holes = [hole / ctx.downsample for hole in annotation.holes]
    mask = rasterize([(vertices, holes, 1)], size, (float(x0), float(y0)), 1 / cell)
    window = ctx.footprint // cell
    inside = window_sums(mask, (tops - y0) // cell, (lefts - x0) // cell, window) / window**2
    keep = inside >= ctx.min_overlap
    return lefts[keep], tops[keep]


SAMPLERS: dict[str, Sampler] = {
    "jitter": _jitter,
    "centroid": _centroid,
    "grid": _grid,
    "random-in-polygon": _random_in_polygon,
}
_REDRAWN = ("jitter", "random-in-polygon")  # samplers that draw again for patches excluded
_REDRAW_ROUNDS = 20


def patch_centres(xs: np.ndarray, ys: np.ndarray, downsample: float, footprint: int) -> np.ndarray:
    """The level-0 centres, ``(K, 2)``, of patches of ``footprint`` level pixels at level
    top-lefts ``xs``, ``ys`` (placed as stored: ``level0_from_level_px``)."""
    extent0 = footprint * downsample
    return np.column_stack([
        level0_from_level_px(xs, downsample) + extent0 / 2, level0_from_level_px(ys, downsample) + extent0 / 2,
    ]).astype(np.float64)


def containing(annotations: Sequence[Annotation], points: np.ndarray) -> np.ndarray:
    """For each level-0 point, the index of the last of ``annotations`` that contains it
    (holes respected; dots and point sets contain nothing), -1 where none does."""
    found = np.full(len(points), -1, np.int64)
    for index, annotation in enumerate(annotations):
        x0, y0, x1, y1 = annotation.bbox
        near = np.flatnonzero(
            (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
        )
        if len(near):
            found[near[points_in_polygon(points[near], annotation.vertices, annotation.holes)]] = index
    return found


def _centred_in(
    exclusions: Sequence[Annotation], xs: np.ndarray, ys: np.ndarray, ctx: _Context
) -> np.ndarray:
    """Which patches (level top-left ``xs``, ``ys``) have their level-0 centre in an exclusion."""
    return containing(exclusions, patch_centres(xs, ys, ctx.downsample, ctx.footprint)) >= 0


def _nearby(annotation: Annotation, exclusions: Sequence[Annotation], reach: float) -> list[Annotation]:
    """The exclusions with an area within ``reach`` level-0 pixels of the annotation's box."""
    x0, y0, x1, y1 = annotation.bbox
    return [
        e for e in exclusions
        if has_area(e.vertices) and e.bbox[0] <= x1 + reach and e.bbox[2] >= x0 - reach
        and e.bbox[1] <= y1 + reach and e.bbox[3] >= y0 - reach
    ]


def _sample(
    sampler: str, annotation: Annotation, ctx: _Context, rng: np.random.Generator,
    exclusions: Sequence[Annotation],
) -> tuple[np.ndarray, np.ndarray, int]:
    """One annotation's patches, none centred in ``exclusions`` (those near it), and how many
    were dropped. The exclusions are holes of the annotation for the samplers that respect
    holes; ``jitter`` and ``random-in-polygon`` draw again (up to 20 rounds) for the patches
    dropped, ``centroid`` moves its patch to a point of the annotation outside them."""
    if not exclusions:
        xs, ys = SAMPLERS[sampler](annotation, ctx, rng)
        return xs, ys, 0
    cut = replace(annotation, holes=annotation.holes + tuple(e.vertices for e in exclusions))
    xs, ys = SAMPLERS[sampler](cut, ctx, rng)
    keep = ~_centred_in(exclusions, xs, ys, ctx)
    wanted = len(xs)
    xs, ys = xs[keep], ys[keep]
    if sampler in _REDRAWN:
        for _ in range(_REDRAW_ROUNDS):
            if len(xs) >= wanted:
                break
            more_x, more_y = SAMPLERS[sampler](cut, ctx, rng)
            more = ~_centred_in(exclusions, more_x, more_y, ctx)
            xs, ys = np.concatenate([xs, more_x[more]]), np.concatenate([ys, more_y[more]])
        xs, ys = xs[:wanted], ys[:wanted]
    elif sampler == "centroid" and len(xs) == 0 and has_area(annotation.vertices):
        point = point_inside(annotation.vertices, cut.holes)
        if point is not None:
            xs, ys = _centred(*(np.array([v / ctx.downsample]) for v in point), ctx)
            keep = ~_centred_in(exclusions, xs, ys, ctx)
            xs, ys = xs[keep], ys[keep]
    return xs, ys, wanted - len(xs)


def _background(
    annotations: Sequence[Annotation], tissue: TissueMask, ctx: _Context, count: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` patches centred on tissue, overlapping no annotation (nor exclusion,
    passed among ``annotations``), mostly tissue."""
    scale = 1 / tissue.downsample
    shapes = [(a.vertices, a.holes, 1) for a in annotations if has_area(a.vertices)]
    annotated = rasterize(shapes, tissue.mask.shape[::-1], (0.0, 0.0), scale)
    for a in annotations:  # dots and point sets mark their own cells
        cols = np.clip((a.vertices[:, 0] * scale).astype(int), 0, tissue.mask.shape[1] - 1)
        rows = np.clip((a.vertices[:, 1] * scale).astype(int), 0, tissue.mask.shape[0] - 1)
        annotated[rows, cols] = 1
    candidates = np.flatnonzero(tissue.mask & (annotated == 0))
    if candidates.size == 0 or count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    window = max(1, int(round(ctx.footprint * ctx.downsample * scale)))
    # a bounded random subset of candidate centres keeps the window tests cheap
    picks = rng.choice(candidates, size=min(candidates.size, 50 * count + 1000), replace=False)
    rows, cols = np.divmod(picks, tissue.mask.shape[1])
    tops, lefts = rows - window // 2, cols - window // 2
    tissue_sums = window_sums(tissue.mask, tops, lefts, window)
    annotated_sums = window_sums(annotated, tops, lefts, window)
    keep = np.flatnonzero((tissue_sums >= 0.5 * window**2) & (annotated_sums == 0))[:count]
    centre_x = (cols[keep] + 0.5) * tissue.downsample / ctx.downsample
    centre_y = (rows[keep] + 0.5) * tissue.downsample / ctx.downsample
    return _centred(centre_x, centre_y, ctx)


def plan_patches(
    annotations: Sequence[Annotation],
    slide: SlideInfo,
    *,
    sampler: str = "jitter",
    resolution: Resolution | None = None,
    patch_size: int = 256,
    per_annotation: int = 30,
    seed: int = 0,
    stride: int | None = None,
    min_overlap: float = 0.5,
    background: int = 0,
    tissue: TissueMask | None = None,
    drop_partial: bool = False,
    slide_index: int = 0,
    labels: Mapping[str, int] | None = None,
    exclusions: Sequence[Annotation] = (),
) -> PatchPlan:
    """Plan the patches of one slide.

    ``sampler``: ``jitter`` (``per_annotation`` random offsets overlapping each annotation's
    bounding box), ``centroid`` (one patch centred on each), ``grid`` (tiles at ``stride``
    pixels whose area inside the polygon is at least ``min_overlap``), ``random-in-polygon``
    (``per_annotation`` centres uniform inside the polygon, holes respected), or
    ``background`` (only background patches). ``background`` > 0 adds that many patches from
    ``tissue`` outside every annotation, labelled ``background``. Sizes are pixels of the
    level read (``resolution``, default level 0 at ``patch_size``). Annotations entirely
    outside the slide are skipped; patches crossing its edge are flagged ``padded`` or, with
    ``drop_partial``, left out. Each annotation draws from its own stream of ``seed``.
    ``exclusions`` are areas to leave out: no patch is centred in one (each sampler treats them
    as holes of the annotations they overlap) and background patches do not touch them.
    The sampling options are checked by ``SamplingOptions``.
    """
    sampling = SamplingOptions(
        sampler=sampler, per_annotation=per_annotation, stride=stride, min_overlap=min_overlap,
        background=background, drop_partial=drop_partial, seed=seed,
    )
    return plan_slide_patches(
        annotations, slide, sampling, resolution=resolution, patch_size=patch_size, tissue=tissue,
        slide_index=slide_index, labels=labels, exclusions=exclusions,
    )


def plan_slide_patches(
    annotations: Sequence[Annotation],
    slide: SlideInfo,
    sampling: SamplingOptions,
    *,
    resolution: Resolution | None = None,
    patch_size: int = 256,
    tissue: TissueMask | None = None,
    slide_index: int = 0,
    labels: Mapping[str, int] | None = None,
    exclusions: Sequence[Annotation] = (),
) -> PatchPlan:
    """``plan_patches`` with its sampling options as one validated record."""
    sampler, per_annotation, seed = sampling.sampler, sampling.per_annotation, sampling.seed
    stride, min_overlap, background = sampling.stride, sampling.min_overlap, sampling.background
    drop_partial = sampling.drop_partial
    resolution = resolution or Resolution(0, patch_size, None)
    slide.check_level(resolution.level)
    if sampler == BACKGROUND_LABEL:
        background = background or per_annotation * len(annotations)
    if background and tissue is None:
        raise ParameterError("background patches need a tissue mask of the slide")
    extra = (BACKGROUND_LABEL,) if background else ()
    labels = label_codes(annotations, extra) if labels is None else labels
    downsample = slide.level_downsamples[resolution.level]
    level_w, level_h = slide.level_dimensions[resolution.level]
    footprint = resolution.read_size_px
    ctx = _Context(
        downsample, footprint, (level_w, level_h), per_annotation, stride or footprint, min_overlap
    )
    width0, height0 = slide.dimensions
    xs, ys, ids, codes, skipped = [], [], [], [], []
    excluded = 0
    for annotation in annotations:
        x_min, y_min, x_max, y_max = annotation.bbox
        if x_max < 0 or y_max < 0 or x_min >= width0 or y_min >= height0:
            skipped.append(annotation.id)
            continue
        if sampler == BACKGROUND_LABEL:
            continue
        rng = np.random.default_rng([seed, slide_index, annotation.id])
        nearby = _nearby(annotation, exclusions, footprint * downsample)
        ax, ay, n_excluded = _sample(sampler, annotation, ctx, rng, nearby)
        excluded += n_excluded
        xs.append(ax)
        ys.append(ay)
        ids.append(np.full(len(ax), annotation.id, np.int64))
        label = -1 if annotation.label is None else labels[annotation.label]
        codes.append(np.full(len(ax), label, np.int32))
    if background:
        rng = np.random.default_rng([seed, slide_index, -1 % 2**32])
        bx, by = _background([*annotations, *exclusions], tissue, ctx, background, rng)
        xs.append(bx)
        ys.append(by)
        ids.append(np.full(len(bx), -1, np.int64))
        codes.append(np.full(len(bx), labels[BACKGROUND_LABEL], np.int32))
    level_x = np.concatenate(xs) if xs else np.zeros(0, np.int64)
    level_y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    annotation_id = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    label = np.concatenate(codes) if codes else np.zeros(0, np.int32)
    padded = (level_x < 0) | (level_y < 0) | (level_x + footprint > level_w) | (level_y + footprint > level_h)
    dropped = 0
    if drop_partial:
        dropped = int(padded.sum())
        keep = ~padded
        level_x, level_y, annotation_id, label, padded = (
            level_x[keep], level_y[keep], annotation_id[keep], label[keep], padded[keep]
        )
    n = len(level_x)
    return PatchPlan(
        slide=np.full(n, slide_index, np.int32),
        level=np.full(n, resolution.level, np.int32),
        x=level0_from_level_px(level_x, downsample),
        y=level0_from_level_px(level_y, downsample),
        annotation_id=annotation_id,
        label=label,
        padded=padded,
        skipped_annotations=tuple(skipped),
        dropped_partial=dropped,
        dropped_excluded=excluded,
    )


def plan_jitter(
    annotations: Sequence[Annotation],
    slide: SlideInfo,
    *,
    level: int = 0,
    patch_size: int = 256,
    per_annotation: int = 30,
    seed: int = 0,
    slide_index: int = 0,
    labels: dict[str, int] | None = None,
) -> PatchPlan:
    """The recipe's plan: ``per_annotation`` jittered patches at ``level`` around each annotation."""
    if patch_size < 1:
        raise ParameterError(f"patch size must be a positive number of pixels, got {patch_size}")
    return plan_patches(
        annotations, slide, sampler="jitter", resolution=Resolution(level, patch_size, None),
        per_annotation=per_annotation, seed=seed, slide_index=slide_index, labels=labels,
    )
