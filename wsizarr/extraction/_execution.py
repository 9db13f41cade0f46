"""Running tasks, and the shard task: produce one whole shard of patches (and masks).

:class:`TaskRunner` runs any picklable task function on threads, processes or a
``dask.distributed`` client; planning and shard tasks share it. A shard task reads its rows of
the plan from the store (the coordinator never holds the whole plan), the pixels from the
slides, and writes the shard in one piece.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import (
    FIRST_COMPLETED,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import zarr

from .._errors import SlideError
from .._locations import Location
from ..annotations._geometry import rasterize
from ..slides._color import to_srgb
from ..slides._slide import Resolution, SlideInfo, resize_patch
from ..slides._tiles import equal_runs, open_reader
from ..store._codecs import CODECS, encode_lossy
from ..store._manifest import read_annotations
from ..store._reader import PatchReader
from ..store._shards import checksum, has_chunk_checksums
from ..store._store import open_for_task, read_manifest, store_writes, write_shard
from ._options import ExecutionOptions
from ._quality import measure_patches

__all__ = [
    "PlanRows", "ShardJob", "ShardTask", "SlideSource", "TaskRunner", "read_shard", "run_shard_task", "shard_tasks",
]

_UNLABELLED_MASK = 255
T = TypeVar("T")
R = TypeVar("R")


class TaskRunner:
    """Runs tasks on ``workers`` threads or processes, or on a dask ``client``.

    Both ways keep a bounded number of tasks in flight, so the coordinator's memory does not
    grow with the number of tasks: ``ordered`` yields results in the order of the inputs (the
    few that finish early wait for an earlier one), ``unordered`` as they finish. An error (or
    Ctrl-C) stops the run: queued tasks are cancelled and worker processes ended.
    """

    def __init__(self, execution: ExecutionOptions) -> None:
        self.workers = execution.workers or os.cpu_count() or 1
        self._client = execution.client
        self._pool: Any = None
        if self._client is None:
            if execution.executor == "processes":
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            else:
                self._pool = ThreadPoolExecutor(self.workers)

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(failed=exc[0] is not None)

    def _submit(self, fn: Callable[[T], R], item: T) -> Any:
        if self._client is not None:
            return self._client.submit(fn, item, pure=False)
        return self._pool.submit(fn, item)

    def ordered(self, fn: Callable[[T], R], items: Iterable[T], window: int | None = None) -> Iterator[R]:
        items = iter(items)
        pending: deque[Any] = deque(self._submit(fn, item) for item in itertools.islice(items, window or self._window()))
        try:
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(items, 1):
                    pending.append(self._submit(fn, item))
                yield result
        except BaseException:
            self._cancel(pending)
            raise

    def unordered(self, fn: Callable[[T], R], items: Iterable[T], window: int | None = None) -> Iterator[R]:
        items = iter(items)
        pending = {self._submit(fn, item) for item in itertools.islice(items, window or self._window())}
        try:
            while pending:
                done, pending = self._first_done(pending)
                for future in done:
                    yield future.result()
                pending |= {self._submit(fn, item) for item in itertools.islice(items, len(done))}
        except BaseException:
            self._cancel(pending)
            raise

    def _window(self) -> int:
        """Tasks kept in flight: enough to keep every worker busy, few enough that waiting
        results and queued tasks stay small."""
        if self._client is not None:
            return 4 * max(1, sum(self._client.nthreads().values()))
        return 4 * self.workers

    def _first_done(self, pending: set[Any]) -> tuple[set[Any], set[Any]]:
        if self._client is not None:
            from distributed import wait as dask_wait

            done, not_done = dask_wait(list(pending), return_when="FIRST_COMPLETED")
        else:
            done, not_done = wait(pending, return_when=FIRST_COMPLETED)
        return set(done), set(not_done)

    def _cancel(self, futures: Iterable[Any]) -> None:
        futures = list(futures)
        if self._client is not None:
            self._client.cancel(futures)
            return
        for future in futures:
            future.cancel()
        # a resume redoes unfinished shards; worker processes are ended, not orphaned
        # (ProcessPoolExecutor has no public way to end them before Python 3.14)
        if isinstance(self._pool, ProcessPoolExecutor):
            for process in list((self._pool._processes or {}).values()):
                process.terminate()

    def close(self, failed: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=failed)


@dataclass(frozen=True)
class SlideSource:
    """How to read one slide: its geometry, the resolution read, the reader (``tiles`` or
    ``openslide``) and, for a slide on S3, its storage options."""

    path: str
    info: SlideInfo
    resolution: Resolution
    reader: str = "openslide"
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    patch_rows: range = range(0)  # its rows of the store's patch arrays
    annotation_rows: range = range(0)  # and of its annotation table


@dataclass(frozen=True)
class ShardTask:
    """One unit of execution: the patches ``[start, stop)`` of shard ``index``."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True, eq=False)
