"""The pipeline: annotations -> plan -> shard-aligned tasks that read and write whole shards."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openslide

from ._annotations import Annotation, read_annotations
from ._errors import ParameterError, SlideError, StoreError, StoreExistsError
from ._geometry import rasterize
from ._sampling import BACKGROUND_LABEL, PatchPlan, label_codes, plan_patches
from ._slide import (
    Resolution, SlideInfo, composite_on_white, open_slide, read_rgba, resize_patch,
    resolve_resolution, slide_info, tissue_mask,
)
from ._store import (
    create_store, disk_usage, done_shards, finalize_store, open_for_resume, store_metadata,
    write_shard,
)
from ._version import __version__

__all__ = ["ExtractionSummary", "ShardJob", "ShardTask", "extract", "read_shard", "shard_tasks"]

# A neighbourhood read covers at most this many pixels (64 MiB of RGBA); larger unions fall
# back to one read per patch, so memory stays bounded whatever the annotation size.
_MAX_REGION_PX = 4096 * 4096
_UNLABELLED_MASK = 255

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ExtractionSummary:
    """What an extraction did: patches in the store, shards written by this run, time, bytes,
    and what the plan left out or flagged (annotations outside the slide, edge patches)."""

    store: str
    n_patches: int
    n_shards: int
    shards_written: int
    seconds: float
    bytes_on_disk: int
    skipped_annotations: int = 0
    padded: int = 0
    dropped_partial: int = 0

    @property
    def patches_per_second(self) -> float:
        return self.n_patches / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        notes = ", ".join(
            f"{count} {what}" for count, what in [
                (self.skipped_annotations, "annotations outside the slide skipped"),
                (self.padded, "edge patches padded with white"),
                (self.dropped_partial, "edge patches dropped"),
            ] if count
        )
        return (
            f"{self.n_patches} patches in {self.store} ({self.shards_written} of {self.n_shards} "
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
class ShardJob:
    """Everything a task needs to produce its shard, picklable for any executor."""

    slide_path: str
    info: SlideInfo
    resolution: Resolution
    patch_size: int
    plan: PatchPlan
    mask_annotations: tuple[Annotation, ...] | None  # None: no masks
    labels: Mapping[str, int]


def shard_tasks(n_patches: int, shard_size: int, done: np.ndarray | None = None) -> list[ShardTask]:
    """One task per shard not yet done."""
    tasks = []
    for index, start in enumerate(range(0, n_patches, shard_size)):
        if done is None or not done[index]:
            tasks.append(ShardTask(index, start, min(start + shard_size, n_patches)))
    return tasks


def _runs(keys: np.ndarray) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` runs of equal consecutive values."""
    if len(keys) == 0:
        return
    edges = np.flatnonzero(np.diff(keys)) + 1
    bounds = np.concatenate([[0], edges, [len(keys)]])
    yield from zip(bounds[:-1].tolist(), bounds[1:].tolist())


def read_shard(job: ShardJob, task: ShardTask) -> dict[str, np.ndarray]:
    """The arrays of one task's shard: ``patches`` ``(n, P, P, 3)`` uint8, and ``masks``.

    Patches of one annotation at a level whose downsample is a whole number come from one read
    of their union (each source tile decoded once), cropped with numpy: identical to per-patch
    reads because every ``x, y`` sits on the level's pixel grid. Other levels (OpenSlide
    interpolates reads that fall between their pixels) are read patch by patch.
    """
    sl = slice(task.start, task.stop)
    xs, ys = job.plan.x[sl], job.plan.y[sl]
    footprint = job.resolution.read_size_px
    regions = np.empty((task.stop - task.start, footprint, footprint, 3), np.uint8)
    slide = open_slide(job.slide_path)
    try:
        _read_regions(slide, job, xs, ys, job.plan.annotation_id[sl], regions)
    except SlideError as exc:
        raise SlideError(f"{job.slide_path}: {exc}") from None
    finally:
        slide.close()
    if footprint == job.patch_size:
        arrays = {"patches": regions}
    else:
        arrays = {"patches": np.stack([resize_patch(r, job.patch_size) for r in regions])}
    if job.mask_annotations is not None:
        arrays["masks"] = _masks(job, xs, ys)
    return arrays


