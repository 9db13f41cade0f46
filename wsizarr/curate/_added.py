"""Arrays added to a finished store after extraction: embeddings, predictions, any per-patch
values a function computes from the pixels.

``add_array(store, name, fn)`` runs ``fn`` over the patches a shard at a time and writes its
output as the array ``name`` of shape ``(N, ...)`` along ``patch``, one chunk per shard (chunk
rows = the store's ``shard_size``), each chunk compressed and ending in its crc32c, dims
``("patch", "<name>_dim1", ...)``. The manifest records it (``added``: shape, dtype, the
function's description, ``complete``). Like an extraction it is a task per shard on a
:class:`~wsizarr.extraction._execution.TaskRunner` (threads, processes or dask): a task reads its shard
with every checksum checked, calls ``fn`` (in the worker), validates the output, writes its
chunk whole and then marks the shard done in ``_adding/<name>`` (removed at the end). A crash
loses only the shards in flight; running the same ``add_array`` again finishes the rest.

Output that can never fit (a wrong number of rows, a shape or dtype that changes between
batches, no array at all) stops the run and leaves the store as it was, byte for byte. A
``.zip`` store is copied to ``<zip>.partial.zarr`` beside it, added to there and packed back
over the zip when complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .._errors import ParameterError, StoreError, StoreExistsError, option
from .._locations import Location, parse_location
from .._text import count
from ..extraction._execution import TaskRunner
from ..extraction._options import ExecutionOptions
from ..store._lock import writer_lock
from ..store._manifest import AddedArray, Manifest
from ..store._reader import PatchReader
from ..store._store import (
    ADDING,
    COORDINATE_ARRAYS,
    RESERVED_NAMES,
    checksummed,
    consolidate,
    open_for_writing,
    open_store,
    partial_location,
    read_manifest,
    refuse_legacy,
    why_not_a_store,
    write_manifest,
)

__all__ = ["AddSummary", "add_array", "added_dims", "create_added", "describe_fn"]

BatchFn = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class AddSummary:
    """What an ``add_array`` run did."""

    store: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    n_shards: int
    shards_written: int
    seconds: float

    @property
    def patches_per_second(self) -> float:
        return self.shape[0] / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.shape} {self.dtype} in {self.store} ({self.shards_written} of "
            f"{count(self.n_shards, 'shard')} written) in {self.seconds:.1f} s"
        )


def describe_fn(fn: BatchFn) -> str:
    """How the manifest names ``fn``: its ``description`` attribute when it has one (a string),
    else its module and qualified name. A resume must come with the same description."""
    text = getattr(fn, "description", None)
    if isinstance(text, str):
        return text
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def added_dims(name: str, ndim: int) -> tuple[str, ...]:
    """The dimension names of an added array of ``ndim`` dimensions."""
    return ("patch", *(f"{name}_dim{i}" for i in range(1, ndim)))


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ParameterError(
            f"{name!r} is not a valid array name; use a Python identifier not starting with '_', "
            "e.g. features"
        )
    if name in RESERVED_NAMES:
        raise ParameterError(
            f"{name!r} is a name of the store's schema; choose another, e.g. {name}_pred"
        )


# --- the task ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Job:
    """One shard's task: read it, call ``fn``, check, and (``write``) write its rows."""

    store: Location
    name: str
    shard: int
    fn: BatchFn = field(repr=False)
    batch_size: int | None
    dtype: str | None  # None: whatever the first batch gives (the probe)
    row_shape: tuple[int, ...] | None
    cast: bool  # the dtype was given: convert the output to it
    write: bool = True


@dataclass(frozen=True)
class _Outcome:
    shard: int
    rows: int
    error: str | None = None  # output that can never be stored: stop, and undo the run
    values: np.ndarray | None = None  # the probe's output


def _run_task(job: _Job) -> _Outcome:
    """Read the shard (checksums checked), call ``fn`` batch by batch, check its output and write
    the shard's rows, then mark the shard done (any executor calls this)."""
    reader = PatchReader(job.store)
    pixels = reader.read_shard(job.shard)
    values, error = _apply(job, pixels)
    if error is not None:
        return _Outcome(job.shard, len(pixels), error)
    if not job.write:
        return _Outcome(job.shard, len(pixels), values=values)
    _write_rows(job.store.open("a", check=False), job.name, job.shard, reader.shard_size, values)
    return _Outcome(job.shard, len(pixels))


