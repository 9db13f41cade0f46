"""The pipeline: annotations -> plan -> shard-aligned tasks that read and write whole shards."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openslide

from ._annotations import (
    ANNOTATION_SUFFIXES, Annotation, AnnotationFile, apply_label_map, read_annotation_file,
)
from ._errors import ParameterError, SlideError, StoreError, StoreExistsError, WsizarrError
from ._geometry import rasterize
from ._locations import Location, parse_location, parse_store_location
from ._lock import writer_lock
from ._reader import PatchReader
from ._sampling import BACKGROUND_LABEL, PatchPlan, concat_plans, plan_patches
from ._slide import (
    Resolution, SlideInfo, TissueMask, open_slide, resize_patch, resolve_resolution, slide_info,
    tissue_mask, tissue_mask_of,
)
from ._tiles import READERS, choose_reader, content_digest, equal_runs, is_remote, open_reader, tiff_slide_info
from ._store import (
    begin_run, create_store, delete_store, done_shards, ensure_own_store, finalize_store,
    open_for_writing, open_store, partial_location, plan_digest, store_metadata, store_writes,
    write_shard,
)
from ._version import __version__

__all__ = [
    "ANNOTATION_SUFFIXES", "ExtractionSummary", "ShardJob", "ShardTask", "SlideFailure",
    "SlideJob", "extract", "match_annotations", "read_shard", "run_shard_task",
    "shard_tasks",
]

_MAX_SHARD_BYTES = 2 << 30  # one shard's pixels, held in memory by each task
_UNLABELLED_MASK = 255

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SlideFailure:
    """A slide left out of a cohort: its path and the one-line reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class ExtractionSummary:
    """What an extraction did: patches in the store, shards written by this run, time, bytes,
    and what was left out or flagged (slides, annotations outside the slide, edge patches)."""

    store: str
    n_patches: int
    n_shards: int
    shards_written: int
    seconds: float
    bytes_on_disk: int
    n_slides: int = 1
    skipped_annotations: int = 0
    padded: int = 0
    dropped_partial: int = 0
    dropped_excluded: int = 0
    failed_slides: tuple[SlideFailure, ...] = ()
    slides_without_annotations: tuple[str, ...] = ()
    annotations_without_slides: tuple[str, ...] = ()

    @property
    def patches_per_second(self) -> float:
        return self.n_patches / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        notes = ", ".join(
            f"{count} {what}" for count, what in [
                (len(self.failed_slides), "unreadable slides skipped"),
                (len(self.slides_without_annotations), "slides without annotations"),
                (len(self.annotations_without_slides), "annotation files without a slide"),
                (self.skipped_annotations, "annotations outside the slide skipped"),
                (self.padded, "edge patches padded with white"),
                (self.dropped_partial, "edge patches dropped"),
                (self.dropped_excluded, "patches centred in exclusions dropped"),
            ] if count
        )
        slides = f" from {self.n_slides} slides" if self.n_slides > 1 else ""
        return (
            f"{self.n_patches} patches{slides} in {self.store} ({self.shards_written} of {self.n_shards} "
            f"shards written) in {self.seconds:.1f} s, {self.patches_per_second:.0f} patches/s, "
            f"{self.bytes_on_disk / 1e6:.1f} MB on disk" + (f"; {notes}" if notes else "")
        )