def _read_regions(
    slide: openslide.OpenSlide, job: ShardJob, xs: np.ndarray, ys: np.ndarray,
    annotation_ids: np.ndarray, out: np.ndarray,
) -> None:
    level = job.resolution.level
    downsample = job.info.level_downsamples[level]
    footprint = job.resolution.read_size_px
    whole = float(downsample).is_integer()
    step = int(downsample)
    for start, stop in _runs(annotation_ids):
        if whole and stop - start > 1:
            px, py = xs[start:stop] // step, ys[start:stop] // step
            x0, y0 = int(px.min()), int(py.min())
            width = int(px.max()) - x0 + footprint
            height = int(py.max()) - y0 + footprint
            if width * height <= _MAX_REGION_PX:
                region = read_rgba(slide, (x0 * step, y0 * step), level, (width, height))
                for i in range(start, stop):
                    dx, dy = int(px[i - start]) - x0, int(py[i - start]) - y0
                    composite_on_white(region[dy : dy + footprint, dx : dx + footprint], out[i])
                continue
        for i in range(start, stop):
            rgba = read_rgba(slide, (int(xs[i]), int(ys[i])), level, (footprint, footprint))
            composite_on_white(rgba, out[i])


def _masks(job: ShardJob, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Per patch, the annotations that intersect it rasterised as label code + 1."""
    annotations = job.mask_annotations or ()
    extent0 = job.resolution.read_size_px * job.info.level_downsamples[job.resolution.level]
    scale = job.patch_size / extent0
    boxes = np.array([a.bbox for a in annotations]).reshape(-1, 4)
    values = [
        _UNLABELLED_MASK if a.label is None else job.labels[a.label] + 1 for a in annotations
    ]
    out = np.zeros((len(xs), job.patch_size, job.patch_size), np.uint8)
    for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
        hits = np.flatnonzero(
            (boxes[:, 0] < x + extent0) & (boxes[:, 2] >= x) & (boxes[:, 1] < y + extent0) & (boxes[:, 3] >= y)
        )
        shapes = [(annotations[k].vertices, annotations[k].holes, values[k]) for k in hits]
        if shapes:
            out[i] = rasterize(shapes, (job.patch_size, job.patch_size), (x, y), scale)
    return out


def _plan_digest(plan: PatchPlan) -> str:
    digest = hashlib.sha256()
    for name, values in plan.arrays().items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def _load_annotations(annotations: str | Path | Sequence[Annotation]) -> tuple[list[Annotation], str | None]:
    if isinstance(annotations, (str, Path)):
        return read_annotations(annotations), str(Path(annotations).resolve())
    return list(annotations), None


def extract(
    slide: str | Path,
    annotations: str | Path | Sequence[Annotation],
    out: str | Path,
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
    seed: int = 0,
    shard_size: int = 256,
    codec: str = "zstd",
    workers: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> ExtractionSummary:
    """Extract patches around the annotations of one slide into a Zarr v3 store.

    ``annotations`` is an annotation file or ``Annotation`` records (level-0 pixels).
    Resolution: ``level`` (default 0), or ``mpp`` microns per pixel, or ``magnification``;
    ``patch_size`` is in pixels of that resolution. ``sampler`` is one of ``jitter``,
    ``centroid``, ``grid`` (``stride`` px, ``min_overlap`` fraction), ``random-in-polygon``,
    ``background``; ``background`` adds that many tissue patches outside every annotation.
    ``masks`` stores per-patch label masks; ``drop_partial`` leaves out patches crossing the
    slide edge (otherwise padded with white and flagged). ``resume`` finishes an interrupted
    store made by the same command, writing only missing shards. ``progress(done, total)`` is
    called as shards finish. Raises a ``WsizarrError`` naming the file and the fix.
    """
    started = time.perf_counter()
    out = Path(out)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ParameterError(f"workers must be at least 1, got {workers}")
    if overwrite and resume:
        raise ParameterError("--overwrite and --resume exclude each other; choose one")
    resuming = resume and out.exists()
    if out.exists() and not (overwrite or resume):
        raise StoreExistsError(
            f"{out}: already exists; pass --overwrite to replace it or --resume to finish it"
        )
    handle = open_slide(slide)
    try:
        info = slide_info(handle, slide)
        resolution = resolve_resolution(
            info, patch_size, level=level, mpp=mpp, magnification=magnification
        )
        wants_background = background > 0 or sampler == BACKGROUND_LABEL
        tissue = tissue_mask(handle) if wants_background else None
    finally:
        handle.close()
    records, source = _load_annotations(annotations)
    if not records:
        raise ParameterError(f"{source or 'annotations'}: no annotations to extract around")
    labels = label_codes(records, (BACKGROUND_LABEL,) if wants_background else ())
    plan = plan_patches(
        records, info, sampler=sampler, resolution=resolution, patch_size=patch_size,
        per_annotation=per_annotation, seed=seed, stride=stride, min_overlap=min_overlap,
        background=background, tissue=tissue, drop_partial=drop_partial, labels=labels,
    )
    if len(plan) == 0:
        raise ParameterError(
            f"{source or 'annotations'}: the plan has no patches (annotations outside the slide, "
            "or every patch dropped); check the annotations belong to this slide"
        )
    parameters: dict[str, Any] = {
        "sampler": sampler, "level": resolution.level, "mpp": mpp, "magnification": magnification,
        "patch_size": patch_size, "read_size_px": resolution.read_size_px,
        "effective_mpp": resolution.mpp, "per_annotation": per_annotation, "stride": stride,
        "min_overlap": min_overlap, "background": background, "masks": masks,
        "drop_partial": drop_partial, "seed": seed, "shard_size": shard_size, "codec": codec,
    }
    metadata = {
        "wsizarr_version": __version__,
        "parameters": parameters,
        "plan_digest": _plan_digest(plan),
        "slides": [{
            **info.to_attrs(), "annotations": source,
            "annotation_names": [a.name for a in records],
        }],
    }
    label_names = sorted(labels, key=labels.__getitem__)
    if resuming:
        group = open_for_resume(out)
        existing = store_metadata(group)
        if existing.get("plan_digest") != metadata["plan_digest"] or existing.get("parameters") != parameters:
            raise StoreError(
                f"{out}: was made with other parameters or annotations "
                f"({existing.get('parameters')}); rerun with the same ones, or use --overwrite"
            )
    else:
        group = create_store(
            out, plan.arrays(), patch_size=patch_size, shard_size=shard_size, codec=codec,
            metadata=metadata, label_names=label_names, masks=masks, overwrite=overwrite,
        )
    job = ShardJob(
        str(slide), info, resolution, patch_size, plan,
        tuple(records) if masks else None, labels,
    )
    tasks = shard_tasks(len(plan), shard_size, done_shards(group))
    done_patches = len(plan) - sum(t.stop - t.start for t in tasks)

    def run(task: ShardTask) -> int:
        write_shard(group, task.index, read_shard(job, task))
        return task.stop - task.start

    if progress:
        progress(done_patches, len(plan))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run, task) for task in tasks]
        try:
            for future in futures:
                done_patches += future.result()
                if progress:
                    progress(done_patches, len(plan))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    if not store_metadata(group).get("complete"):
        finalize_store(group)
    return ExtractionSummary(
        store=str(out), n_patches=len(plan), n_shards=-(-len(plan) // shard_size),
        shards_written=len(tasks), seconds=time.perf_counter() - started,
        bytes_on_disk=disk_usage(out)[0], skipped_annotations=len(plan.skipped_annotations),
        padded=int(plan.padded.sum()), dropped_partial=plan.dropped_partial,
    )
