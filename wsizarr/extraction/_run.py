"""The extraction stage's pipeline: parse the options, prepare the slides, plan them into the store, execute the
shard tasks, finalise.

Every per-slide and per-shard step is a task on one :class:`~wsizarr.extraction._execution.TaskRunner`
(threads, processes or a dask cluster). The coordinator keeps per-slide counts and offsets,
never the whole plan: each slide's plan goes into the store's arrays as it arrives, and each
shard task reads its rows back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .._errors import ParameterError, option
from .._locations import Location, parse_store_location
from .._text import count
from .._version import __version__
from ..annotations._files import ANNOTATION_SUFFIXES
from ..store._lock import writer_lock
from ..store._manifest import (
    Manifest,
    annotation_rows,
    plan_sha256,
    read_table,
    slide_row,
)
from ..store._store import (
    begin_run,
    create_store,
    delete_store,
    done_shards,
    end_planning,
    ensure_own_store,
    finalize_store,
    open_for_writing,
    open_store,
    partial_location,
    read_manifest,
    roll_back_run,
    store_writes,
    tidy_complete,
)
from ._execution import (
    PlanRows,
    ShardJob,
    ShardTask,
    SlideSource,
    TaskRunner,
    run_shard_task,
    shard_tasks,
)
from ._options import ExtractOptions
from ._planning import (
    AnnotationSource,
    PlanRequest,
    PreparedSlide,
    PrepareRequest,
    SlideFailure,
    SlidePlan,
    match_annotations,
    plan_slide,
    prepare_slide,
)
from ._runplan import RunPlan, check_same_slides, is_stillborn, plan_run, where_to_build

__all__ = [
    "ANNOTATION_SUFFIXES", "ExtractionSummary", "ProgressCallback", "SlideFailure", "extract_unfiltered",
    "match_annotations",
]

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ExtractionSummary:
    """What an extraction did: patches in the store, shards written by this run, time (and the
    part spent preparing and planning the slides), bytes, and what was left out or flagged
    (slides, annotations outside the slide, edge patches, slides without a colour profile to
    convert from) or noted (annotation files with skipped objects or warnings)."""

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
    slides_without_profile: tuple[str, ...] = ()  # color srgb: left unchanged
    plan_seconds: float = 0.0
    notes: tuple[str, ...] = ()
    filtered_out: int = 0  # patches extracted but left out by the quality filters
    patches_written: int | None = None  # the patches of the shards this run wrote; None: all of them

    @property
    def written(self) -> int:
        """The patches this run wrote (a resume: those of the shards it wrote)."""
        return self.n_patches if self.patches_written is None else self.patches_written

    @property
    def patches_per_second(self) -> float:
        """Patches written per second by this run."""
        return self.written / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        notes = ", ".join(
            f"{count(n, noun)} {what}".rstrip() for n, noun, what in [
                (len(self.failed_slides), "unreadable slide", "skipped"),
                (len(self.slides_without_annotations), "slide", "without annotations"),
                (len(self.annotations_without_slides), "annotation file", "without a slide"),
                (len(self.slides_without_profile), "slide", "without a colour profile left unchanged"),
                (self.skipped_annotations, "annotation", "outside the slide skipped"),
                (self.padded, "edge patch", "padded with white"),
                (self.dropped_partial, "edge patch", "dropped"),
                (self.dropped_excluded, "patch", "centred in exclusions dropped"),
                (self.filtered_out, "patch", "left out by the quality filters"),
            ] if n
        )
        slides = f" from {self.n_slides} slides" if self.n_slides > 1 else ""
        already = self.n_patches - self.written
        rate = f"{self.patches_per_second:.0f} patches/s"
        if not self.written:
            rate = "every patch already there, nothing left to write"
        elif already:  # a resume: the rate is of the patches written now
            rate = f"{count(self.written, 'patch')} written now and {already} already there, {rate}"
        return (
            f"{count(self.n_patches, 'patch')}{slides} in {self.store} ({self.shards_written} of "
            f"{count(self.n_shards, 'shard')} written) in {self.seconds:.1f} s, {rate}, "
            f"{self.bytes_on_disk / 1e6:.1f} MB on disk" + (f"; {notes}" if notes else "")
        )


@dataclass
class _PlanCounts:
    """What planning found, for the summary."""

    skipped_annotations: int = 0
    padded: int = 0
    dropped_partial: int = 0
    dropped_excluded: int = 0
    seconds: float = 0.0

    def add(self, plan: SlidePlan) -> None:
        self.skipped_annotations += len(plan.plan.skipped_annotations)
        self.padded += int(plan.plan.padded.sum())
        self.dropped_partial += plan.plan.dropped_partial
        self.dropped_excluded += plan.plan.dropped_excluded


@dataclass(frozen=True)
class _Inputs:
    """The slides of a run, prepared, and what was left out."""

    prepared: tuple[PreparedSlide, ...]
    failures: tuple[SlideFailure, ...]
    unmatched_slides: tuple[str, ...]
    unmatched_annotations: tuple[str, ...]
    notes: tuple[str, ...]
    without_profile: tuple[str, ...]  # color srgb: the slides left unchanged



def extract_unfiltered(
    slides: str | Path | Sequence[str | Path],
    annotations: AnnotationSource | Sequence[str | Path] | None,
    out: str | Path | Location,
    options: ExtractOptions,
    storage_options: Mapping[str, str] | None = None,
) -> ExtractionSummary:
    """Every patch of the plan into ``out``: parse, prepare, plan, execute, finalise (the quality
    filters, ``options.filters``, are applied above this stage: ``wsizarr._pipeline``)."""
    if options.filters.active:
        raise ParameterError("quality filters are applied by run_extraction, after this extraction")
    started = time.perf_counter()
    target = parse_store_location(out, storage_options)
    partial = partial_location(target)
    with writer_lock(target) as lock, TaskRunner(options.execution) as runner:
        target_exists, partial_exists = target.exists(), partial.exists()
        if options.mode == "overwrite" and target_exists:
            ensure_own_store(target)
        building = where_to_build(
            options.mode, target=str(target), partial=str(partial), target_exists=target_exists,
            partial_exists=partial_exists, can_append=target.can_append,
        )
        location = partial if building.beside else target
        inputs = _prepare(runner, slides, annotations, options, storage_options)
        prepared, inputs = inputs.prepared, replace(inputs, prepared=())  # prepared: dropped once planned
        summarise = _summariser(target, inputs, started)
        if building.beside and not building.exists and target_exists and options.mode == "resume":
            return summarise(read_manifest(open_store(target)))  # resumed after it was published
        group = open_for_writing(location) if building.exists and options.mode != "overwrite" else None
        existing = read_manifest(group) if group is not None else None
        if existing is not None and is_stillborn(existing):
            group = existing = None
        decision = plan_run(
            options.mode, existing, store=str(location), parameters=options.parameters(),
            prepared=prepared,
            existing_hashes=[] if group is None else read_table(group["slides"], ["content_hash"])["content_hash"].tolist(),
            wants_background=options.sampling.wants_background, label_order=options.labels.label_order,
        )
        if decision.finished:
            tidy_complete(group)  # a run killed right after marking it complete
            if building.beside:
                _publish(location, target)
            return summarise(existing)
        with store_writes(location):
            if group is None:
                if building.exists:  # our own unfinished build beside the target: start it again
                    delete_store(location)
                group = create_store(
                    location, Manifest(__version__, options.parameters(), options.layout.shard_size, options.layout.codec),
                    patch_size=options.resolution.patch_size, masks=options.layout.masks,
                    quality=options.layout.quality,
                )
            with _undone_on_failure(location, group, read_manifest(group) if decision.write_plan else None):
                manifest, sources, counts = _plan(runner, group, str(location), decision, prepared, options)
            del prepared  # the sources are all the shard tasks need
            done = done_shards(group)
            _execute(runner, location, group, manifest, sources, done, options)
            lock.check()  # still this writer's store: finalise it
            finalize_store(group, location)
            if building.beside:
                _publish(location, target)
        return summarise(read_manifest(group), done, counts)


def _prepare(
    runner: TaskRunner, slides: Any, annotations: Any, options: ExtractOptions,
    storage_options: Mapping[str, str] | None,
) -> _Inputs:
    """Pair slides with annotations and prepare each slide (tasks, in order); in a cohort
    (unless ``strict``) a slide that fails is reported and left out."""
    tiling = options.tiling
    if tiling.within_annotations and annotations is None:
        raise ParameterError(f"{option('within_annotations', True)} keeps the tiles in annotations: give {option('annotations')}")
    pairs, unmatched_slides, unmatched_annotations = match_annotations(
        slides, annotations, storage_options, tiles=tiling.tiles,
    )
    shared = dict(storage_options or {})  # one mapping for every slide
    requests = (
        PrepareRequest(slide, source, options.resolution, options.labels, options.execution.reader, shared, tiling)
        for slide, source in pairs
    )
    prepared: list[PreparedSlide] = []
    failures: list[SlideFailure] = []
    notes: list[str] = []
    for result in runner.ordered(prepare_slide, requests):
        if isinstance(result, SlideFailure):
            if options.execution.strict or len(pairs) == 1:
                raise _failure_error(result)
            failures.append(result)
            continue
        prepared.append(result)
        if result.note is not None:
            notes.append(result.note)
            if options.execution.on_note is not None:
                options.execution.on_note(result.note)
    if not prepared:
        raise ParameterError("no slide could be read: " + "; ".join(f.reason for f in failures))
    without_profile = tuple(
        p.source.path for p in prepared if options.layout.color == "srgb" and p.source.info.icc_profile is None
    )
    return _Inputs(
        tuple(prepared), tuple(failures), tuple(unmatched_slides), tuple(unmatched_annotations), tuple(notes),
        without_profile,
    )


def _failure_error(failure: SlideFailure) -> Exception:
    """The error a failed preparation raised, again (tasks return failures as values)."""
    return failure.error if failure.error is not None else ParameterError(failure.reason)


def _plan(
    runner: TaskRunner, group: zarr.Group, store: str, decision: RunPlan,
    prepared: Sequence[PreparedSlide], options: ExtractOptions,
) -> tuple[Manifest, dict[int, SlideSource], _PlanCounts]:
    """Plan every slide (tasks, in order) and write each plan into the store as it arrives;
    when resuming a planned run, check the plans against the stored ones instead. Returns the
    manifest, the run's slide sources by store index, and the counts for the summary."""
    started = time.perf_counter()
    run = decision.run
    assert run is not None
    manifest = read_manifest(group)
    codes = {name: code for code, name in enumerate(decision.label_names)}
    requests = (
        PlanRequest(
            p, run.first_slide + i, options.sampling, options.labels, codes, options.resolution.patch_size,
            options.tiling,
        )
        for i, p in enumerate(prepared)
    )
    counts = _PlanCounts()
    if not decision.write_plan:
        recorded = read_table(group["slides"], rows=slice(run.first_slide, None))
        check_same_slides(store, recorded, prepared)
        for plan in runner.ordered(plan_slide, requests):
            if plan_sha256(plan.plan.arrays()) != recorded["plan_sha256"][plan.slide_index - run.first_slide]:
                raise ParameterError(
                    f"{store}: the patch plan differs from the interrupted run's; resume with the same "
                    "inputs, or start again (overwrite)"
                )
            counts.add(plan)
        rows = recorded
    else:
        manifest = replace(manifest, run=run, label_names=decision.label_names, complete=False)
        writers = begin_run(group, manifest)
        for plan in runner.ordered(plan_slide, requests):
            _write_plan(writers, plan, codes, prepared[plan.slide_index - run.first_slide], options.layout.color)
            counts.add(plan)
        n_patches, n_slides = writers["patches"].close(), writers["slides"].close()
        n_annotations = writers["annotations"].close()
        writers["rings"].close(), writers["vertices"].close()
        if n_patches == run.first_patch:
            raise ParameterError(
                f"no tile has {option('tile_min_tissue', options.tiling.tile_min_tissue)} of tissue in its slide's "
                "tissue mask (or every tile was dropped); lower it, or check the mask"
                if options.tiling.tiles else
                "the plan has no patches (annotations outside the slides, or every patch dropped); "
                "check the annotations belong to these slides"
            )
        manifest = end_planning(group, replace(
            manifest, n_patches=n_patches, n_slides=n_slides, n_annotations=n_annotations,
        ))
        rows = read_table(group["slides"], ["first_patch", "n_patches", "first_annotation", "n_annotations"],
                          rows=slice(run.first_slide, None))
    sources = {
        run.first_slide + i: replace(
            p.source,
            patch_rows=_rows(rows["first_patch"][i], rows["n_patches"][i]),
            annotation_rows=_rows(rows["first_annotation"][i], rows["n_annotations"][i]),
        )
        for i, p in enumerate(prepared)
    }
    counts.seconds = time.perf_counter() - started
    return manifest, sources, counts