@dataclass(frozen=True)
class ShardTask:
    """One unit of execution: the patches ``[start, stop)`` of shard ``index``."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True, eq=False)
class SlideJob:
    """One slide of a run: where it is, its geometry, how it is read (``reader``: ``tiles`` or
    ``openslide``; ``storage_options`` for a slide on S3), its annotations and the areas to
    leave out (``exclusions``)."""

    path: str
    info: SlideInfo
    resolution: Resolution
    annotations: tuple[Annotation, ...]
    exclusions: tuple[Annotation, ...] = ()
    reader: str = "openslide"
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class ShardJob:
    """Everything a task needs to produce its shard, picklable for any executor.

    ``plan`` holds the run's patches, which start at store index ``first_patch``; ``slides``
    maps the plan's slide indices (store-wide) to their ``SlideJob``.
    """

    slides: Mapping[int, SlideJob]
    patch_size: int
    plan: PatchPlan
    first_patch: int
    masks: bool
    labels: Mapping[str, int]

    def for_task(self, task: ShardTask) -> ShardJob:
        """The part of this job that ``task`` needs: small to send to another process."""
        first = max(task.start, self.first_patch)
        sl = slice(first - self.first_patch, task.stop - self.first_patch)
        plan = PatchPlan(**{name: values[sl] for name, values in self.plan.arrays().items()})
        needed = set(np.unique(plan.slide).tolist())
        slides = {index: job for index, job in self.slides.items() if index in needed}
        return ShardJob(slides, self.patch_size, plan, first, self.masks, self.labels)


def run_shard_task(store: Location, job: ShardJob, task: ShardTask) -> int:
    """Produce and write one whole shard (any executor calls this); returns its patch count.

    A shard that starts before ``job.first_patch`` (the store's last, partial shard when
    appending) keeps its earlier patches: they are read back, checksums checked (a damaged or
    missing shard is a ``CorruptStoreError``, never white patches), and written with the new ones.
    """
    group = open_for_writing(store)
    arrays = read_shard(job, task)
    with store_writes(store):
        if task.start < job.first_patch:
            earlier = PatchReader(store, group=group)
            arrays = {
                name: np.concatenate([earlier.read_shard(task.index, name)[: job.first_patch - task.start], values])
                for name, values in arrays.items()
            }
        write_shard(group, task.index, arrays)
    return task.stop - task.start


def shard_tasks(n_patches: int, shard_size: int, done: np.ndarray | None = None) -> list[ShardTask]:
    """One task per shard not yet done."""
    tasks = []
    for index, start in enumerate(range(0, n_patches, shard_size)):
        if done is None or not done[index]:
            tasks.append(ShardTask(index, start, min(start + shard_size, n_patches)))
    return tasks


def read_shard(job: ShardJob, task: ShardTask) -> dict[str, np.ndarray]:
    """The arrays of the run's patches in ``task``: ``patches`` ``(n, P, P, 3)`` uint8 (and
    ``masks`` ``(n, P, P)``), for store indices ``max(task.start, job.first_patch)`` to
    ``task.stop``.

    Each slide's patches are read through one open reader (``_tiles``): with ``tiles`` each
    tile is decoded once for the whole task and patches are cropped from the level's own
    pixels; with ``openslide`` the patches of one annotation share one ``read_region`` where
    the level's downsample is whole.
    """
    sl = slice(max(task.start, job.first_patch) - job.first_patch, task.stop - job.first_patch)
    plan = job.plan
    n, size = sl.stop - sl.start, job.patch_size
    arrays = {"patches": np.empty((n, size, size, 3), np.uint8)}
    if job.masks:
        arrays["masks"] = np.empty((n, size, size), np.uint8)
    for start, stop in equal_runs(plan.slide[sl]):
        run = slice(sl.start + start, sl.start + stop)
        slide_job = job.slides[int(plan.slide[run.start])]
        footprint = slide_job.resolution.read_size_px
        patches = arrays["patches"][start:stop]
        regions = patches if footprint == size else np.empty((stop - start, footprint, footprint, 3), np.uint8)
        try:
            with open_reader(slide_job.info, slide_job.reader, slide_job.storage_options) as reader:
                reader.read_patches(
                    slide_job.resolution.level, plan.x[run], plan.y[run], plan.annotation_id[run],
                    footprint, regions,
                )
        except SlideError as exc:
            message = str(exc)
            raise SlideError(message if slide_job.path in message else f"{slide_job.path}: {message}") from None
        if regions is not patches:
            for i, region in enumerate(regions):
                patches[i] = resize_patch(region, size)
        if job.masks:
            arrays["masks"][start:stop] = _masks(job, slide_job, plan.x[run], plan.y[run])
    return arrays


def _masks(job: ShardJob, slide_job: SlideJob, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Per patch, the annotations that intersect it rasterised as label code + 1, and the
    exclusions over them as 0."""
    annotations = (*slide_job.annotations, *slide_job.exclusions)
    resolution = slide_job.resolution
    extent0 = resolution.read_size_px * slide_job.info.level_downsamples[resolution.level]
    scale = job.patch_size / extent0
    boxes = np.array([a.bbox for a in annotations]).reshape(-1, 4)
    values = [
        _UNLABELLED_MASK if a.label is None else job.labels[a.label] + 1 for a in slide_job.annotations
    ] + [0] * len(slide_job.exclusions)
    out = np.zeros((len(xs), job.patch_size, job.patch_size), np.uint8)
    for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
        hits = np.flatnonzero(
            (boxes[:, 0] < x + extent0) & (boxes[:, 2] >= x) & (boxes[:, 1] < y + extent0) & (boxes[:, 3] >= y)
        )
        shapes = [(annotations[k].vertices, annotations[k].holes, values[k]) for k in hits]
        if shapes:
            out[i] = rasterize(shapes, (job.patch_size, job.patch_size), (x, y), scale)
    return out


