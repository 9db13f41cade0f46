"""Per-slide tasks before any pixel is read: pairing slides with annotation files, preparing
each slide (geometry, content hash, annotations read, labels) and planning its patches.

``prepare_slide`` and ``plan_slide`` are plain functions of picklable records, so the
coordinator runs them on the same executor as the shard tasks (threads, processes or a dask
cluster) and keeps only their small results: a :class:`PreparedSlide` is O(1) in the slide's
patches. The plan itself goes from :class:`SlidePlan` straight into the store.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openslide

from .._errors import ParameterError, SlideError, WsizarrError, option
from .._locations import parse_location
from .._text import count
from ..annotations._files import (
    ANNOTATION_SUFFIXES,
    annotation_note,
    read_annotation_file,
)
from ..annotations._labels import apply_label_map
from ..annotations._records import Annotation, AnnotationFile
from ..slides._slide import SlideInfo, open_slide, resolve_resolution, slide_info
from ..slides._tiles import (
    content_digest,
    is_remote,
    open_reader,
    reader_choice,
    tiff_slide_info,
    with_subifd_levels,
)
from ..slides._tissue import (
    TissueMask,
    clean_tissue,
    mask_image,
    tissue_mask,
    tissue_outlines,
)
from ._execution import SlideSource
from ._options import LabelOptions, ResolutionOptions, SamplingOptions, TilingOptions
from ._sampling import BACKGROUND_LABEL, PatchPlan, plan_slide_patches
from ._tiling import TISSUE_LABEL, outline_pixel_px, plan_tiles, tissue_view_px

__all__ = [
    "AnnotationSource", "PlanRequest", "PrepareRequest", "PreparedSlide", "SlideFailure",
    "SlidePlan", "describe_slide", "match_annotations", "plan_slide", "prepare_slide", "read_slide_info",
]

AnnotationSource = str | Path | Sequence[Annotation]
SlidePath = str | Path  # a local path, or an s3:// URL kept as text
_REMOTE_SLIDE_SUFFIXES = (".svs", ".tif", ".tiff")
# what OpenSlide opens from a single file (MIRAX's .mrxs beside its folder of data, which is skipped)
_LOCAL_SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi",
)


@dataclass(frozen=True)
class SlideFailure:
    """A slide left out of a cohort: its path and the one-line reason."""

    path: str
    reason: str
    error: WsizarrError | None = field(default=None, repr=False, compare=False)


def _path_or_url(path: str | Path) -> SlidePath:
    """A local path as a ``Path``; an ``s3://`` URL kept as text (``Path`` would fold its ``//``)."""
    return str(path) if is_remote(path) else Path(path)


def _annotation_folder(
    annotations: Any, storage_options: Mapping[str, str] | None
) -> dict[str, SlidePath] | None:
    """Annotation files by stem when ``annotations`` is a folder or an ``s3://`` prefix
    (ending in ``/``), else None."""
    if isinstance(annotations, (str, Path)) and is_remote(annotations):
        if not str(annotations).endswith("/"):
            return None
        prefix = parse_location(str(annotations), storage_options)
        return {
            Path(key).stem: f"{str(annotations).rstrip('/')}/{key}" for key in prefix.keys()
            if Path(key).suffix.lower() in ANNOTATION_SUFFIXES
        }
    if isinstance(annotations, (str, Path)) and Path(annotations).is_dir():
        return {
            f.stem: f for f in sorted(Path(annotations).iterdir())
            if f.is_file() and f.suffix.lower() in ANNOTATION_SUFFIXES
        }
    return None


def _is_folder(path: str | Path) -> bool:
    """Whether ``path`` names a cohort: an ``s3://`` prefix ending in ``/``, or a local folder."""
    return str(path).endswith("/") if is_remote(path) else Path(path).is_dir()