def _write_rows(store: Any, name: str, shard: int, shard_size: int, values: np.ndarray) -> None:
    array = zarr.open_array(store, path=name, mode="r+", zarr_format=3)
    start = shard * shard_size
    array[start: start + len(values)] = values  # the whole chunk: one atomic write
    zarr.open_array(store, path=f"{ADDING}/{name}", mode="r+", zarr_format=3)[shard] = 1


def _apply(job: _Job, pixels: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """``fn`` over ``pixels`` in batches of ``job.batch_size``: the rows, or why they cannot be
    stored."""
    size = job.batch_size or max(1, len(pixels))
    parts: list[np.ndarray] = []
    dtype, row_shape = job.dtype, job.row_shape
    for start in range(0, len(pixels), size):
        batch = pixels[start: start + size]
        out = job.fn(batch)
        where = f"the batch of patches {start}..{start + len(batch) - 1} of shard {job.shard}"
        if not isinstance(out, np.ndarray) and not hasattr(out, "__array__"):
            return None, f"fn returned {type(out).__name__} for {where}, not an array; return a (B, ...) array"
        try:
            values = np.asarray(out)
        except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a tensor on a GPU
            return None, f"fn's output for {where} is no numpy array ({exc}); return a (B, ...) numpy array"
        if values.ndim == 0 or values.shape[0] != len(batch):
            got = "a scalar" if values.ndim == 0 else count(values.shape[0], "row")
            return None, f"fn returned {got} for {where} of {count(len(batch), 'patch')}; return one row per patch, shape (B, ...)"
        if values.dtype.kind not in "biuf":
            return None, f"fn returned dtype {values.dtype} for {where}; return numbers (bool, int or float)"
        if job.cast:
            values = values.astype(job.dtype, copy=False)
        if row_shape is None:
            row_shape, dtype = values.shape[1:], values.dtype.name if dtype is None else dtype
        if values.shape[1:] != tuple(row_shape):
            return None, (
                f"fn returned rows of shape {values.shape[1:]} for {where}, but {tuple(row_shape)} for the first "
                "batch; every batch must give the same shape"
            )
        if np.dtype(dtype) != values.dtype:
            return None, (
                f"fn returned {values.dtype} for {where}, but {np.dtype(dtype)} for the first batch; every "
                "batch must give the same dtype (or pass dtype=)"
            )
        parts.append(values)
    return (np.concatenate(parts) if len(parts) > 1 else parts[0]), None


# --- the run -------------------------------------------------------------------------------------


def add_array(
    store: str | Path | Location,
    name: str,
    fn: BatchFn,
    *,
    batch_size: int | None = None,
    dtype: Any = None,
    workers: int | None = None,
    executor: str = "threads",
    client: Any = None,
    storage_options: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> AddSummary:
    """Compute ``fn`` over every patch of a complete store and store its output as the array
    ``name``, aligned with the patches (``(N, ...)`` along ``patch``).

    ``fn`` takes a uint8 batch ``(B, H, W, 3)`` (a shard's patches, or ``batch_size`` of them)
    and returns ``(B, ...)`` numbers (numpy, or anything with ``__array__``); the first batch
    decides the trailing shape and the dtype (unless ``dtype`` is given: the output is then
    converted to it). Tasks run as an extraction's do: on ``workers`` threads or processes
    (``executor``; ``fn`` must then pickle) or on a ``dask.distributed`` ``client``.
    ``progress(done, total)`` is called as shards finish. The same call again after a crash
    finishes what is missing (the same ``name`` and the same ``fn``: its ``description``
    attribute, else its qualified name); ``overwrite`` replaces an array of that name.
    ``store`` is a directory, an ``s3://`` URL (with ``storage_options``) or a ``.zip`` (rebuilt
    beside it and swapped in when complete). Holds the store's writer lock. Raises a
    ``WsizarrError`` in one line, leaving the store as it was, for a bad name, an array that
    exists, an incomplete store, and output that cannot be stored.
    """
    started = time.perf_counter()
    _check_name(name)
    if batch_size is not None and batch_size < 1:
        raise ParameterError(f"{option('batch_size')} must be at least 1, got {batch_size}")
    if dtype is not None:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ParameterError(f"{option('dtype')} {dtype!r} is not a numpy dtype, e.g. float16") from None
        if dtype.kind not in "biuf":
            raise ParameterError(f"{option('dtype')} must be a bool, int or float type, got {dtype}")
        dtype = dtype.name
    execution = ExecutionOptions(workers=workers, executor=executor, client=client, progress=progress)
    target = parse_location(store, storage_options)
    description = describe_fn(fn)
    with writer_lock(target) as lock:
        original = read_manifest(open_store(target))  # complete, or a one-line error
        refuse_legacy(target, original)
        if name in original.added and original.added[name].complete and not overwrite:
            raise StoreExistsError(
                f"{target}: already has an added array {name!r}; choose another name or replace it "
                f"({option('overwrite', True)})"
            )
        location, copied = _where_to_add(target)
        group = open_for_writing(location)
        manifest = read_manifest(group)
        existing = manifest.added.get(name)
        if existing is not None and existing.complete and not overwrite:  # a zip's copy, finished
            target.replace_with(location)  # but not yet packed over the zip
            return AddSummary(str(target), name, existing.shape, existing.dtype, manifest.n_shards, 0,
                              time.perf_counter() - started)
        if existing is not None and not overwrite:
            if existing.fn != description or (dtype is not None and np.dtype(dtype) != np.dtype(existing.dtype)):
                raise StoreError(
                    f"{target}: an unfinished {name!r} was being computed by {existing.fn} "
                    f"({existing.dtype}); finish it with the same fn, or start again ({option('overwrite', True)})"
                )
        resume = existing is not None and not existing.complete and not overwrite
        undo = _Undo(location, name, _root_bytes(group), copied)
        n_shards = manifest.n_shards
        with TaskRunner(execution) as runner:
            job = _Job(location, name, 0, fn, batch_size, dtype, None, dtype is not None)
            if resume:
                assert existing is not None
                _ensure_arrays(group, name, existing, manifest.shard_size, n_shards)
                added = existing
            else:
                (probe,) = runner.ordered(_run_task, [replace(job, write=False)])
                if probe.error is not None:
                    undo.discard()
                    raise ParameterError(f"add_array({name!r}): {probe.error}")
                assert probe.values is not None
                values = probe.values
                added = AddedArray((manifest.n_patches, *values.shape[1:]), values.dtype.name, description)
                undo.fresh = True
                if existing is not None:  # overwrite: the old array goes first
                    _remove(group, name, manifest)
                    manifest = replace(manifest, added={k: v for k, v in manifest.added.items() if k != name})
                    write_manifest(group, manifest)
                    consolidate(group)
                    undo.root = _root_bytes(group)
                manifest = _record(group, manifest, name, added)
                _ensure_arrays(group, name, added, manifest.shard_size, n_shards)
                consolidate(group)
                _write_rows(group.store, name, 0, manifest.shard_size, values)
            done = np.asarray(group[f"{ADDING}/{name}"][:], bool)
            written = _run_shards(runner, replace(job, dtype=added.dtype, row_shape=added.shape[1:]),
                                  done, manifest, execution.progress, undo)
            if undo.error is not None:
                undo.run(group)
                raise ParameterError(f"add_array({name!r}): {undo.error}")
            lock.check()
            _finish(group, name)
            if location != target:
                target.replace_with(location)
    return AddSummary(str(target), name, added.shape, str(np.dtype(added.dtype)), n_shards,
                      written + (0 if resume else 1), time.perf_counter() - started)


def _where_to_add(target: Location) -> tuple[Location, bool]:
    """Where the array is added: the store itself, or for a zip the directory beside it (a
    copy of the zip, made now unless an interrupted ``add_array`` left it); whether it was
    copied now."""
    if target.can_append:
        return target, False
    partial = partial_location(target)
    if partial.exists():
        problem = why_not_a_store(partial)
        if problem == "it has no zarr.json":  # a copy cut short (its root metadata goes last)
            partial.delete()
        elif problem is None and not read_manifest(open_store(partial, require_complete=False)).complete:
            raise StoreError(
                f"{target}: an unfinished extraction is being built at {partial}; finish it first "
                f"({option('resume', True)})"
            )
        elif problem is None:
            return partial, False
        else:
            raise StoreError(f"{target}: {partial} is in the way ({problem}); move it elsewhere")
    source, copy = target.open("r"), partial.open("w", check=False)
    prototype = default_buffer_prototype()
    keys = target.keys()
    for key in sorted(keys, key=lambda key: key == "zarr.json"):  # root metadata last
        sync(copy.set(key, sync(source.get(key, prototype))))
    return partial, True


def _root_bytes(group: zarr.Group) -> bytes:
    buffer = sync(group.store.get("zarr.json", default_buffer_prototype()))
    assert buffer is not None
    return buffer.to_bytes()


def _record(group: zarr.Group, manifest: Manifest, name: str, added: AddedArray) -> Manifest:
    entries = {key: value for key, value in manifest.added.items() if key != name}
    updated = replace(manifest, added={**entries, name: added})
    write_manifest(group, updated)
    return updated


def _ensure_arrays(group: zarr.Group, name: str, added: AddedArray, shard_size: int, n_shards: int) -> None:
    """Create the array and its done-markers where they are missing (the manifest names them
    first, so a crash in between is finished by the next run)."""
    if name not in group:
        create_added(group, name, added, shard_size)
    markers = group[ADDING] if ADDING in group else group.create_group(ADDING)
    if name not in markers:
        markers.create_array(
            name, shape=(n_shards,), dtype="uint8", chunks=(1,), fill_value=0,
            dimension_names=("shard",), config={"write_empty_chunks": True},
        )


def create_added(group: zarr.Group, name: str, added: AddedArray, shard_size: int) -> None:
    """Create the empty added array ``name`` as ``added`` describes it, a chunk per shard."""
    group.create_array(
        name, shape=added.shape, dtype=added.dtype, chunks=(shard_size, *added.shape[1:]),
        compressors=checksummed(ZstdCodec(level=1)), fill_value=0,
        dimension_names=added_dims(name, len(added.shape)),
        attributes={"coordinates": " ".join(COORDINATE_ARRAYS), "description": added.fn},
    )


def _remove(group: zarr.Group, name: str, manifest: Manifest) -> None:
    """Delete the array ``name`` and its done-markers (the manifest entry stays to the caller)."""
    if name in group:
        del group[name]
    _remove_markers(group, name, manifest)


def _finish(group: zarr.Group, name: str) -> None:
    """Every shard is written: drop the done-markers, mark the array complete, consolidate."""
    if not np.asarray(group[f"{ADDING}/{name}"][:], bool).all():
        raise StoreError(f"{group.store}: shards of {name!r} are missing; run add_array again")
    manifest = read_manifest(group)
    _remove_markers(group, name, manifest)
    write_manifest(group, replace(manifest, added={**manifest.added, name: replace(manifest.added[name], complete=True)}))
    consolidate(group)


def _remove_markers(group: zarr.Group, name: str, manifest: Manifest) -> None:
    """Delete the done-markers of ``name``, and ``_adding`` with them when no other array is
    being added (the manifest says: a listing may still show what was just deleted)."""
    others = [other for other, added in manifest.added.items() if other != name and not added.complete]
    if ADDING in group:
        if others:
            if name in group[ADDING]:
                del group[ADDING][name]
        else:
            del group[ADDING]


@dataclass
class _Undo:
    """How to leave the store as it was when output turns out unstorable: the root metadata as
    it was, and the array (if this run made it) or the shards this run wrote."""

    location: Location
    name: str
    root: bytes
    copied: bool  # the zip's copy was made by this run: drop it whole
    fresh: bool = False  # this run created the array
    written: list[int] = field(default_factory=list)
    error: str | None = None

    def discard(self) -> None:
        if self.copied:
            self.location.delete()

    def run(self, group: zarr.Group) -> None:
        if self.copied:
            self.location.delete()
            return
        store = group.store
        if self.fresh:
            _remove(group, self.name, read_manifest(group))
        else:
            ndim = group[self.name].ndim
            for shard in self.written:
                sync(store.delete(f"{self.name}/c/{shard}" + "/0" * (ndim - 1)))
                sync(store.delete(f"{ADDING}/{self.name}/c/{shard}"))
        sync(store.set("zarr.json", default_buffer_prototype().buffer.from_bytes(self.root)))


def _run_shards(
    runner: TaskRunner, job: _Job, done: np.ndarray, manifest: Manifest,
    progress: Callable[[int, int], None] | None, undo: _Undo,
) -> int:
    """A task for each shard not ``done``; stops submitting at the first unstorable output
    (``undo.error``) and lets the tasks in flight finish. Returns the shards written."""
    total, shard_size = manifest.n_patches, manifest.shard_size
    finished = int(np.minimum(shard_size, total - shard_size * np.arange(len(done)))[done].sum())
    if progress:
        progress(finished, total)

    def jobs() -> Iterator[_Job]:
        for shard in np.flatnonzero(~done).tolist():
            if undo.error is not None:
                return
            yield replace(job, shard=shard)

    written = 0
    for outcome in runner.unordered(_run_task, jobs()):
        if outcome.error is not None:
            undo.error = undo.error or outcome.error
            continue
        undo.written.append(outcome.shard)
        written += 1
        finished += outcome.rows
        if progress:
            progress(finished, total)
    return written