AnnotationSource = str | Path | Sequence[Annotation]
SlidePath = str | Path  # a local path, or an s3:// URL kept as text
_REMOTE_SLIDE_SUFFIXES = (".svs", ".tif", ".tiff")


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


def _slide_list(slides: str | Path | Sequence[str | Path], storage_options: Mapping[str, str] | None) -> list[SlidePath]:
    """The slides given; an ``s3://`` prefix ending in ``/`` stands for its .svs/.tif/.tiff objects."""
    paths = [slides] if isinstance(slides, (str, Path)) else list(slides)
    out: list[SlidePath] = []
    for path in paths:
        if is_remote(path) and str(path).endswith("/"):
            keys = parse_location(str(path), storage_options).keys()
            out += [f"{str(path).rstrip('/')}/{k}" for k in keys if Path(k).suffix.lower() in _REMOTE_SLIDE_SUFFIXES]
        else:
            out.append(_path_or_url(path))
    return out


def match_annotations(
    slides: str | Path | Sequence[str | Path], annotations: AnnotationSource | Sequence[str | Path],
    storage_options: Mapping[str, str] | None = None,
) -> tuple[list[tuple[SlidePath, AnnotationSource]], list[str], list[str]]:
    """Pair slides with their annotations.

    ``annotations`` is a file or ``Annotation`` records (one slide), a folder (or an ``s3://``
    prefix ending in ``/``) whose files (``.xml``, ``.geojson``, ``.json``) match slides by file
    stem, or a list of files aligned with ``slides``. Slides and annotation files may be
    ``s3://`` URLs (``storage_options`` as for the store). Returns the pairs, the slides
    without annotations and the annotation files without a slide.
    """
    single = isinstance(slides, (str, Path)) and not str(slides).endswith("/")
    slide_paths = _slide_list(slides, storage_options)
    if not slide_paths:
        raise ParameterError(f"{slides if single else 'slides'}: no slides given or found; check the paths")
    by_stem = _annotation_folder(annotations, storage_options)
    if by_stem is not None:
        pairs = [(s, by_stem[Path(s).stem]) for s in slide_paths if Path(s).stem in by_stem]
        stems = {Path(s).stem for s in slide_paths}
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
            f"{len(slide_paths)} slides but {len(files)} annotation files; give one per slide "
            "or a folder"
        )
    return list(zip(slide_paths, files)), [], []


def _slide_hash(handle: openslide.OpenSlide, path: Path) -> str:
    """OpenSlide's content hash of the slide; file bytes where OpenSlide has none."""
    quickhash = handle.properties.get("openslide.quickhash-1")
    if quickhash:
        return quickhash
    with path.open("rb") as file:
        return content_digest(file, path.stat().st_size)


@dataclass(frozen=True, eq=False)
class _Prepared:
    job: SlideJob
    tissue: TissueMask | None
    source: str | None
    content_hash: str
    annotations_sha256: str