class ShardJob:
    """What one shard task needs besides the store: the run's first patch (earlier patches of
    its shard are kept as written), its rows of the plan (``slide``, ``x``, ``y``,
    ``annotation_id`` from ``max(task.start, first_patch)``), the sources of the slides they
    come from, and the layout (``quality``: measure the patches; ``color``: ``srgb`` converts
    each slide's pixels from its profile)."""

    store: Location
    task: ShardTask
    first_patch: int
    plan: Mapping[str, np.ndarray]
    slides: Mapping[int, SlideSource]
    patch_size: int
    masks: bool
    quality: bool = False
    color: str = "unchanged"


PLAN_COLUMNS = ("slide", "x", "y", "annotation_id")


class PlanRows:
    """The coordinator's reader of the plan in the store, one chunk at a time (the tasks come
    in shard order, so each chunk of the 1-D arrays is read once)."""

    def __init__(self, group: zarr.Group) -> None:
        self._arrays = {name: group[name] for name in PLAN_COLUMNS}
        self._chunk = self._arrays["x"].chunks[0]
        self._start = -1
        self._rows: dict[str, np.ndarray] = {}

    def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)``."""
        first = start - start % self._chunk
        if stop > first + self._chunk:  # across chunks: a store migrated from schema 1
            return {name: np.asarray(array[start:stop]) for name, array in self._arrays.items()}
        if first != self._start:
            self._rows = {name: np.asarray(array[first: first + self._chunk]) for name, array in self._arrays.items()}
            self._start = first
        return {name: rows[start - first: stop - first].copy() for name, rows in self._rows.items()}


def shard_tasks(n_patches: int, shard_size: int, done: np.ndarray | None = None) -> Iterator[ShardTask]:
    """One task per shard not yet done, made as they are needed."""
    for index, start in enumerate(range(0, n_patches, shard_size)):
        if done is None or not done[index]:
            yield ShardTask(index, start, min(start + shard_size, n_patches))


def run_shard_task(job: ShardJob) -> int:
    """Produce and write one whole shard (any executor calls this); returns its patch count.

    A shard that starts before ``job.first_patch`` (the store's last, partial shard when
    appending) keeps its earlier patches: they are read back, checksums checked (a damaged or
    missing shard is a ``CorruptStoreError``, never white patches), and written with the new ones.
    With a lossy codec each new patch is encoded once, here: the quality measures are taken on
    it decoded (what the store holds) and the earlier patches are copied as stored.
    """
    group = open_for_task(job.store)
    task = job.task
    arrays = read_shard(group, job)
    codec = read_manifest(group).codec
    chunks: dict[str, list[bytes | np.ndarray]] = {}
    if not CODECS[codec].lossless:  # encoded here, once: measured as stored, packed as they are
        encoded, stored = encode_lossy(codec, arrays.pop("patches"))
        checksums = has_chunk_checksums(group["patches"])
        chunks["patches"] = [chunk + checksum(chunk) if checksums else chunk for chunk in encoded]
    else:
        stored = arrays["patches"]
    if job.quality:
        arrays.update(measure_patches(stored))
    with store_writes(job.store):
        if task.start < job.first_patch:
            earlier = PatchReader(job.store, group=group)
            arrays = {
                name: np.concatenate([_earlier_rows(earlier, group, name, task, job.first_patch), values])
                for name, values in arrays.items()
            }
            # a lossy codec's earlier patches kept as stored: encoded again they would change
            chunks = {
                name: [*earlier.read_chunks(range(task.start, job.first_patch), name), *values]
                for name, values in chunks.items()
            }
        write_shard(group, task.index, arrays, chunks)
    return task.stop - task.start


def _earlier_rows(reader: PatchReader, group: zarr.Group, name: str, task: ShardTask, first_patch: int) -> np.ndarray:
    """The rows of ``name`` in ``task``'s shard before ``first_patch`` (checksums checked)."""
    if group[name].ndim == 1:  # one chunk per shard, crc32c checked by zarr's codec
        return np.asarray(group[name][task.start: first_patch])
    return reader.read_shard(task.index, name)[: first_patch - task.start]