def _write_plan(
    writers: Mapping[str, Any], plan: SlidePlan, codes: Mapping[str, int], prepared: PreparedSlide, color: str,
) -> None:
    """Append one slide's plan, annotations and slide row (with what ``color`` does to it) to
    the store's tables."""
    arrays = plan.plan.arrays()
    first_patch, first_annotation = writers["patches"].rows, writers["annotations"].rows
    writers["patches"].append(arrays)
    table, rings, vertices = annotation_rows(
        plan.slide_index, plan.annotations, plan.exclusions, codes, writers["rings"].rows, writers["vertices"].rows,
    )
    writers["annotations"].append(table)
    writers["rings"].append(rings)
    writers["vertices"].append(vertices)
    source = prepared.source
    writers["slides"].append(slide_row(
        source.info, source.resolution, content_hash=prepared.content_hash,
        annotations=prepared.annotations_file, annotations_sha256=prepared.annotations_sha256,
        reader=source.reader, first_patch=first_patch, n_patches=len(plan.plan),
        first_annotation=first_annotation, n_annotations=len(table["id"]), plan_sha256=plan_sha256(arrays),
        color=color,
    ))


def _rows(first: Any, count: Any) -> range:
    return range(int(first), int(first) + int(count))


def _execute(
    runner: TaskRunner, location: Location, group: zarr.Group, manifest: Manifest,
    sources: Mapping[int, SlideSource], done: np.ndarray, options: ExtractOptions,
) -> None:
    """Run a task for each shard not ``done``, reporting ``progress(patches done, patches in
    the store)``; each task gets the sources of the slides its rows come from."""
    run = manifest.run
    assert run is not None
    indices = sorted(sources)
    stops = np.array([sources[i].patch_rows.stop for i in indices])
    progress = options.execution.progress
    total, shard_size = manifest.n_patches, manifest.shard_size
    finished = int(np.minimum(shard_size, total - shard_size * np.arange(len(done)))[done].sum())
    if progress:
        progress(finished, total)

    plan_rows = PlanRows(group)

    def job(task: ShardTask) -> ShardJob:
        start = max(task.start, run.first_patch)
        first = int(np.searchsorted(stops, start, side="right"))
        last = int(np.searchsorted(stops, task.stop - 1, side="right"))
        covered = {i: sources[i] for i in indices[first: last + 1]}
        return ShardJob(
            location, task, run.first_patch, plan_rows(start, task.stop), covered,
            options.resolution.patch_size, options.layout.masks,
            quality=options.layout.quality, color=options.layout.color,
        )

    jobs = (job(task) for task in shard_tasks(total, shard_size, done))
    for count in runner.unordered(run_shard_task, jobs):
        finished += count
        if progress:
            progress(finished, total)