def _slide_list(slides: str | Path | Sequence[str | Path], storage_options: Mapping[str, str] | None) -> list[SlidePath]:
    """The slides given; a local folder stands for its slide files (OpenSlide's formats, by name),
    an ``s3://`` prefix ending in ``/`` for its .svs/.tif/.tiff objects. ``ParameterError`` for a
    folder or prefix with none."""
    paths = [slides] if isinstance(slides, (str, Path)) else list(slides)
    out: list[SlidePath] = []
    for path in paths:
        if not _is_folder(path):
            out.append(_path_or_url(path))
            continue
        if is_remote(path):
            keys = parse_location(str(path), storage_options).keys()
            found: list[SlidePath] = [
                f"{str(path).rstrip('/')}/{k}" for k in keys if Path(k).suffix.lower() in _REMOTE_SLIDE_SUFFIXES
            ]
            suffixes = _REMOTE_SLIDE_SUFFIXES
        else:
            found = [f for f in sorted(Path(path).iterdir()) if f.is_file() and f.suffix.lower() in _LOCAL_SLIDE_SUFFIXES]
            suffixes = _LOCAL_SLIDE_SUFFIXES
        if not found:
            raise ParameterError(f"{path}: no slides in it (files ending in {', '.join(suffixes)}); check the path")
        out += found
    return out


def match_annotations(
    slides: str | Path | Sequence[str | Path], annotations: AnnotationSource | Sequence[str | Path] | None,
    storage_options: Mapping[str, str] | None = None, *, tiles: bool = False,
) -> tuple[list[tuple[SlidePath, AnnotationSource | None]], list[str], list[str]]:
    """Pair slides with their annotations.

    ``annotations`` is a file or ``Annotation`` records (one slide), a folder (or an ``s3://``
    prefix ending in ``/``) whose files (``.xml``, ``.geojson``, ``.json``) match slides by file
    stem, or a list of files aligned with ``slides``. Slides and annotation files may be
    ``s3://`` URLs (``storage_options`` as for the store). With ``tiles`` (whole-slide tiling)
    every slide is kept, paired with None where it has no annotations (``annotations`` may be
    None). Returns the pairs, the slides without annotations and the annotation files without a
    slide.
    """
    single = isinstance(slides, (str, Path)) and not _is_folder(slides)
    slide_paths = _slide_list(slides, storage_options)
    if not slide_paths:
        raise ParameterError(f"{slides if single else 'slides'}: no slides given or found; check the paths")
    if annotations is None:
        if not tiles:
            raise ParameterError(
                f"no annotations given: give {option('annotations')} to extract around them, or tile the whole "
                f"slides ({option('tiles', True)})"
            )
        return [(s, None) for s in slide_paths], [], []
    by_stem = _annotation_folder(annotations, storage_options)
    if by_stem is not None:
        pairs = [(s, by_stem.get(Path(s).stem)) for s in slide_paths if tiles or Path(s).stem in by_stem]
        stems = {Path(s).stem for s in slide_paths}
        if not any(source is not None for _, source in pairs):
            raise ParameterError(
                f"{annotations}: no annotation file matches any slide by name "
                f"({', '.join(Path(s).name for s in slide_paths[:3])}...); name them like the slides"
            )
        return (
            pairs,
            [str(s) for s in slide_paths if Path(s).stem not in by_stem],
            [str(f) for stem, f in by_stem.items() if stem not in stems],
        )
    if isinstance(annotations, (str, Path)) or (
        annotations and all(isinstance(a, Annotation) for a in annotations)
    ):
        if len(slide_paths) > 1:
            raise ParameterError(
                "several slides need a folder of annotation files named like the slides "
                "(slide.svs -> slide.xml), or one annotation file per slide"
            )
        return [(slide_paths[0], _path_or_url(annotations) if isinstance(annotations, (str, Path)) else annotations)], [], []
    files = [_path_or_url(a) for a in annotations]
    if len(files) != len(slide_paths):
        raise ParameterError(
            f"{count(len(slide_paths), 'slide')} but {count(len(files), 'annotation file')}; give one per slide "
            "or a folder"
        )
    return list(zip(slide_paths, files)), [], []


@dataclass(frozen=True)
class _ReadAnnotations:
    annotations: tuple[Annotation, ...]
    exclusions: tuple[Annotation, ...]
    source: str | None  # the file they came from (None for records)
    note: str | None  # skipped objects and warnings, one line


