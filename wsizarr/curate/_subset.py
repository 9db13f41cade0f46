"""``wsizarr subset``: a new, compact store of some of another store's patches, in store order.

The patches are chosen by ``PatchTable.select`` (labels, slides, annotations, quality bounds,
edge patches, explicit indices such as one side of ``PatchTable.split``). The new store is a
complete schema 2 store like any other: its 1-D arrays are the source's rows of the chosen
patches with the slide codes renumbered to the slides kept, its slide and annotation tables
hold those slides' rows (offsets recomputed, each slide's plan digest taken anew), and its
manifest records where it came from (``Manifest.subset``). Label names and codes, annotation
ids, positions and levels are the source's, so ``verify`` re-reads its patches from the slides.

A task per new shard (threads, processes or dask, as an extraction's) reads the chosen patches'
stored chunks with every checksum checked and packs them into the shard as they are, without
decoding (``pack_shard``); a store of another layout (no chunk checksums) is decoded and encoded
again instead. The quality arrays and finished added arrays are gathered a chunk at a time in the
same task. The store is built beside ``out`` and swapped in when complete, as an overwrite is.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .._errors import ParameterError, StoreError, StoreExistsError, option
from .._locations import Location, parse_store_location
from .._text import count
from .._version import __version__
from ..extraction._execution import TaskRunner, shard_tasks
from ..extraction._options import ExecutionOptions
from ..loaders._patches import (
    AddedRows,
    Bounds,
    PatchTable,
    patch_table,
    quality_bounds,
)
from ..store._lock import writer_lock
from ..store._manifest import (
    ANNOTATION_COLUMNS,
    RING_COLUMNS,
    VERTEX_COLUMNS,
    Manifest,
    RunState,
    SubsetOrigin,
    plan_sha256,
    read_table,
)
from ..store._reader import PatchReader
from ..store._shards import is_standard
from ..store._store import (
    begin_run,
    create_store,
    delete_store,
    end_planning,
    ensure_own_store,
    finalize_store,
    open_for_task,
    open_store,
    partial_location,
    read_manifest,
    refuse_legacy,
    why_not_a_store,
    write_shard,
)
from ._added import create_added

__all__ = ["SubsetSummary", "subset"]



@dataclass(frozen=True)
class SubsetSummary:
    """What a ``subset`` run made: ``n_patches`` of the source's ``source_patches``, from
    ``n_slides`` slides, in ``n_shards`` shards."""

    store: str
    source: str
    n_patches: int
    source_patches: int
    n_slides: int
    n_shards: int
    seconds: float
    bytes_on_disk: int

    @property
    def patches_per_second(self) -> float:
        return self.n_patches / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.n_patches} of {count(self.source_patches, 'patch')} of {self.source} from "
            f"{count(self.n_slides, 'slide')} in {self.store} ({count(self.n_shards, 'shard')}) in {self.seconds:.1f} s, "
            f"{self.patches_per_second:.0f} patches/s, {self.bytes_on_disk / 1e6:.1f} MB on disk"
        )


def subset(
    store: str | Path | Location,
    out: str | Path | Location,
    *,
    labels: Iterable[str | None] | None = None,
    slides: Iterable[str | int] | None = None,
    annotations: Iterable[int] | None = None,
    min_tissue: float | None = None,
    min_sharpness: float | None = None,
    max_pen: float | None = None,
    bounds: Bounds | None = None,
    include_padded: bool = True,
    indices: np.ndarray | Iterable[int] | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, str] | None = None,
    workers: int | None = None,
    executor: str = "threads",
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> SubsetSummary:
    """Write the patches of the complete store ``store`` that match every filter into the new
    store ``out``, in store order (a directory, a ``.zip`` or an ``s3://`` URL for either; S3
    with ``storage_options``).

    The filters are ``PatchTable.select``'s: ``labels``, ``slides``, ``annotations``, the
    quality bounds ``min_tissue``, ``min_sharpness``, ``max_pen`` and ``bounds`` (a store
    extracted with ``quality=True``), ``include_padded`` and ``indices`` (e.g. one side of
    ``PatchTable.split``). An existing ``out`` is replaced only with ``overwrite`` and only when
    it is a wsizarr store. Tasks run on ``workers`` threads or processes (``executor``) or a
    dask ``client``; ``progress(done, total)`` is called as shards finish. Raises a
    ``WsizarrError`` in one line, leaving ``out`` as it was, for an incomplete or schema 1
    source, a filter the store cannot apply, an empty selection and an ``out`` in the way.
    """
    started = time.perf_counter()
    execution = ExecutionOptions(workers=workers, executor=executor, client=client, progress=progress)
    source = parse_store_location(store, storage_options)
    target = parse_store_location(out, storage_options)
    if str(source) == str(target):
        raise ParameterError(f"{target}: is the source store itself; write the subset to another location")
    group = open_store(source)
    manifest = read_manifest(group)
    refuse_legacy(source, manifest)
    table = patch_table(source, group)
    filters: dict[str, Any] = dict(
        labels=None if labels is None else list(labels),
        slides=None if slides is None else [s if isinstance(s, str) else int(s) for s in slides],
        annotations=None if annotations is None else [int(a) for a in annotations],
        include_padded=include_padded,
        indices=None if indices is None else np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), np.int64),
    )
    quality = quality_bounds(min_tissue, min_sharpness, max_pen, bounds)
    chosen = table.select(**filters, bounds=quality)
    if not len(chosen):
        raise ParameterError(f"{source}: no patch matches the selection; loosen it ({_describe(filters, quality)})")
    if np.any(np.diff(table.slide) < 0):
        raise StoreError(f"{source}: its patches are not in slide order; extract it again instead")
    origin = SubsetOrigin(str(source), manifest.n_patches, _selection(filters, quality))
    with writer_lock(target) as lock, TaskRunner(execution) as runner:
        if target.exists():
            if not overwrite:
                raise StoreExistsError(
                    f"{target}: already exists; choose another output or replace it ({option('overwrite', True)})"
                )
            ensure_own_store(target)
        building = partial_location(target)
        _clear(building, target)
        new = _create(building, group, manifest, table, chosen, origin)
        _copy(runner, source, building, group, new, chosen, execution.progress)
        lock.check()
        finalize_store(new, building)
        kept = read_manifest(new)
        target.replace_with(building)
    return SubsetSummary(
        str(target), str(source), kept.n_patches, manifest.n_patches, kept.n_slides, kept.n_shards,
        time.perf_counter() - started, target.usage()[0],
    )


def _selection(filters: Mapping[str, Any], quality: Mapping[str, tuple[float | None, float | None]]) -> dict[str, Any]:
    """The selection as the manifest records it: the filters given, and explicit indices as the
    SHA-256 of the distinct ones, sorted, as little-endian int64 (and their number)."""
    recorded: dict[str, Any] = {
        name: value for name, value in filters.items()
        if value is not None and name not in ("indices", "include_padded")
    }
    if not filters["include_padded"]:
        recorded["include_padded"] = False
    if quality:
        recorded["quality"] = {name: list(bound) for name, bound in quality.items()}
    if filters["indices"] is not None:
        distinct = np.unique(filters["indices"]).astype("<i8")
        recorded["indices_sha256"] = hashlib.sha256(distinct.tobytes()).hexdigest()
        recorded["n_indices"] = len(distinct)
    return recorded


def _describe(filters: Mapping[str, Any], quality: Mapping[str, tuple[float | None, float | None]]) -> str:
    return ", ".join(f"{name}={value}" for name, value in _selection(filters, quality).items()) or "no filters"


def _clear(building: Location, target: Location) -> None:
    """Remove what an interrupted subset left where the new store is built; anything else there
    (an extraction's unfinished overwrite, which ``resume`` finishes) is refused."""
    if not building.exists():
        return
    problem = why_not_a_store(building)
    if problem is None and read_manifest(open_store(building, require_complete=False)).subset is not None:
        delete_store(building)
        return
    raise StoreError(
        f"{target}: {building} is in the way (an unfinished extraction, or {problem or 'a store'}); "
        f"finish it ({option('resume', True)}) or move it elsewhere"
    )


def _create(
    location: Location, source: zarr.Group, manifest: Manifest, table: PatchTable, chosen: np.ndarray,
    origin: SubsetOrigin,
) -> zarr.Group:
    """The new store with its 1-D arrays and tables written and its arrays sized: only the
    shards are left to write."""
    kept = np.unique(table.slide[chosen])
    codes = np.full(len(table.slide_names), -1, np.int32)
    codes[kept] = np.arange(len(kept), dtype=np.int32)
    coordinates = {name: values[chosen] for name, values in table.arrays().items()}
    coordinates["slide"] = codes[coordinates["slide"]]
    added = {
        name: replace(entry, shape=(len(chosen), *entry.shape[1:]))
        for name, entry in manifest.added.items() if entry.complete
    }
    planned = Manifest(
        __version__, manifest.parameters, manifest.shard_size, manifest.codec,
        label_names=manifest.label_names, n_patches=len(chosen), added=added, subset=origin,
        run=RunState(0, 0, 0),
    )
    group = create_store(
        location, planned, patch_size=source["patches"].shape[1], masks="masks" in source,
        quality=bool(manifest.quality),
    )
    planned = read_manifest(group)
    writers = begin_run(group, planned)
    writers["patches"].append(coordinates)
    slide_rows = read_table(source["slides"], rows=slice(None))
    starts = np.searchsorted(coordinates["slide"], np.arange(len(kept) + 1))
    for new_index, old_index in enumerate(kept.tolist()):
        rows = slice(int(starts[new_index]), int(starts[new_index + 1]))
        row = {name: values[old_index: old_index + 1] for name, values in slide_rows.items()}
        row.update(
            first_patch=np.array([rows.start]), n_patches=np.array([rows.stop - rows.start]),
            first_annotation=np.array([writers["annotations"].rows]),
            plan_sha256=np.array([plan_sha256({k: v[rows] for k, v in coordinates.items()})], dtype=object),
        )
        writers["slides"].append(row)
        first = int(slide_rows["first_annotation"][old_index])
        _copy_annotations(source["annotations"], writers, new_index, slice(first, first + int(slide_rows["n_annotations"][old_index])))
    counts = {name: writer.close() for name, writer in writers.items()}
    planned = replace(planned, n_slides=counts["slides"], n_annotations=counts["annotations"])
    for name, entry in added.items():
        create_added(group, name, entry, planned.shard_size)
    end_planning(group, planned)
    return group


def _copy_annotations(annotations: zarr.Group, writers: Mapping[str, Any], slide: int, rows: slice) -> None:
    """One slide's rows of the annotation, ring and vertex tables, their offsets moved to where
    they now start."""
    if rows.stop <= rows.start:
        return
    table = read_table(annotations, ANNOTATION_COLUMNS, rows)
    ring_rows = slice(int(table["first_ring"][0]), int(table["first_ring"][-1] + table["n_rings"][-1]))
    rings = read_table(annotations, RING_COLUMNS, ring_rows)
    vertex_rows = slice(int(rings["ring_start"][0]), int(rings["ring_start"][-1] + rings["ring_length"][-1])) if len(rings["ring_start"]) else slice(0, 0)
    table["slide"] = np.full(len(table["slide"]), slide, np.int32)
    table["first_ring"] = table["first_ring"] - ring_rows.start + writers["rings"].rows
    rings["ring_start"] = rings["ring_start"] - vertex_rows.start + writers["vertices"].rows
    writers["annotations"].append(table)
    writers["rings"].append(rings)
    writers["vertices"].append(read_table(annotations, VERTEX_COLUMNS, vertex_rows))


@dataclass(frozen=True, eq=False)
class _ShardCopy:
    """One new shard: the source patches it holds, in order, and how each array is copied."""

    reader: PatchReader  # the source's pixels (each task works on a copy: its own open store)
    rows: AddedRows  # the source's arrays chunked by shard rows (quality, added)
    out: Location
    shard: int
    indices: np.ndarray
    packed: tuple[str, ...]  # image arrays whose stored chunks are copied as they are
    decoded: tuple[str, ...]  # image arrays decoded and encoded again (another layout)
    gathered: tuple[str, ...]  # arrays chunked by shard rows


def _copy_shard(job: _ShardCopy) -> int:
    """Write one new shard (any executor calls this); returns its patch count."""
    reader, rows = copy.copy(job.reader), copy.copy(job.rows)
    arrays = {name: reader.read_patches(job.indices, name) for name in job.decoded}
    arrays.update({name: rows.read(name, job.indices) for name in job.gathered})
    chunks = {name: reader.read_chunks(job.indices, name) for name in job.packed}
    write_shard(open_for_task(job.out), job.shard, arrays, chunks)
    return len(job.indices)


def _copy(
    runner: TaskRunner, source: Location, out: Location, old: zarr.Group, new: zarr.Group,
    chosen: np.ndarray, progress: Callable[[int, int], None] | None,
) -> None:
    """A task per shard of the new store."""
    manifest = read_manifest(new)
    images = [name for name in ("patches", "masks") if name in new]
    packed = tuple(
        name for name in images
        if is_standard(old[name]) and old[name].metadata.codecs == new[name].metadata.codecs
    )
    rows = AddedRows(source, manifest.shard_size, read_manifest(old).added)
    job = _ShardCopy(
        PatchReader(source, group=old), rows, out, 0, chosen[:0], packed,
        tuple(name for name in images if name not in packed), (*manifest.quality, *manifest.added),
    )
    jobs = (replace(job, shard=task.index, indices=chosen[task.start: task.stop]) for task in shard_tasks(len(chosen), manifest.shard_size))
    finished = 0
    for count in runner.unordered(_copy_shard, jobs):
        finished += count
        if progress:
            progress(finished, len(chosen))