@dataclass(frozen=True)
class _Reading:
    """How annotation files are read and relabelled."""

    label_from: str = "name"
    exclude_detections: bool = False
    label_map: Mapping[str, str] | None = None
    keep_only: bool = False
    exclude_labels: tuple[str, ...] = ()
    strict_annotations: bool = False

    def read(
        self, annotations: AnnotationSource, storage_options: Mapping[str, str] | None = None
    ) -> tuple[list[Annotation], list[Annotation], str | None]:
        """The annotations, the exclusions and the file they came from (None for records)."""
        if isinstance(annotations, (str, Path)):
            if is_remote(annotations):
                file, source = self._read_remote(str(annotations), storage_options), str(annotations)
            else:
                file, source = self._read_file(annotations), str(Path(annotations).resolve())
            records, exclusions = list(file.annotations), list(file.exclusions)
        else:
            records, exclusions, source = list(annotations), [], None
        if self.label_map is not None:
            records = apply_label_map(records, self.label_map, keep_only=self.keep_only)
        return records, exclusions, source

    def _read_file(self, path: str | Path) -> AnnotationFile:
        return read_annotation_file(
            path, label_from=self.label_from, exclude_detections=self.exclude_detections,
            exclude_labels=self.exclude_labels, strict=self.strict_annotations,
        )

    def _read_remote(self, url: str, storage_options: Mapping[str, str] | None) -> AnnotationFile:
        """An annotation file on S3, fetched into a temporary folder under its own name."""
        location = parse_location(url, storage_options)
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder, Path(location.path).name)
            size = location.size()
            local.write_bytes(location.read_range(0, size) if size else b"")
            return self._read_file(local)


def _prepare(
    slide: SlidePath, annotations: AnnotationSource, reading: _Reading, *, level: int | None,
    mpp: float | None, magnification: float | None, patch_size: int, wants_background: bool,
    reader: str, storage_options: Mapping[str, str] | None,
) -> _Prepared:
    if is_remote(slide):
        info, content_hash = tiff_slide_info(str(slide), storage_options)
    else:
        handle = open_slide(slide)
        try:
            info = slide_info(handle, slide)
            content_hash = _slide_hash(handle, Path(slide))
        finally:
            handle.close()
    resolution = resolve_resolution(info, patch_size, level=level, mpp=mpp, magnification=magnification)
    chosen = choose_reader(info, reader, storage_options)
    tissue = _tissue(info, chosen, storage_options) if wants_background else None
    records, exclusions, source = reading.read(annotations, storage_options)
    if not records:
        raise ParameterError(f"{source or 'annotations'}: no annotations to extract around")
    return _Prepared(
        SlideJob(
            str(slide), info, resolution, tuple(records), tuple(exclusions), chosen,
            dict(storage_options or {}),
        ),
        tissue, source, content_hash, _annotations_digest([*records, *exclusions]),
    )


def _tissue(info: SlideInfo, reader: str, storage_options: Mapping[str, str] | None) -> TissueMask:
    """The slide's tissue mask, from OpenSlide's view of it or (slides on S3) its coarsest level."""
    if not is_remote(info.path):
        with open_slide(info.path) as handle:
            return tissue_mask(handle)
    with open_reader(info, reader, storage_options) as tiles:
        coarsest = info.level_count - 1
        return tissue_mask_of(tiles.tiff.region(coarsest, 0, 0, *info.level_dimensions[coarsest]), info.dimensions[0])


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


