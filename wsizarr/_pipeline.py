"""The extraction as it is called: ``extract`` and ``run_extraction``.

Without quality filters this is the extraction stage alone (``extraction.extract_unfiltered``).
With them it orchestrates two stages from above both: the whole plan is extracted (and
measured) into ``<out>.unfiltered.zarr`` beside ``out``, then ``curate``'s ``subset`` writes the
patches that pass into ``out`` and the unfiltered store is removed; ``resume`` finishes either step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._errors import ParameterError, StoreError, StoreExistsError, option
from ._locations import Location, parse_store_location
from .curate._subset import subset
from .extraction._options import ExtractOptions, FilterOptions
from .extraction._planning import AnnotationSource
from .extraction._run import ExtractionSummary, ProgressCallback, extract_unfiltered
from .extraction._runplan import recorded_parameters
from .loaders._patches import quality_bounds
from .store._store import delete_store, ensure_own_store, open_store, read_manifest

__all__ = ["extract", "run_extraction"]

UNFILTERED_SUFFIX = ".unfiltered.zarr"  # where a filtered extraction extracts the whole plan


def extract(
    slide: str | Path | Sequence[str | Path],
    annotations: AnnotationSource | Sequence[str | Path] | None,
    out: str | Path | Location,
    *,
    level: int | None = None,
    mpp: float | None = None,
    magnification: float | None = None,
    patch_size: int = 256,
    sampler: str = "jitter",
    per_annotation: int = 30,
    stride: int | None = None,
    min_overlap: float = 0.5,
    background: int = 0,
    masks: bool = False,
    quality: bool = True,
    drop_partial: bool = False,
    label_order: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    keep_only: bool = False,
    label_from: str = "name",
    exclude_detections: bool = False,
    exclude_labels: Sequence[str] = (),
    strict_annotations: bool = False,
    seed: int = 0,
    shard_size: int = 256,
    codec: str = "zstd",
    color: str = "unchanged",
    workers: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    append: bool = False,
    strict: bool = False,
    min_tissue: float | None = None,
    min_sharpness: float | None = None,
    max_pen: float | None = None,
    executor: str = "threads",
    client: Any = None,
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    reader: str = "auto",
    on_note: Callable[[str], None] | None = None,
    tiles: bool = False,
    tissue_mask: str | Path | None = None,
    tile_min_tissue: float = 0.5,
    min_tissue_area: float = 256.0**2,
    max_hole_area: float = 256.0**2,
    within_annotations: bool = False,
) -> ExtractionSummary:
    """Extract patches around the annotations of one slide, or a cohort, into a Zarr v3 store;
    or with ``tiles`` tile the whole slides (``annotations`` may then be None).

    ``slide`` is a path or a list of paths, or a folder of slides (its files in OpenSlide's
    formats, by name; or an ``s3://`` prefix ending in ``/``); ``annotations`` an annotation file or
    ``Annotation`` records (level-0 pixels) for one slide, or a folder matched by file stem, or
    one file per slide. Resolution: ``level`` (default 0), or ``mpp`` microns per pixel, or
    ``magnification``; ``patch_size`` is in pixels of that resolution. ``sampler`` is one of
    ``jitter``, ``centroid``, ``grid`` (``stride`` px, ``min_overlap`` fraction),
    ``random-in-polygon``, ``background``; ``background`` adds that many tissue patches outside
    every annotation. ``masks`` stores per-patch label masks, ``quality`` (default on) per-patch
    quality measures (``QUALITY_MEASURES``: tissue, focus, marker ink...); ``drop_partial`` leaves out
    patches crossing the slide edge (otherwise padded with white and flagged). ``label_map``
    renames or merges labels (``keep_only``: drop the labels it does not name), ``label_order``
    fixes the label codes (stable across stores); ``label_from``, ``exclude_detections``,
    ``exclude_labels`` (labels whose annotations become areas to leave out: no patch is centred
    in one) and ``strict_annotations`` (refuse degenerate objects instead of skipping them) are
    passed to ``read_annotation_file``. ``resume`` finishes an interrupted run of the
    same command, writing only missing shards; ``append`` adds the slides to an existing store.
    ``min_tissue``, ``min_sharpness`` and ``max_pen`` keep only the patches whose quality
    measures pass (see ``run_extraction``; ``FilterOptions``).
    ``tiles`` lays a grid of ``patch_size`` tiles (``stride`` apart, default the tile) over each
    whole slide and keeps those with at least ``tile_min_tissue`` of tissue in the slide's
    tissue mask (Otsu on the saturation of its coarsest level, or the image ``tissue_mask``: a
    file, or a folder of files named like the slides; non-zero = tissue), after dropping pieces
    smaller than ``min_tissue_area`` and filling holes smaller than ``max_hole_area`` (level-0
    pixels^2); annotations, when given, label the tiles (else ``background``) and with
    ``within_annotations`` restrict them (``TilingOptions``). The tissue outlines are stored in
    the annotation table (label ``tissue``).
    In a cohort an unreadable slide is reported and skipped unless ``strict``. Shard tasks run
    on ``workers`` threads (``executor="threads"``, the default: OpenSlide and the codecs
    release the GIL) or processes (``"processes"``), or on a ``dask.distributed`` ``client``.
    ``out`` is a directory, a ``.zip`` file (written whole at the end from a
    ``<name>.zip.partial.zarr`` directory beside it, which is what ``resume`` finishes) or an
    ``s3://bucket/prefix`` URL (credentials and endpoint from ``storage_options`` or the AWS
    environment variables); slides and annotation files may be ``s3://`` URLs too (or prefixes
    ending in ``/``), read with the same ``storage_options``. ``reader`` is ``auto`` (tiles
    where tifffile reads the slide's pyramid, else OpenSlide), ``tiles`` or ``openslide``.
    ``progress(done, total)`` is called as shards finish, ``on_note(line)`` with each
    annotation file's note on skipped objects or warnings. The options are checked by the
    records of ``extraction._options`` (see ``run_extraction``). Raises a ``WsizarrError`` naming the
    file and the fix.
    """
    options = ExtractOptions.from_keywords(
        level=level, mpp=mpp, magnification=magnification, patch_size=patch_size,
        sampler=sampler, per_annotation=per_annotation, stride=stride, min_overlap=min_overlap,
        background=background, drop_partial=drop_partial, seed=seed,
        label_order=label_order, label_map=label_map, keep_only=keep_only, label_from=label_from,
        exclude_detections=exclude_detections, exclude_labels=exclude_labels,
        strict_annotations=strict_annotations,
        shard_size=shard_size, codec=codec, masks=masks, quality=quality, color=color,
        workers=workers, executor=executor, client=client, reader=reader, strict=strict,
        progress=progress, on_note=on_note, min_tissue=min_tissue, min_sharpness=min_sharpness, max_pen=max_pen,
        overwrite=overwrite, resume=resume, append=append, tiles=tiles, tissue_mask=tissue_mask,
        tile_min_tissue=tile_min_tissue, min_tissue_area=min_tissue_area, max_hole_area=max_hole_area,
        within_annotations=within_annotations,
    )
    return run_extraction(slide, annotations, out, options, storage_options)


def run_extraction(
    slides: str | Path | Sequence[str | Path],
    annotations: AnnotationSource | Sequence[str | Path] | None,
    out: str | Path | Location,
    options: ExtractOptions,
    storage_options: Mapping[str, str] | None = None,
) -> ExtractionSummary:
    """``extract`` with its options as one validated :class:`ExtractOptions` record. With quality
    filters (``options.filters``) the whole plan is extracted into ``<out>.unfiltered.zarr``
    beside ``out``, then the patches that pass are written into ``out`` (``subset``) and the
    unfiltered store removed; ``resume`` finishes either step."""
    if options.filters.active:
        return _extract_filtered(slides, annotations, out, options, storage_options)
    return extract_unfiltered(slides, annotations, out, options, storage_options)


def _extract_filtered(
    slides: Any, annotations: Any, out: str | Path | Location, options: ExtractOptions,
    storage_options: Mapping[str, str] | None = None,
) -> ExtractionSummary:
    """An extraction with quality filters: the whole plan extracted (and measured) into
    ``<out>.unfiltered.zarr`` beside ``out``, which ``resume`` finishes like any extraction; then
    the patches that pass written into ``out`` by ``subset``, and the unfiltered store removed.
    Whatever the executor and however often it was resumed, the store is the same."""
    started = time.perf_counter()
    target = parse_store_location(out, storage_options)
    unfiltered = target.beside(UNFILTERED_SUFFIX)
    filters = options.filters
    if target.exists() and not unfiltered.exists():
        if options.mode == "create":
            raise StoreExistsError(
                f"{target}: already exists; replace it ({option('overwrite', True)}) or finish it ({option('resume', True)})"
            )
        if options.mode == "resume":  # finished and published
            return _published(target, options, started)
    if options.mode == "overwrite" and target.exists():
        ensure_own_store(target)  # before the long extraction
    mode = "create" if options.mode == "overwrite" and not unfiltered.exists() else options.mode
    extraction = extract_unfiltered(
        slides, annotations, unfiltered, replace(options, mode=mode, filters=FilterOptions()), storage_options,
    )
    execution = options.execution
    try:
        kept = subset(
            unfiltered, target, min_tissue=filters.min_tissue, min_sharpness=filters.min_sharpness,
            max_pen=filters.max_pen, overwrite=target.exists(), storage_options=storage_options,
            workers=execution.workers, executor=execution.executor, client=execution.client,
        )
    except ParameterError as exc:  # no patch passes
        raise ParameterError(
            f"{exc}; the extracted patches are kept in {unfiltered}: rerun with {option('resume', True)} "
            "and other filters"
        ) from None
    delete_store(unfiltered)
    return replace(
        extraction, store=str(target), n_patches=kept.n_patches, n_shards=kept.n_shards,
        seconds=time.perf_counter() - started, bytes_on_disk=kept.bytes_on_disk,
        filtered_out=extraction.n_patches - kept.n_patches, patches_written=kept.n_patches,  # subset writes them all
    )


def _published(target: Location, options: ExtractOptions, started: float) -> ExtractionSummary:
    """The summary of a filtered extraction finished earlier, after checking it was made with
    these options and filters."""
    manifest = read_manifest(open_store(target))
    wanted = quality_bounds(options.filters.min_tissue, options.filters.min_sharpness, options.filters.max_pen)
    recorded = None if manifest.subset is None else manifest.subset.selection.get("quality")
    if recorded != {name: list(bound) for name, bound in wanted.items()} or recorded_parameters(manifest) != options.parameters():
        raise StoreError(
            f"{target}: was made with other parameters or filters; use the same ones to resume, "
            f"or replace it ({option('overwrite', True)})"
        )
    return ExtractionSummary(
        str(target), manifest.n_patches, manifest.n_shards, 0, time.perf_counter() - started,
        target.usage()[0], n_slides=manifest.n_slides, patches_written=0,
    )
