"""The options of an extraction, as typed records validated in one place and recorded from one.

Five groups are recorded in the store (``parameters``) because they decide its content:
``ResolutionOptions``, ``SamplingOptions``, ``TilingOptions`` (only when tiling), ``LabelOptions``
and ``LayoutOptions``; a resume or an append must use the same ones. ``ExecutionOptions`` (workers, executor, reader choice, ...)
only decide how the work is done. ``extract()``'s keywords and the CLI's flags are both built
from these fields, so a new option is one field here (and its flag).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .._errors import ParameterError, option
from ..slides._color import COLORS
from ..slides._slide import ResolutionOptions

__all__ = [
    "EXECUTORS", "LABEL_SOURCES", "READERS", "SAMPLERS", "ExecutionOptions", "ExtractOptions", "FilterOptions", "LabelOptions",
    "LayoutOptions", "Mode", "ResolutionOptions", "SamplingOptions", "TilingOptions",
]

SAMPLERS = ("jitter", "centroid", "grid", "random-in-polygon", "background")
EXECUTORS = ("threads", "processes")
READERS = ("auto", "tiles", "openslide")
LABEL_SOURCES = ("name", "attribute")
MAX_SHARD_BYTES = 2 << 30  # one shard's pixels, held in memory by each task
Mode = Literal["create", "overwrite", "resume", "append"]


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParameterError(f"unknown {name.replace('_', ' ')} {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class SamplingOptions:
    """Where patches are cut: ``sampler`` (``jitter``, ``centroid``, ``grid``,
    ``random-in-polygon``, ``background``), ``per_annotation`` patches each, the grid's
    and the tiles' ``stride`` (pixels of the level read; default the patch footprint) and ``min_overlap``
    (fraction of a grid tile inside the polygon), ``background`` extra tissue patches outside
    every annotation, ``drop_partial`` (leave out patches crossing the slide edge) and the
    plan's ``seed``."""

    sampler: str = "jitter"
    per_annotation: int = 30
    stride: int | None = None
    min_overlap: float = 0.5
    background: int = 0
    drop_partial: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("sampler", self.sampler, SAMPLERS)
        if self.per_annotation < 1:
            raise ParameterError(f"{option('per_annotation')} must be at least 1, got {self.per_annotation}")
        if self.seed < 0:
            raise ParameterError(f"{option('seed')} must be a whole number >= 0, got {self.seed}")
        if not 0 < self.min_overlap <= 1:
            raise ParameterError(f"{option('min_overlap')} is a fraction in (0, 1], got {self.min_overlap}")
        if self.stride is not None and self.stride < 1:
            raise ParameterError(f"{option('stride')} must be a positive number of pixels, got {self.stride}")
        if self.background < 0:
            raise ParameterError(f"{option('background')} patch count must be >= 0, got {self.background}")

    @property
    def wants_background(self) -> bool:
        """Whether the plan needs each slide's tissue mask."""
        return self.background > 0 or self.sampler == "background"