def extract(
    slide: str | Path | Sequence[str | Path],
    annotations: AnnotationSource | Sequence[str | Path],
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
    workers: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    append: bool = False,
    strict: bool = False,
    executor: str = "threads",
    client: Any = None,
    storage_options: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    reader: str = "auto",
) -> ExtractionSummary:
    """Extract patches around the annotations of one slide, or a cohort, into a Zarr v3 store.

    ``slide`` is a path or a list of paths; ``annotations`` an annotation file or
    ``Annotation`` records (level-0 pixels) for one slide, or a folder matched by file stem, or
    one file per slide. Resolution: ``level`` (default 0), or ``mpp`` microns per pixel, or
    ``magnification``; ``patch_size`` is in pixels of that resolution. ``sampler`` is one of
    ``jitter``, ``centroid``, ``grid`` (``stride`` px, ``min_overlap`` fraction),
    ``random-in-polygon``, ``background``; ``background`` adds that many tissue patches outside
    every annotation. ``masks`` stores per-patch label masks; ``drop_partial`` leaves out
    patches crossing the slide edge (otherwise padded with white and flagged). ``label_map``
    renames or merges labels (``keep_only``: drop the labels it does not name), ``label_order``
    fixes the label codes (stable across stores); ``label_from``, ``exclude_detections``,
    ``exclude_labels`` (labels whose annotations become areas to leave out: no patch is centred
    in one) and ``strict_annotations`` (refuse degenerate objects instead of skipping them) are
    passed to ``read_annotation_file``. ``resume`` finishes an interrupted run of the
    same command, writing only missing shards; ``append`` adds the slides to an existing store.
    In a cohort an unreadable slide is reported and skipped unless ``strict``. Shard tasks run
    on ``workers`` threads (``executor="threads"``, the default: OpenSlide and the codecs
    release the GIL) or processes (``"processes"``), or on a ``dask.distributed`` ``client``.
    ``out`` is a directory, a ``.zip`` file (written whole at the end from a
    ``<name>.zip.partial.zarr`` directory beside it, which is what ``resume`` finishes) or an
    ``s3://bucket/prefix`` URL (credentials and endpoint from ``storage_options`` or the AWS
    environment variables); slides and annotation files may be ``s3://`` URLs too (or prefixes
    ending in ``/``), read with the same ``storage_options``. ``reader`` is ``auto`` (tiles
    where tifffile reads the slide's pyramid, else OpenSlide), ``tiles`` or ``openslide``.
    ``progress(done, total)`` is called as shards finish. Raises a
    ``WsizarrError`` naming the file and the fix.
    """
    started = time.perf_counter()
    target = parse_store_location(out, storage_options)
    partial = partial_location(target)
    workers = (os.cpu_count() or 1) if workers is None else workers
    _check_options(
        target, workers=workers, executor=executor, overwrite=overwrite, resume=resume,
        append=append, patch_size=patch_size, shard_size=shard_size,
    )
    with writer_lock(target) as lock:  # one writer per store, from the first check to the swap
        target_exists, partial_exists = target.exists(), partial.exists()
        if overwrite and target_exists:
            ensure_own_store(target)
        # Where this run builds: a zip, or a store being overwritten, is built beside the target
        # (`partial`) and swapped in only once complete, so a failed run leaves the old one intact.
        beside = (overwrite and target_exists) or (partial_exists and (overwrite or resume))
        if not target.can_append or beside:  # a zip is written whole, at the end
            building, building_exists = partial, partial_exists
        else:
            building, building_exists = target, target_exists
        if partial_exists and not (overwrite or resume):
            raise StoreError(
                f"{target}: an earlier run left an unfinished store at {partial}; rerun it with "
                "--resume (or --overwrite to start again)"
            )
        if (target_exists or building_exists) and not (overwrite or resume or append):
            raise StoreExistsError(
                f"{target}: already exists; pass --overwrite to replace it, --resume to finish it "
                "or --append to add slides to it"
            )
        if append and not building_exists:
            raise StoreError(f"{building}: store not found, nothing to append to; drop --append to create it")
        pairs, unmatched_slides, unmatched_annotations = match_annotations(
            slide, annotations, storage_options
        )
        if not pairs:
            raise ParameterError(
                f"{annotations}: no annotation file matches any slide by name "
                f"({', '.join(Path(s).name for s in unmatched_slides[:3])}...); name them like the slides"
            )
        wants_background = background > 0 or sampler == BACKGROUND_LABEL
        reading = _Reading(
            label_from, exclude_detections, label_map, keep_only, tuple(exclude_labels),
            strict_annotations,
        )
        prepared, failures = _prepare_slides(
            pairs, reading, strict=strict, level=level, mpp=mpp, magnification=magnification,
            patch_size=patch_size, wants_background=wants_background, reader=reader,
            storage_options=storage_options,
        )
        parameters: dict[str, Any] = {
            "sampler": sampler,
            "level": 0 if level is None and mpp is None and magnification is None else level,
            "mpp": mpp, "magnification": magnification,
            "patch_size": patch_size, "per_annotation": per_annotation, "stride": stride,
            "min_overlap": min_overlap, "background": background, "masks": masks,
            "drop_partial": drop_partial, "seed": seed, "shard_size": shard_size, "codec": codec,
            "label_map": None if label_map is None else dict(label_map), "keep_only": keep_only,
            "label_from": label_from, "exclude_detections": exclude_detections,
            "exclude_labels": list(exclude_labels), "strict_annotations": strict_annotations,
            "reader": reader,
        }
        summarise = functools.partial(
            _summary, target, started=started, prepared=prepared, failures=failures,
            unmatched_slides=unmatched_slides, unmatched_annotations=unmatched_annotations,
        )
        if building != target and not building_exists and target_exists and not overwrite:
            return summarise(store_metadata(open_store(target)), 0)  # resumed after it was published
        group = open_for_writing(building) if building_exists and not overwrite else None
        existing = store_metadata(group) if group is not None else None
        if existing is not None and not existing.get("complete") and "run" not in existing and not existing["slides"]:
            group = existing = None  # killed while being created, before any run began: create it again
        if existing is not None and _recorded_parameters(existing) != parameters:
            raise StoreError(
                f"{building}: was made with other parameters ({existing.get('parameters')}); use the "
                "same ones to resume or append, or --overwrite"
            )
        resuming_run = existing is not None and not existing.get("complete") and "run" in existing
        if existing is not None and not existing.get("complete") and not resume:
            raise StoreError(f"{building}: an earlier extraction did not finish; rerun it with --resume")
        if existing is not None and existing.get("complete") and not append:
            if building != target:
                _publish(building, target)
            return summarise(existing, 0)
        if resuming_run:
            first_slide, first_patch = existing["run"]["first_slide"], existing["run"]["first_patch"]
            earlier = existing["slides"][:first_slide]
            label_names = list(existing["label_names"])
        else:
            earlier = existing["slides"] if existing else []
            first_slide, first_patch = len(earlier), existing["n_patches"] if existing else 0
            label_names = _label_names(existing, prepared, wants_background, label_order)
        known = {s.get("content_hash") for s in earlier}
        for p in prepared:
            if p.content_hash in known:
                raise StoreError(
                    f"{p.job.path}: this slide (same content) is already in {building}; remove it from the "
                    "list of slides to append"
                )
        labels = {name: code for code, name in enumerate(label_names)}
        plans = [
            plan_patches(
                list(p.job.annotations), p.job.info, sampler=sampler, resolution=p.job.resolution,
                patch_size=patch_size, per_annotation=per_annotation, seed=seed, stride=stride,
                min_overlap=min_overlap, background=background, tissue=p.tissue,
                drop_partial=drop_partial, slide_index=first_slide + i, labels=labels,
                exclusions=p.job.exclusions,
            )
            for i, p in enumerate(prepared)
        ]
        plan = concat_plans(plans)
        if len(plan) == 0:
            raise ParameterError(
                "the plan has no patches (annotations outside the slides, or every patch dropped); "
                "check the annotations belong to these slides"
            )
        slides_table = earlier + [
            {
                **p.job.info.to_attrs(), "annotations": p.source, "content_hash": p.content_hash,
                "annotations_sha256": p.annotations_sha256,
                "level": p.job.resolution.level, "read_size_px": p.job.resolution.read_size_px,
                "effective_mpp": p.job.resolution.mpp, "reader": p.job.reader,
                "annotation_names": [a.name for a in p.job.annotations],
            }
            for p in prepared
        ]
        new_arrays = plan.arrays()
        digest = _store_digest(group, first_patch, new_arrays)
        if resuming_run:
            _check_same_run(building, existing, slides_table, digest)
        with store_writes(building):
            if group is None:
                if building_exists:  # our own unfinished build beside the target: start it again
                    delete_store(building)
                group = create_store(
                    building, patch_size=patch_size, shard_size=shard_size, codec=codec, masks=masks,
                    metadata={"wsizarr_version": __version__, "parameters": parameters},
                )
            begin_run(
                group, new_arrays, first_patch=first_patch, slides=slides_table,
                label_names=label_names, plan_digest=digest,
            )
            job = ShardJob(
                {first_slide + i: p.job for i, p in enumerate(prepared)}, patch_size, plan,
                first_patch, masks, labels,
            )
            tasks = shard_tasks(first_patch + len(plan), shard_size, done_shards(group))
            _run_tasks(
                building, job, tasks, workers=workers, executor=executor, client=client,
                progress=progress,
            )
            lock.check()  # still this writer's store: finalise it
            finalize_store(group, building)
            metadata = store_metadata(group)
            if building != target:
                _publish(building, target)
        return summarise(metadata, len(tasks), plan=plan)