def read_shard(group: zarr.Group, job: ShardJob) -> dict[str, np.ndarray]:
    """The pixels of the run's patches in ``job.task``, store indices ``max(task.start,
    job.first_patch)`` to ``task.stop``: ``patches`` ``(n, P, P, 3)`` uint8 (and ``masks``
    ``(n, P, P)``), from the job's plan rows; ``run_shard_task`` measures the quality of the
    pixels as the store's codec keeps them.

    Each slide's patches are read through one open reader (``slides._tiles``): with ``tiles`` each
    tile is decoded once for the whole task and patches are cropped from the level's own
    pixels; with ``openslide`` the patches of one annotation share one ``read_region`` where
    the level's downsample is whole.
    """
    plan = job.plan
    n, size = len(plan["x"]), job.patch_size
    arrays = {"patches": np.empty((n, size, size, 3), np.uint8)}
    if job.masks:
        arrays["masks"] = np.empty((n, size, size), np.uint8)
    for start, stop in equal_runs(plan["slide"]):
        slide_index = int(plan["slide"][start])
        source = job.slides[slide_index]
        footprint = source.resolution.read_size_px
        patches = arrays["patches"][start:stop]
        regions = patches if footprint == size else np.empty((stop - start, footprint, footprint, 3), np.uint8)
        xs, ys = plan["x"][start:stop], plan["y"][start:stop]
        try:
            with open_reader(source.info, source.reader, source.storage_options) as reader:
                reader.read_patches(
                    source.resolution.level, xs, ys, plan["annotation_id"][start:stop], footprint, regions,
                )
        except SlideError as exc:
            message = str(exc)
            raise SlideError(message if source.path in message else f"{source.path}: {message}") from None
        if job.color == "srgb" and source.info.icc_profile is not None:  # else unchanged, as recorded
            to_srgb(regions, source.info.icc_profile, source.path)
        if regions is not patches:
            for i, region in enumerate(regions):
                patches[i] = resize_patch(region, size)
        if job.masks:
            arrays["masks"][start:stop] = _masks(group["annotations"], source, size, xs, ys)
    return arrays


def _masks(
    annotations: zarr.Group, source: SlideSource, size: int, xs: np.ndarray, ys: np.ndarray,
) -> np.ndarray:
    """Per patch, the annotations that intersect it rasterised as label code + 1, and the
    exclusions over them as 0."""
    stored = read_annotations(annotations, source.annotation_rows)
    boxes = np.array([a.bbox for a in stored]).reshape(-1, 4)
    shapes = [
        (a.rings[0], a.rings[1:], 0 if a.exclusion else _UNLABELLED_MASK if a.label < 0 else a.label + 1)
        for a in stored
    ]
    extent0 = source.resolution.read_size_px * source.info.level_downsamples[source.resolution.level]
    scale = size / extent0
    out = np.zeros((len(xs), size, size), np.uint8)
    for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
        hits = np.flatnonzero(
            (boxes[:, 0] < x + extent0) & (boxes[:, 2] >= x) & (boxes[:, 1] < y + extent0) & (boxes[:, 3] >= y)
        )
        if len(hits):
            out[i] = rasterize([shapes[k] for k in hits], (size, size), (x, y), scale)
    return out