@contextmanager
def _undone_on_failure(location: Location, group: zarr.Group, before: Manifest | None) -> Iterator[None]:
    """Undo a run whose plan could not be made (no shard is written before it is): a store this
    run created is removed again, a finished store appended to is put back as it was
    (``before``); an interrupted run being resumed (``before`` None) stays resumable."""
    try:
        yield
    except BaseException:
        if before is None:
            raise
        if before.complete:
            roll_back_run(group, before)
        elif before.run is None and before.n_slides == 0:
            delete_store(location)
        raise


def _publish(building: Location, target: Location) -> None:
    """Swap the finished store built beside ``target`` into its place."""
    if target.exists():
        ensure_own_store(target)
    target.replace_with(building)


def _summariser(out: Location, inputs: _Inputs, started: float) -> Callable[..., ExtractionSummary]:
    def summarise(manifest: Manifest, done: np.ndarray | None = None, counts: _PlanCounts | None = None) -> ExtractionSummary:
        """The summary of a run that wrote the shards not in ``done`` (None: none)."""
        counts = counts or _PlanCounts()
        written = np.zeros(manifest.n_shards, bool) if done is None else ~done
        sizes = np.diff(np.minimum(np.arange(manifest.n_shards + 1) * manifest.shard_size, manifest.n_patches))
        return ExtractionSummary(
            store=str(out), n_patches=manifest.n_patches, n_shards=manifest.n_shards,
            shards_written=int(written.sum()), seconds=time.perf_counter() - started,
            patches_written=int(sizes[written].sum()),
            bytes_on_disk=out.usage()[0], n_slides=manifest.n_slides,
            skipped_annotations=counts.skipped_annotations, padded=counts.padded,
            dropped_partial=counts.dropped_partial, dropped_excluded=counts.dropped_excluded,
            failed_slides=inputs.failures, slides_without_annotations=inputs.unmatched_slides,
            annotations_without_slides=inputs.unmatched_annotations,
            slides_without_profile=inputs.without_profile, plan_seconds=counts.seconds,
            notes=inputs.notes,
        )

    return summarise