@dataclass(frozen=True)
class TilingOptions:
    """Whole-slide tiling (``tiles``): instead of sampling around annotations, a grid of tiles
    over every slide, from level pixel 0 at the sampling options' ``stride`` (default the tile's
    footprint: no overlap), keeping the tiles whose share of tissue in the slide's tissue mask
    is at least ``tile_min_tissue`` (decided on the mask, before any pixel is read; the quality
    filter ``min_tissue`` measures extracted pixels). The mask is the saturation of the slide's
    coarsest level thresholded with Otsu's method, or the image ``tissue_mask`` (a file, or a
    folder of files named like the slides; non-zero = tissue, any size, stretched over the
    slide); then pieces smaller than ``min_tissue_area`` and holes smaller than
    ``max_hole_area`` (both in level-0 pixels^2) are dropped and filled. Annotations, when
    given, label the tiles (the last annotation containing a tile's centre, else
    ``background``); ``within_annotations`` keeps only the tiles centred in one."""

    tiles: bool = False
    tissue_mask: str | None = None
    tile_min_tissue: float = 0.5
    min_tissue_area: float = 256.0**2
    max_hole_area: float = 256.0**2
    within_annotations: bool = False

    def __post_init__(self) -> None:
        if self.tissue_mask is not None:
            object.__setattr__(self, "tissue_mask", str(self.tissue_mask))
        if not 0 < self.tile_min_tissue <= 1:
            raise ParameterError(f"{option('tile_min_tissue', self.tile_min_tissue)}: give a share of the tile, in (0, 1]")
        for name in ("min_tissue_area", "max_hole_area"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ParameterError(f"{option(name, value)}: give an area in level-0 pixels^2, 0 or more")
        if not self.tiles:
            changed = [f.name for f in fields(self) if f.name != "tiles" and getattr(self, f.name) != f.default]
            if changed:
                raise ParameterError(f"{option(changed[0])} applies to whole-slide tiling: add {option('tiles', True)}")


@dataclass(frozen=True)
class LabelOptions:
    """How annotation files are read and labelled: ``label_from`` (``name`` or ``attribute``),
    ``exclude_detections``, ``exclude_labels`` (their annotations become areas to leave out),
    ``strict_annotations`` (refuse degenerate objects), ``label_map`` (rename or merge labels;
    ``keep_only`` drops the labels it does not name) and ``label_order`` (fixed label codes;
    not recorded: the store's ``label_names`` are)."""

    label_from: str = "name"
    exclude_detections: bool = False
    exclude_labels: tuple[str, ...] = ()
    strict_annotations: bool = False
    label_map: Mapping[str, str] | None = None
    keep_only: bool = False
    label_order: tuple[str, ...] | None = field(default=None, metadata={"recorded": False})

    def __post_init__(self) -> None:
        _choice("label_from", self.label_from, LABEL_SOURCES)
        object.__setattr__(self, "exclude_labels", tuple(self.exclude_labels))
        if self.label_order is not None:
            object.__setattr__(self, "label_order", tuple(self.label_order))
        if self.label_map is not None:
            object.__setattr__(self, "label_map", dict(self.label_map))


@dataclass(frozen=True)
class LayoutOptions:
    """How the store is laid out: ``shard_size`` patches per shard file, the patch ``codec``,
    ``masks`` (per-patch label masks), ``quality`` (per-patch quality measures: tissue, focus,
    marker ink, brightness, stain saturation; see ``wsizarr.QUALITY_MEASURES``) and ``color``
    (``unchanged``, or ``srgb``: pixels converted from each slide's ICC profile to sRGB; slides
    without one stay unchanged)."""

    shard_size: int = 256
    codec: str = "zstd"
    masks: bool = False
    quality: bool = True
    color: str = "unchanged"

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ParameterError(f"{option('shard_size')} must be at least 1 patch, got {self.shard_size}")
        from ..store._codecs import CODECS  # the codec table lives with the schema

        _choice("codec", self.codec, tuple(CODECS))
        _choice("color", self.color, COLORS)


@dataclass(frozen=True)
class FilterOptions:
    """Which extracted patches the store keeps, by their quality measures (``_quality``):
    ``min_tissue`` (tissue_fraction, 0-1), ``min_sharpness`` (grey levels^2), ``max_pen``
    (pen_fraction, 0-1); None keeps all. The whole plan is extracted and measured, then the
    patches that pass are written into the store (``subset``), so the store is the same
    whatever the executor and however often the run was resumed."""

    min_tissue: float | None = None
    min_sharpness: float | None = None
    max_pen: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_tissue", "max_pen"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ParameterError(f"{option(name, value)}: give a share of the patch's pixels, 0 to 1")
        if self.min_sharpness is not None and not (self.min_sharpness >= 0 and math.isfinite(self.min_sharpness)):
            raise ParameterError(
                f"{option('min_sharpness', self.min_sharpness)}: give a variance of the Laplacian, 0 or more "
                "(see `wsizarr info` for the store's values)"
            )

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))


@dataclass(frozen=True)
class ExecutionOptions:
    """How the work is done (never recorded): ``workers`` threads or processes (``executor``)
    or a ``dask.distributed`` ``client``; ``reader`` (``auto``: tiles where tifffile reads the
    pyramid, else OpenSlide); ``strict`` (fail on the first unreadable slide of a cohort);
    ``progress(done, total)`` called as shards finish; ``on_note(line)`` called with each
    annotation file's note on skipped objects or warnings, as slides are prepared."""

    workers: int | None = None
    executor: str = "threads"
    client: Any = field(default=None, repr=False, compare=False)
    reader: str = "auto"
    strict: bool = False
    progress: Callable[[int, int], None] | None = field(default=None, repr=False, compare=False)
    on_note: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ParameterError(f"{option('workers')} must be at least 1, got {self.workers}")
        _choice("executor", self.executor, EXECUTORS)
        _choice("reader", self.reader, READERS)