# Options added after stores were made, as those stores were made: no exclusions, not strict,
# read with OpenSlide (so appending to one needs --reader openslide, not a mix of pixels).
_OLDER_STORES = {"exclude_labels": [], "strict_annotations": False, "reader": "openslide"}


def _recorded_parameters(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A store's parameters as this version records them (older stores lack newer options and
    recorded level 0 as None), to compare with a resume's or an append's."""
    recorded = {**_OLDER_STORES, **metadata.get("parameters", {})}
    if all(recorded.get(name) is None for name in ("level", "mpp", "magnification")):
        recorded["level"] = 0
    return recorded


def _check_options(
    target: Location, *, workers: int, executor: str, overwrite: bool, resume: bool,
    append: bool, patch_size: int, shard_size: int,
) -> None:
    """Refuse option combinations no run can satisfy, before any slide is opened."""
    if append and not target.can_append:
        raise ParameterError(
            f"{target}: a zip cannot be appended to; append to a directory store, then `wsizarr pack` it"
        )
    if workers < 1:
        raise ParameterError(f"workers must be at least 1, got {workers}")
    if executor not in _EXECUTORS:
        raise ParameterError(f"unknown executor {executor!r}; choose one of {', '.join(_EXECUTORS)}")
    if overwrite and (resume or append):
        raise ParameterError("--overwrite excludes --resume and --append; choose one")
    if patch_size < 1 or shard_size < 1:
        raise ParameterError(
            f"patch size and shard size must be at least 1, got {patch_size} px and {shard_size} patches"
        )
    shard_bytes = shard_size * patch_size * patch_size * 3
    if shard_bytes > _MAX_SHARD_BYTES:
        raise ParameterError(
            f"a shard of {shard_size} patches of {patch_size} px is {shard_bytes / 2**30:.1f} GiB in "
            f"memory (at most {_MAX_SHARD_BYTES / 2**30:.0f} GiB); lower the shard size or the patch size"
        )


def _store_digest(group: Any, first_patch: int, new_arrays: Mapping[str, np.ndarray]) -> str:
    """The plan digest of the store once the run's patches follow its first ``first_patch``."""
    if group is None:
        return plan_digest(new_arrays)
    return plan_digest({
        name: np.concatenate([np.asarray(group[name][:first_patch]), values])
        for name, values in new_arrays.items()
    })


