"""Annotations + slide geometry -> a patch plan: plain numpy arrays, deterministic from a seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._annotations import Annotation
from ._errors import ParameterError
from ._slide import SlideInfo, level0_from_level_px

__all__ = ["PatchPlan", "label_codes", "plan_jitter"]


@dataclass(frozen=True, eq=False)
class PatchPlan:
    """Where every patch comes from: aligned 1-D arrays of one length N.

    ``x``/``y`` are level-0 top-left pixels on ``level``'s pixel grid, ``annotation_id`` is the
    annotation the patch was cut around, ``label`` an index into the label names (-1 unlabelled)
    and ``slide`` an index into the slide table.
    """

    slide: np.ndarray  # int32
    level: np.ndarray  # int32
    x: np.ndarray  # int64
    y: np.ndarray  # int64
    annotation_id: np.ndarray  # int64
    label: np.ndarray  # int32

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """The plan's arrays by store name."""
        return {
            "x": self.x, "y": self.y, "level": self.level,
            "annotation_id": self.annotation_id, "label": self.label, "slide": self.slide,
        }


def label_codes(annotations: Sequence[Annotation]) -> dict[str, int]:
    """Label name -> code, codes assigned in sorted name order so they are stable."""
    names = sorted({a.label for a in annotations if a.label is not None})
    return {name: code for code, name in enumerate(names)}


def _overlap_range(lo: float, hi: float, patch_px: int, level_px: int) -> tuple[int, int]:
    """Inclusive range of patch starts whose span overlaps ``[lo, hi]``, inside the level if possible."""
    first = int(np.floor(lo)) - patch_px + 1
    last = max(int(np.ceil(hi)) - 1, first)
    inside_first, inside_last = max(first, 0), min(last, level_px - patch_px)
    if inside_first <= inside_last:
        return inside_first, inside_last
    return first, last


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
    """Plan ``per_annotation`` randomly jittered patches around every annotation.

    Each patch of ``patch_size`` pixels at ``level`` overlaps its annotation's bounding box;
    patches stay inside the slide where the annotation allows it. Every annotation draws from its
    own stream of ``seed``, so the plan is reproducible and an annotation's patches do not
    change when others are added. Raises ``ParameterError`` on invalid parameters.
    """
    slide.check_level(level)
    if patch_size < 1:
        raise ParameterError(f"patch size must be a positive number of pixels, got {patch_size}")
    if per_annotation < 1:
        raise ParameterError(f"patches per annotation must be at least 1, got {per_annotation}")
    labels = label_codes(annotations) if labels is None else labels
    downsample = slide.level_downsamples[level]
    level_w, level_h = slide.level_dimensions[level]
    xs, ys = [], []
    for annotation in annotations:
        x_min, y_min, x_max, y_max = (v / downsample for v in annotation.bbox)
        x_lo, x_hi = _overlap_range(x_min, x_max, patch_size, level_w)
        y_lo, y_hi = _overlap_range(y_min, y_max, patch_size, level_h)
        rng = np.random.default_rng([seed, slide_index, annotation.id])
        xs.append(rng.integers(x_lo, x_hi, per_annotation, endpoint=True))
        ys.append(rng.integers(y_lo, y_hi, per_annotation, endpoint=True))
    n = per_annotation * len(annotations)
    level_x = np.concatenate(xs) if xs else np.zeros(0, np.int64)
    level_y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    return PatchPlan(
        slide=np.full(n, slide_index, np.int32),
        level=np.full(n, level, np.int32),
        x=level0_from_level_px(level_x, downsample),
        y=level0_from_level_px(level_y, downsample),
        annotation_id=np.repeat(np.array([a.id for a in annotations], np.int64), per_annotation),
        label=np.repeat(
            np.array([-1 if a.label is None else labels[a.label] for a in annotations], np.int32),
            per_annotation,
        ),
    )