def _read_annotations(
    annotations: AnnotationSource | None, labels: LabelOptions, storage_options: Mapping[str, str] | None,
) -> _ReadAnnotations:
    """A slide's annotations and exclusions, relabelled by ``labels.label_map`` (none for None)."""
    if annotations is None:
        return _ReadAnnotations((), (), None, None)
    if isinstance(annotations, (str, Path)):
        if is_remote(annotations):
            file, source = _read_remote(str(annotations), labels, storage_options), str(annotations)
        else:
            file, source = _read_file(annotations, labels), str(Path(annotations).resolve())
        records, exclusions = list(file.annotations), tuple(file.exclusions)
        note = annotation_note(file, str(annotations))
    else:
        records, exclusions, source, note = list(annotations), (), None, None
    if labels.label_map is not None:
        records = apply_label_map(records, labels.label_map, keep_only=labels.keep_only)
    return _ReadAnnotations(tuple(records), exclusions, source, note)


def _read_file(path: str | Path, labels: LabelOptions) -> AnnotationFile:
    return read_annotation_file(
        path, label_from=labels.label_from, exclude_detections=labels.exclude_detections,
        exclude_labels=labels.exclude_labels, strict=labels.strict_annotations,
    )


def _read_remote(url: str, labels: LabelOptions, storage_options: Mapping[str, str] | None) -> AnnotationFile:
    """An annotation file on S3, fetched into a temporary folder under its own name."""
    location = parse_location(url, storage_options)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder, Path(location.path).name)
        size = location.size()
        local.write_bytes(location.read_range(0, size) if size else b"")
        return _read_file(local, labels)


def _annotations_digest(records: Sequence[Annotation]) -> str:
    """SHA-256 of the annotations as read (names, labels, types, every vertex): a resume
    compares it, so an annotation file edited after a crash is caught."""
    digest = hashlib.sha256()
    for a in records:
        rings = (a.vertices, *a.holes)
        digest.update(json.dumps([a.id, a.name, a.label, a.type, [len(r) for r in rings]]).encode())
        for ring in rings:
            digest.update(np.ascontiguousarray(ring, "<f8").tobytes())
    return digest.hexdigest()


def _slide_hash(handle: openslide.OpenSlide, path: Path) -> str:
    """OpenSlide's content hash of the slide; file bytes where OpenSlide has none."""
    quickhash = handle.properties.get("openslide.quickhash-1")
    if quickhash:
        return quickhash
    with path.open("rb") as file:
        return content_digest(file, path.stat().st_size)


@dataclass(frozen=True, eq=False)
class PrepareRequest:
    """One slide to prepare: the slide, its annotations (None: none, when tiling) and the
    options that read them and the slide."""

    slide: SlidePath
    annotations: AnnotationSource | None
    resolution: ResolutionOptions
    labels: LabelOptions
    reader: str
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False)
    tiling: TilingOptions = field(default_factory=TilingOptions)


@dataclass(frozen=True, eq=False)
class PreparedSlide:
    """A slide ready to plan, small whatever its size: how to read it, its content hash, where
    its annotations come from (and their SHA-256), the labels they use, a note on skipped
    objects or warnings, and when tiling the user's tissue mask image for it (None: Otsu's)."""

    source: SlideSource
    content_hash: str
    annotations: AnnotationSource | None
    annotations_file: str | None
    annotations_sha256: str
    label_names: frozenset[str]
    note: str | None = None
    tissue_mask: str | None = None


def prepare_slide(request: PrepareRequest) -> PreparedSlide | SlideFailure:
    """Open a slide and read its annotations (a task); a slide that cannot be used is a
    ``SlideFailure`` value, so a cohort can go on without it."""
    try:
        return _prepare(request)
    except WsizarrError as exc:
        return SlideFailure(str(request.slide), str(exc), exc)


def read_slide_info(slide: SlidePath, storage_options: Mapping[str, str] | None = None) -> tuple[SlideInfo, str]:
    """A slide's geometry and content hash: through OpenSlide for a local file, from its TIFF
    on S3; ``SlideError`` naming it when it cannot be opened."""
    if is_remote(slide):
        return tiff_slide_info(str(slide), storage_options)
    handle = open_slide(slide)
    try:
        return slide_info(handle, slide), _slide_hash(handle, Path(slide))
    finally:
        handle.close()