def _check_same_run(
    store: Location, existing: Mapping[str, Any], slides_table: Sequence[Mapping[str, Any]],
    digest: str,
) -> None:
    """Refuse to resume when the slides, the annotations or the plan changed since the
    interrupted run: the shards it wrote would not match the recorded coordinates."""
    fix = "resume with the same inputs, or start again with --overwrite"
    if [s["path"] for s in slides_table] != [s["path"] for s in existing["slides"]]:
        raise StoreError(f"{store}: the interrupted run had other slides or annotations; {fix}")
    for before, now in zip(existing["slides"], slides_table):
        if before.get("content_hash") != now["content_hash"]:
            raise StoreError(f"{store}: the slide {now['path']} changed since the interrupted run; {fix}")
        if before.get("annotations_sha256") != now["annotations_sha256"]:
            raise StoreError(
                f"{store}: the annotations of {now['path']} ({now['annotations'] or 'records'}) "
                f"changed since the interrupted run; {fix}"
            )
    if list(slides_table) != existing["slides"]:
        raise StoreError(f"{store}: the interrupted run had other slides or annotations; {fix}")
    if digest != existing.get("plan_digest"):
        raise StoreError(f"{store}: the patch plan differs from the interrupted run's; {fix}")


def _publish(building: Location, target: Location) -> None:
    """Swap the finished store built beside ``target`` into its place."""
    if target.exists():
        ensure_own_store(target)
    target.replace_with(building)


