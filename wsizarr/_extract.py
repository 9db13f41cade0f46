"""The pipeline: annotations -> plan -> shard-aligned tasks that read and write whole shards."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide

from ._annotations import Annotation, read_annotations
from ._errors import ParameterError, SlideError, StoreError, StoreExistsError
from ._sampling import PatchPlan, label_codes, plan_jitter
from ._slide import SlideInfo, composite_on_white, open_slide, read_rgba, slide_info
from ._store import (
    create_store, disk_usage, done_shards, finalize_store, open_for_resume, store_metadata, write_shard,
)
from ._version import __version__

__all__ = ["ExtractionSummary", "ShardTask", "extract", "read_shard_pixels", "shard_tasks"]

# A neighbourhood read covers at most this many pixels (64 MiB of RGBA); larger unions fall
# back to one read per patch, so memory stays bounded whatever the annotation size.
_MAX_REGION_PX = 4096 * 4096

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ExtractionSummary:
    """What an extraction did: patches in the store, shards written by this run, time, bytes."""

    store: str
    n_patches: int
    n_shards: int
    shards_written: int
    seconds: float
    bytes_on_disk: int

    @property
    def patches_per_second(self) -> float:
        return self.n_patches / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.n_patches} patches in {self.store} ({self.shards_written} of {self.n_shards} "
            f"shards written) in {self.seconds:.1f} s, {self.patches_per_second:.0f} patches/s, "
            f"{self.bytes_on_disk / 1e6:.1f} MB on disk"
        )


@dataclass(frozen=True)
class ShardTask:
    """One unit of execution: the patches ``[start, stop)`` of shard ``index``."""

    index: int
    start: int
    stop: int


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


def read_shard_pixels(
    slide_path: str | Path, info: SlideInfo, plan: PatchPlan, task: ShardTask, patch_size: int
) -> np.ndarray:
    """The ``(n, patch_size, patch_size, 3)`` uint8 pixels of one task's patches.

    Patches of one annotation at a level whose downsample is a whole number come from one read
    of their union (each source tile decoded once), cropped with numpy: identical to per-patch
    reads because every ``x, y`` sits on the level's pixel grid. Other levels (OpenSlide
    interpolates reads that fall between their pixels) are read patch by patch.
    """
    out = np.empty((task.stop - task.start, patch_size, patch_size, 3), np.uint8)
    sl = slice(task.start, task.stop)
    xs, ys, levels = plan.x[sl], plan.y[sl], plan.level[sl]
    group_keys = plan.annotation_id[sl] * 1024 + levels  # one neighbourhood per annotation and level
    slide = open_slide(slide_path)
    try:
        _read_runs(slide, info, xs, ys, levels, group_keys, patch_size, out)
    except SlideError as exc:
        raise SlideError(f"{slide_path}: {exc}") from None
    finally:
        slide.close()
    return out


def _read_runs(
    slide: openslide.OpenSlide, info: SlideInfo, xs: np.ndarray, ys: np.ndarray,
    levels: np.ndarray, group_keys: np.ndarray, patch_size: int, out: np.ndarray,
) -> None:
    for start, stop in _runs(group_keys):
        level = int(levels[start])
        downsample = info.level_downsamples[level]
        whole = float(downsample).is_integer()
        if whole:
            step = int(downsample)
            px, py = xs[start:stop] // step, ys[start:stop] // step
            x0, y0 = int(px.min()), int(py.min())
            width = int(px.max()) - x0 + patch_size
            height = int(py.max()) - y0 + patch_size
        if whole and stop - start > 1 and width * height <= _MAX_REGION_PX:
            region = read_rgba(slide, (x0 * step, y0 * step), level, (width, height))
            for i in range(start, stop):
                dx, dy = int(px[i - start]) - x0, int(py[i - start]) - y0
                composite_on_white(region[dy : dy + patch_size, dx : dx + patch_size], out[i])
        else:
            for i in range(start, stop):
                rgba = read_rgba(slide, (int(xs[i]), int(ys[i])), level, (patch_size, patch_size))
                composite_on_white(rgba, out[i])


def _plan_digest(plan: PatchPlan) -> str:
    digest = hashlib.sha256()
    for name, values in plan.arrays().items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def extract(
    slide: str | Path,
    annotations: str | Path | Sequence[Annotation],
    out: str | Path,
    *,
    level: int = 0,
    patch_size: int = 256,
    per_annotation: int = 30,
    seed: int = 0,
    shard_size: int = 256,
    codec: str = "zstd",
    workers: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> ExtractionSummary:
    """Extract jittered patches around every annotation of one slide into a Zarr v3 store.

    ``annotations`` is an annotation file or ``Annotation`` records (level-0 pixels).
    ``patch_size`` is in pixels of ``level``. ``resume`` finishes an interrupted store made by
    the same command, writing only missing shards. ``progress(patches_done, n_patches)`` is
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
    finally:
        handle.close()
    info.check_level(level)
    source = None
    if isinstance(annotations, (str, Path)):
        source = str(Path(annotations).resolve())
        annotations = read_annotations(annotations)
    if not annotations:
        raise ParameterError(f"{source or 'annotations'}: no annotations to extract around")
    labels = label_codes(annotations)
    plan = plan_jitter(
        annotations, info, level=level, patch_size=patch_size,
        per_annotation=per_annotation, seed=seed, labels=labels,
    )
    parameters = {
        "sampler": "jitter", "level": level, "patch_size": patch_size,
        "per_annotation": per_annotation, "seed": seed, "shard_size": shard_size, "codec": codec,
    }
    metadata = {
        "wsizarr_version": __version__,
        "parameters": parameters,
        "plan_digest": _plan_digest(plan),
        "slides": [{
            **info.to_attrs(), "annotations": source,
            "annotation_names": [a.name for a in annotations],
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
            metadata=metadata, label_names=label_names, overwrite=overwrite,
        )
    tasks = shard_tasks(len(plan), shard_size, done_shards(group))
    done_patches = len(plan) - sum(t.stop - t.start for t in tasks)

    def run(task: ShardTask) -> int:
        write_shard(group, task.index, read_shard_pixels(slide, info, plan, task, patch_size))
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
        bytes_on_disk=disk_usage(out)[0],
    )