def describe_slide(slide: SlidePath, storage_options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What ``wsizarr slide`` shows: vendor, size, objective power, level-0 mpp, each level's
    size, downsample and mpp, the ICC profile, and the reader ``--reader auto`` picks and why."""
    info, content_hash = read_slide_info(slide, storage_options)
    info, reader, why = _as_read(info, "auto", storage_options)
    return {
        "path": info.path, "vendor": info.vendor, "dimensions": list(info.dimensions),
        "objective_power": info.objective_power, "mpp": None if info.mpp is None else list(info.mpp),
        "levels": [
            {"level": level, "dimensions": list(size), "downsample": downsample,
             "mpp": None if info.mpp is None else [m * downsample for m in info.mpp]}
            for level, (size, downsample) in enumerate(zip(info.level_dimensions, info.level_downsamples))
        ],
        "icc_profile": info.icc_profile is not None, "content_hash": content_hash,
        "auto_reader": reader, "auto_reader_reason": why,
    }


def _as_read(
    info: SlideInfo, requested: str, storage_options: Mapping[str, str] | None,
) -> tuple[SlideInfo, str, str]:
    """The slide as its reader sees it, the reader (``reader_choice``) and why: a SubIFD
    pyramid's levels are the tiles reader's own (OpenSlide sees level 0 only)."""
    extended = None if requested == "openslide" else with_subifd_levels(info)
    if extended is not None:
        try:
            reader, why = reader_choice(extended, requested, storage_options)
        except SlideError:
            if requested == "tiles":
                raise
        else:
            if reader == "tiles":
                levels = count(extended.level_count - 1, "SubIFD level")
                return extended, reader, f"{why}; it reads the {levels} OpenSlide does not see"
    reader, why = reader_choice(info, requested, storage_options)
    return info, reader, why


def _prepare(request: PrepareRequest) -> PreparedSlide:
    options = request.storage_options
    info, content_hash = read_slide_info(request.slide, options)
    r = request.resolution
    if request.reader == "openslide" and r.level is not None and r.level >= info.level_count \
            and with_subifd_levels(info) is not None:
        raise ParameterError(
            f"{info.path}: level {r.level} is a SubIFD level, which OpenSlide does not read; read it "
            f"with {option('reader', 'tiles')} (or auto)"
        )
    info, reader, _ = _as_read(info, request.reader, options)
    resolution = resolve_resolution(info, r.patch_size, level=r.level, mpp=r.mpp, magnification=r.magnification)
    read = _read_annotations(request.annotations, request.labels, options)
    labels = frozenset(a.label for a in read.annotations if a.label is not None)
    mask = None
    if request.tiling.tiles:
        labels |= {TISSUE_LABEL, *([BACKGROUND_LABEL] if request.annotations is not None else [])}
        if request.tiling.tissue_mask is not None:
            mask = _mask_file(request.slide, request.tiling.tissue_mask)
            mask_image(mask, info.dimensions)  # a mask that cannot be read fails the slide now
    elif not read.annotations:
        raise ParameterError(f"{read.source or 'annotations'}: no annotations to extract around")
    return PreparedSlide(
        SlideSource(str(request.slide), info, resolution, reader, options), content_hash,
        request.annotations, read.source, _annotations_digest([*read.annotations, *read.exclusions]),
        labels, read.note, mask,
    )


_MASK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif")


def _mask_file(slide: SlidePath, tissue_mask: str) -> str:
    """The tissue mask image of ``slide``: ``tissue_mask`` itself, or in a folder the image
    named like the slide (``slide.svs`` -> ``slide.png``, ``.tif``, ...)."""
    folder = Path(tissue_mask)
    if not folder.is_dir():
        return tissue_mask
    stem = Path(str(slide)).stem
    found = sorted(f for f in folder.iterdir() if f.stem == stem and f.suffix.lower() in _MASK_SUFFIXES)
    if not found:
        raise ParameterError(
            f"{folder}: no tissue mask named like {Path(str(slide)).name} ({stem}.png, {stem}.tif, ...); "
            f"add one, or leave {option('tissue_mask')} out to find the tissue by its colour"
        )
    return str(found[0])


@dataclass(frozen=True, eq=False)
class PlanRequest:
    """One prepared slide to plan, as row ``slide_index`` of the store, with the run's codes."""

    prepared: PreparedSlide
    slide_index: int
    sampling: SamplingOptions
    labels: LabelOptions
    label_codes: Mapping[str, int]
    patch_size: int
    tiling: TilingOptions = field(default_factory=TilingOptions)


@dataclass(frozen=True, eq=False)
class SlidePlan:
    """A slide's plan and the annotations it was made from (to store in the tables)."""

    slide_index: int
    plan: PatchPlan
    annotations: tuple[Annotation, ...]
    exclusions: tuple[Annotation, ...]


def plan_slide(request: PlanRequest) -> SlidePlan:
    """Plan one slide's patches (a task): its annotations are read again (and must be the ones
    prepared), the tissue mask is computed if background patches or tiles are asked for. The
    tiles' slide gets its tissue outlines (label ``tissue``) in its annotation table, before
    its annotations (which masks paint over them)."""
    prepared = request.prepared
    source = prepared.source
    read = _read_annotations(prepared.annotations, request.labels, source.storage_options)
    if _annotations_digest([*read.annotations, *read.exclusions]) != prepared.annotations_sha256:
        raise ParameterError(
            f"{read.source}: the annotation file changed while the extraction ran; run it again"
        )
    tiling = request.tiling
    if tiling.tiles:
        found = (
            _tissue(source, tissue_view_px(source.info, source.resolution)) if prepared.tissue_mask is None
            else mask_image(prepared.tissue_mask, source.info.dimensions)
        )
        tissue = clean_tissue(found, tiling.min_tissue_area, tiling.max_hole_area)
        with ThreadPoolExecutor(1) as pool:  # the outline is traced while the grid is planned
            traced = pool.submit(tissue_outlines, tissue, outline_pixel_px(source.info, source.resolution))
            plan = plan_tiles(
                source.info, tissue, tiling, request.sampling, source.resolution, slide_index=request.slide_index,
                labels=request.label_codes, annotations=None if prepared.annotations is None else read.annotations,
                exclusions=read.exclusions,
            )
        first_id = 1 + max((a.id for a in (*read.annotations, *read.exclusions)), default=-1)
        outlines = tuple(
            Annotation(first_id + k, f"tissue {k + 1}", TISSUE_LABEL, "Polygon", exterior, tuple(holes))
            for k, (exterior, holes) in enumerate(traced.result())
        )
        return SlidePlan(request.slide_index, plan, (*outlines, *read.annotations), read.exclusions)
    tissue = _tissue(source) if request.sampling.wants_background else None
    plan = plan_slide_patches(
        list(read.annotations), source.info, request.sampling, resolution=source.resolution,
        patch_size=request.patch_size, tissue=tissue, slide_index=request.slide_index,
        labels=request.label_codes, exclusions=read.exclusions,
    )
    return SlidePlan(request.slide_index, plan, read.annotations, read.exclusions)


def _tissue(source: SlideSource, max_px: int = 4096) -> TissueMask:
    """The slide's tissue mask, from its coarsest level read by the slide's reader (the tiles
    reader decodes it without OpenSlide's copy to RGBA), at most ``max_px`` px on its longer
    side."""
    with open_reader(source.info, source.reader, source.storage_options) as reader:
        return tissue_mask(reader, max_px)


def label_names(
    existing: Sequence[str], found: set[str], wants_background: bool, label_order: Sequence[str] | None,
) -> tuple[str, ...]:
    """Label names in code order: the store's first, then new ones sorted (or ``label_order``)."""
    found = set(found)
    if wants_background:
        found.add(BACKGROUND_LABEL)
    names = list(existing)
    if label_order is not None:
        missing = sorted(found - set(label_order))
        if missing:
            raise ParameterError(
                f"labels {', '.join(missing)} are not in the label order ({', '.join(label_order)}); "
                f"add them to {option('label_order')} or map them to listed labels"
            )
        if names and names != list(label_order)[: len(names)]:
            raise ParameterError(
                f"the store's labels ({', '.join(names)}) do not start the given {option('label_order')}; "
                "keep the store's order and add new labels at the end"
            )
        return tuple(label_order)
    return tuple(names + sorted(found - set(names)))