def _prepare_slides(
    pairs: Sequence[tuple[SlidePath, AnnotationSource]], reading: _Reading, *, strict: bool,
    **options: Any,
) -> tuple[list[_Prepared], list[SlideFailure]]:
    """Open every slide and read its annotations; in a cohort (unless ``strict``) a slide
    that fails is reported and left out."""
    if options["reader"] not in READERS:
        raise ParameterError(f"unknown reader {options['reader']!r}; choose one of {', '.join(READERS)}")
    prepared: list[_Prepared] = []
    failures: list[SlideFailure] = []
    for slide_path, source in pairs:
        try:
            prepared.append(_prepare(slide_path, source, reading, **options))
        except WsizarrError as exc:
            if strict or len(pairs) == 1:
                raise
            failures.append(SlideFailure(str(slide_path), str(exc)))
    if not prepared:
        raise ParameterError("no slide could be read: " + "; ".join(f.reason for f in failures))
    return prepared, failures


def _run_tasks(
    store: Location, job: ShardJob, tasks: Sequence[ShardTask], *, workers: int, executor: str,
    client: Any, progress: ProgressCallback | None,
) -> None:
    """Execute the shard tasks, reporting ``progress(patches done, patches in the store)``."""
    total = job.first_patch + len(job.plan)
    done = total - sum(t.stop - t.start for t in tasks)
    if progress:
        progress(done, total)
    for count in _execute(store, job, tasks, workers=workers, executor=executor, client=client):
        done += count
        if progress:
            progress(done, total)


_EXECUTORS = ("threads", "processes")


def _execute(
    store: Location, job: ShardJob, tasks: Sequence[ShardTask], *, workers: int, executor: str,
    client: Any,
) -> Iterator[int]:
    """Run the shard tasks; yield each one's patch count as it finishes."""
    if not tasks:
        return
    if client is not None:
        from distributed import as_completed as dask_completed

        futures = client.map(
            run_shard_task, [store] * len(tasks), [job.for_task(t) for t in tasks], tasks,
            pure=False,
        )
        try:
            for future in dask_completed(futures):
                yield future.result()
        except BaseException:
            client.cancel(futures)
            raise
        return
    if executor == "processes":
        import multiprocessing

        pool: Any = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(workers)
    with pool:
        futures = [pool.submit(run_shard_task, store, job.for_task(t), t) for t in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            # stop now (a resume redoes unfinished shards); worker processes are ended, not
            # orphaned. ProcessPoolExecutor has no public way to end them before Python 3.14.
            if isinstance(pool, ProcessPoolExecutor):
                for process in list((pool._processes or {}).values()):
                    process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _label_names(
    existing: Mapping[str, Any] | None, prepared: Sequence[_Prepared], wants_background: bool,
    label_order: Sequence[str] | None,
) -> list[str]:
    """Label names in code order: the store's first, then new ones sorted (or ``label_order``)."""
    found = {a.label for p in prepared for a in p.job.annotations if a.label is not None}
    if wants_background:
        found.add(BACKGROUND_LABEL)
    names = list(existing["label_names"]) if existing else []
    if label_order is not None:
        missing = sorted(found - set(label_order))
        if missing:
            raise ParameterError(
                f"labels {', '.join(missing)} are not in the label order "
                f"({', '.join(label_order)}); add them or map them to listed labels"
            )
        if names and names != list(label_order)[: len(names)]:
            raise ParameterError(
                f"the store's labels ({', '.join(names)}) do not start the given label order; "
                "keep the store's order and add new labels at the end"
            )
        return list(label_order)
    return names + sorted(found - set(names))


def _summary(
    out: Location, metadata: Mapping[str, Any], shards_written: int, *, started: float,
    prepared: Sequence[_Prepared], failures: Sequence[SlideFailure],
    unmatched_slides: Sequence[str], unmatched_annotations: Sequence[str],
    plan: PatchPlan | None = None,
) -> ExtractionSummary:
    n = metadata["n_patches"]
    return ExtractionSummary(
        store=str(out), n_patches=n, n_shards=-(-n // metadata["shard_size"]),
        shards_written=shards_written, seconds=time.perf_counter() - started,
        bytes_on_disk=out.usage()[0], n_slides=len(metadata["slides"]),
        skipped_annotations=0 if plan is None else len(plan.skipped_annotations),
        padded=0 if plan is None else int(plan.padded.sum()),
        dropped_partial=0 if plan is None else plan.dropped_partial,
        dropped_excluded=0 if plan is None else plan.dropped_excluded,
        failed_slides=tuple(failures), slides_without_annotations=tuple(unmatched_slides),
        annotations_without_slides=tuple(unmatched_annotations),
    )