@dataclass(frozen=True)
class ExtractOptions:
    """Every option of an extraction, and the ``mode``: ``create`` a new store, ``overwrite``
    one (built beside it, swapped in when complete), ``resume`` an interrupted run, or
    ``append`` slides to a store."""

    resolution: ResolutionOptions = field(default_factory=ResolutionOptions)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    labels: LabelOptions = field(default_factory=LabelOptions)
    layout: LayoutOptions = field(default_factory=LayoutOptions)
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    mode: Mode = "create"
    filters: FilterOptions = field(default_factory=FilterOptions)
    tiling: TilingOptions = field(default_factory=TilingOptions)

    def __post_init__(self) -> None:
        if self.tiling.tiles and (self.sampling.sampler != "jitter" or self.sampling.background):
            given = option("sampler", self.sampling.sampler) if self.sampling.background == 0 else option("background")
            raise ParameterError(
                f"{option('tiles', True)} lays its own grid and labels the tiles outside every annotation "
                f"background; drop {given}"
            )
        shard_bytes = self.layout.shard_size * self.resolution.patch_size ** 2 * 3
        if shard_bytes > MAX_SHARD_BYTES:
            raise ParameterError(
                f"a shard of {self.layout.shard_size} patches of {self.resolution.patch_size} px is "
                f"{shard_bytes / 2**30:.1f} GiB in memory (at most {MAX_SHARD_BYTES / 2**30:.0f} GiB); "
                f"lower {option('shard_size')} or {option('patch_size')}"
            )
        if self.filters.active and not self.layout.quality:
            raise ParameterError(
                f"the quality filters need the quality measures: drop {option('quality', False)}"
            )
        if self.filters.active and self.mode == "append":
            raise ParameterError(
                f"the quality filters apply when a store is made, not to {option('append', True)}: append "
                "without them, then write the patches that pass into a new store with `wsizarr subset`"
            )

    @classmethod
    def from_keywords(cls, *, overwrite: bool = False, resume: bool = False, append: bool = False,
                      **keywords: Any) -> ExtractOptions:
        """The options from ``extract()``'s flat keywords (each a field of one group)."""
        if overwrite and (resume or append):
            raise ParameterError(
                f"{option('overwrite', True)} excludes {option('resume', True)} and {option('append', True)}; "
                "choose one"
            )
        groups: dict[str, Any] = {}
        for name, group in (("resolution", ResolutionOptions), ("sampling", SamplingOptions),
                            ("labels", LabelOptions), ("layout", LayoutOptions),
                            ("execution", ExecutionOptions), ("filters", FilterOptions), ("tiling", TilingOptions)):
            names = {f.name for f in fields(group)}
            groups[name] = group(**{k: keywords.pop(k) for k in list(keywords) if k in names})
        if keywords:
            raise TypeError(f"unknown options: {', '.join(sorted(keywords))}")
        # an interrupted append is finished by resuming it: resume with append is a resume
        mode: Mode = "overwrite" if overwrite else "resume" if resume else "append" if append else "create"
        return cls(**groups, mode=mode)

    def parameters(self) -> dict[str, Any]:
        """The recorded options as the store's ``parameters`` attribute (JSON-ready); the
        tiling options only when tiling, so the other stores' parameters are as they were."""
        recorded: dict[str, Any] = {}
        tiling = (self.tiling,) if self.tiling.tiles else ()
        for group in (self.resolution, self.sampling, *tiling, self.labels, self.layout):
            for f in fields(group):
                if f.metadata.get("recorded", True):
                    value = getattr(group, f.name)
                    recorded[f.name] = list(value) if isinstance(value, tuple) else value
        recorded["level"] = self.resolution.recorded_level
        recorded["reader"] = self.execution.reader  # the pixels differ by reader: recorded too
        return recorded

