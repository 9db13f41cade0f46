"""Reading a finished store back: xarray, a patch table to select and split by, numpy batches.

``open_dataset`` gives the store as a lazy ``xarray.Dataset``; ``read_patch_table`` gives its
1-D arrays (where every patch came from) with selection, group-wise splits and label weights;
``iter_batches`` streams numpy batches, reading whole shards in a random order and shuffling
patches within windows of several shards. The PyTorch datasets in ``wsizarr.torch`` build on these.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._errors import IncompleteStoreError, ParameterError, option
from .._locations import Location, parse_location
from .._text import count
from ..store._manifest import QUALITY_MEASURES, AddedArray, read_table
from ..store._reader import FetchedShard, PatchReader
from ..store._store import COORDINATE_ARRAYS, open_store, read_manifest, slide_table

if TYPE_CHECKING:
    import xarray
    import zarr

__all__ = [
    "AddedRows", "PatchTable", "added_rows", "check_added", "gather_patches", "iter_batches", "open_dataset", "open_patches",
    "patch_table", "quality_bounds", "read_patch_table", "shuffled_batches",
]

StoreLike = str | os.PathLike[str] | Location
SplitBy = Literal["annotation", "slide"]
Allocate = Callable[[tuple[int, ...], Any], np.ndarray]  # (shape, dtype) -> a new array
Bounds = Mapping[str, tuple[float | None, float | None]]  # quality measure -> (low, high), None: open


def open_dataset(
    store: StoreLike, *, storage_options: Mapping[str, str] | None = None, names: bool = False,
) -> xarray.Dataset:
    """Open a complete store (directory, ``.zip`` or ``s3://`` URL) as a lazy ``xarray.Dataset``.

    ``patches`` has dims ``(patch, row, column, channel)``; ``x``, ``y``, ``level``,
    ``annotation_id``, ``slide``, ``padded`` and ``label`` are coordinates along ``patch``.
    ``label`` holds the label names ("" for unlabelled) and ``label_code`` the stored codes.
    ``names`` also attaches ``slide_path`` and ``annotation_name`` ("" for background patches)
    along ``patch``, from the store's slide and annotation tables. Arrays added after extraction
    (``add_array``: embeddings, predictions) are variables along ``patch``; one still being
    added is left out, with a warning.
    Pixels are read only when used; with dask installed they are dask arrays chunked one shard
    each. Raises ``IncompleteStoreError`` for a store whose extraction did not finish; reading a
    missing, truncated or damaged shard raises ``CorruptStoreError`` naming it and the patch.
    """
    import xarray as xr

    location = parse_location(store, storage_options)
    group = open_store(location)
    manifest = read_manifest(group)
    label_names = np.array([*manifest.label_names, ""], dtype=str)
    checked = PatchReader(location, group=group).checked_store()
    dataset = xr.open_zarr(checked, consolidated=True, chunks=None, zarr_format=3)
    try:
        import dask  # noqa: F401
    except ImportError:
        pass  # xarray's own lazy indexing
    else:  # one dask chunk per shard: a chunk is read with one request
        shard = {"patch": manifest.shard_size}
        chunked = ("patches", "masks", *manifest.added)
        dataset = dataset.assign({name: dataset[name].chunk(shard) for name in chunked if name in dataset})
    unfinished = [name for name, added in manifest.added.items() if not added.complete]
    if unfinished:
        dataset = dataset.drop_vars([name for name in unfinished if name in dataset])
        warnings.warn(_unfinished_hint(location, unfinished), UserWarning, stacklevel=2)
    codes = np.asarray(group["label"][:])
    dataset = dataset.assign_coords(
        label=("patch", label_names[codes]),  # code -1 picks the trailing ""
        label_code=("patch", codes),
    )
    return dataset.assign_coords(_names(group, manifest.legacy is not None)) if names else dataset


def _unfinished_hint(location: Location | str, names: list[str]) -> str:
    listed = ", ".join(repr(name) for name in names)
    return f"{location}: the added arrays {listed} are not finished and are left out; run the same add_array again to finish them"


def check_added(store: Location | str, added: Mapping[str, AddedArray], name: str) -> None:
    """``IncompleteStoreError`` when the added array ``name`` is not finished."""
    if name in added and not added[name].complete:
        raise IncompleteStoreError(
            f"{store}: the added array {name!r} is not finished; run the same add_array again to finish it"
        )


class AddedRows:
    """Rows of the arrays added to a complete store (``add_array``), read a chunk (one shard's
    rows, crc32c checked) at a time with the last few chunks cached. Pickles without its open
    store and reopens it in each process."""

    _CACHED = 16

    def __init__(self, location: Location, shard_size: int, added: Mapping[str, AddedArray]) -> None:
        self.location = location
        self.shard_size = shard_size
        self.added = dict(added)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._arrays: dict[str, Any] = {}
        self._chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "shard_size": self.shard_size, "added": self.added}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def complete(self) -> tuple[str, ...]:
        return tuple(name for name, added in self.added.items() if added.complete)

    def read(self, name: str, indices: np.ndarray) -> np.ndarray:
        """The rows ``indices`` of the added array ``name``."""
        import zarr

        check_added(self.location, self.added, name)
        if self._pid != os.getpid():
            self._reset()
        if name not in self._arrays:
            self._arrays[name] = zarr.open_array(self.location.open("r"), path=name, mode="r", zarr_format=3)
        array = self._arrays[name]
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), *array.shape[1:]), array.dtype)
        shards = indices // self.shard_size
        for shard in np.unique(shards).tolist():
            chunk = self._chunks.get((name, shard))
            if chunk is None:
                chunk = np.asarray(array[shard * self.shard_size: (shard + 1) * self.shard_size])
                self._chunks[(name, shard)] = chunk
                if len(self._chunks) > self._CACHED:
                    self._chunks.popitem(last=False)
            else:
                self._chunks.move_to_end((name, shard))
            rows = shards == shard
            out[rows] = chunk[indices[rows] - shard * self.shard_size]
        return out


def _names(group: zarr.Group, legacy: bool) -> dict[str, tuple[str, np.ndarray]]:
    """Per patch, its slide's path and its annotation's name (from the tables; schema 1
    stores have no annotation table, so only the slide path)."""
    slides = np.asarray(group["slide"][:])
    paths = np.array(slide_table(group).paths, dtype=object)
    out = {"slide_path": ("patch", paths[slides].astype(str))}
    if legacy:
        return out
    table = read_table(group["annotations"], ("slide", "id", "name", "exclusion"))
    keep = ~table["exclusion"]
    keys = table["slide"][keep].astype(np.int64) << 32 | (table["id"][keep] & 0xFFFFFFFF)
    order = np.argsort(keys)
    wanted = slides.astype(np.int64) << 32 | (np.asarray(group["annotation_id"][:]) & 0xFFFFFFFF)
    at = np.clip(np.searchsorted(keys[order], wanted), 0, max(len(order) - 1, 0))
    found = (len(order) > 0) & (keys[order][at] == wanted) if len(order) else np.zeros(len(wanted), bool)
    names = np.where(found, table["name"][keep][order][at] if len(order) else "", "")
    out["annotation_name"] = ("patch", names.astype(str))
    return out


@dataclass(frozen=True, eq=False)
class PatchTable:
    """Where every patch of a complete store came from: its 1-D arrays, read once.

    Arrays are indexed by patch (0..N-1); ``label`` holds codes into ``label_names`` (-1
    unlabelled) and ``slide`` indices into ``slide_names`` (the slides' file names);
    ``quality`` the per-patch quality measures the store has, by name (``QUALITY_MEASURES``).
    """

    store: str
    x: np.ndarray
    y: np.ndarray
    level: np.ndarray
    annotation_id: np.ndarray
    label: np.ndarray
    slide: np.ndarray
    padded: np.ndarray
    label_names: tuple[str, ...]
    slide_names: tuple[str, ...]
    shard_size: int
    added: Mapping[str, AddedArray] = field(default_factory=dict)  # arrays added after extraction
    quality: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        """A line, not the arrays: patches, slides (the first three named), patches per label,
        fields, quality measures and added arrays."""
        shown = ", ".join(self.slide_names[:3]) + (f", ... {len(self.slide_names) - 3} more" if len(self.slide_names) > 3 else "")
        codes = np.bincount(self.label + 1, minlength=len(self.label_names) + 1)  # -1 unlabelled first
        labels = [f"{name} {int(n)}" for name, n in zip(self.label_names, codes[1:])]
        labels += [f"unlabelled {int(codes[0])}"] if codes[0] else []
        parts = [
            f"{count(len(self), 'patch')} from {count(len(self.slide_names), 'slide')} ({shown})",
            "labels " + (", ".join(labels) or "none"),
            "fields " + ", ".join(COORDINATE_ARRAYS),
        ]
        parts += ["quality " + ", ".join(self.quality)] if self.quality else []
        parts += ["added " + ", ".join(self.added)] if self.added else []
        return f"PatchTable({self.store!r}: {'; '.join(parts)})"

    __str__ = __repr__

    def arrays(self) -> dict[str, np.ndarray]:
        """The 1-D arrays by store name."""
        return {name: getattr(self, name) for name in COORDINATE_ARRAYS}

    def select(
        self,
        *,
        labels: Iterable[str | None] | None = None,
        slides: Iterable[str | int] | None = None,
        annotations: Iterable[int] | None = None,
        include_padded: bool = True,
        indices: np.ndarray | None = None,
        min_tissue: float | None = None,
        min_sharpness: float | None = None,
        max_pen: float | None = None,
        bounds: Bounds | None = None,
    ) -> np.ndarray:
        """Sorted indices of the patches that match every given filter.

        ``labels`` by name (None: unlabelled); ``slides`` by file name, stem or index;
        ``annotations`` by id (within the selected slides); ``include_padded=False`` leaves out
        patches that cross the slide edge; ``indices`` narrows an earlier selection. Quality
        (a store extracted with ``quality=True``): ``min_tissue`` (``tissue_fraction``),
        ``min_sharpness``, ``max_pen`` (``pen_fraction``), and ``bounds`` of any measure,
        ``{"brightness": (0.3, 0.9)}`` (inclusive; None: no bound on that side).
        ``ParameterError`` for a label, slide or quality measure the store does not have.
        """
        keep = np.ones(len(self), bool) if indices is None else self._mask_of(indices)
        if labels is not None:
            keep &= np.isin(self.label, [self._label_code(name) for name in labels])
        if slides is not None:
            keep &= np.isin(self.slide, [self.slide_index(slide) for slide in slides])
        if annotations is not None:
            keep &= np.isin(self.annotation_id, np.asarray(list(annotations), np.int64))
        if not include_padded:
            keep &= ~self.padded
        for name, (low, high) in quality_bounds(min_tissue, min_sharpness, max_pen, bounds).items():
            values = self._quality(name)
            if low is not None:
                keep &= values >= low
            if high is not None:
                keep &= values <= high
        return np.flatnonzero(keep)

    def split(
        self,
        validation: float = 0.2,
        *,
        by: SplitBy = "annotation",
        seed: int = 0,
        indices: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Split patches into (train, validation) index arrays, whole groups to one side.

        ``by="annotation"`` keeps all crops of one annotation (e.g. one glomerulus) on one side
        (patches outside any annotation, such as background, are their own groups);
        ``by="slide"`` keeps each slide on one side. Groups are drawn at random (``seed``) until
        the validation side holds at least ``validation`` of the patches.
        """
        if not 0 < validation < 1:
            raise ParameterError(f"validation must be a fraction between 0 and 1, got {validation}")
        if by not in ("annotation", "slide"):
            raise ParameterError(f"split by 'annotation' or 'slide', not {by!r}")
        chosen = np.arange(len(self)) if indices is None else np.flatnonzero(self._mask_of(indices))
        if by == "slide":
            keys = self.slide[chosen].astype(np.int64)
        else:
            ids = self.annotation_id[chosen]
            keys = np.where(
                ids >= 0, self.slide[chosen].astype(np.int64) << 32 | ids, -1 - chosen
            )
        groups, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if len(groups) < 2:
            raise ParameterError(
                f"{self.store}: the patches form a single {by} group, so no split by {by} exists"
                + ("; split by annotation instead" if by == "slide" else "")
            )
        order = np.random.default_rng(seed).permutation(len(groups))
        reached = np.cumsum(counts[order]) >= validation * len(chosen)
        n_validation = min(int(np.argmax(reached)) + 1, len(groups) - 1)
        in_validation = np.zeros(len(groups), bool)
        in_validation[order[:n_validation]] = True
        return chosen[~in_validation[inverse]], chosen[in_validation[inverse]]

    def balanced_weights(self, indices: np.ndarray | None = None) -> np.ndarray:
        """One weight per patch of ``indices`` (default all), 1 / (patches of its label), so a
        weighted sampler draws every label equally often."""
        codes = self.label if indices is None else self.label[np.asarray(indices, np.int64)]
        _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
        return 1.0 / counts[inverse]

    def _mask_of(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise ParameterError(f"{self.store}: patch indices must lie in 0..{len(self) - 1}")
        mask = np.zeros(len(self), bool)
        mask[indices] = True
        return mask

    def _quality(self, name: str) -> np.ndarray:
        if name not in self.quality:
            raise ParameterError(
                f"{self.store}: has no {name}; extract with {option('quality', True)} to filter by quality"
            )
        return self.quality[name]

    def _label_code(self, name: str | None) -> int:
        if name is None or name == "":
            return -1
        if name not in self.label_names:
            raise ParameterError(
                f"{self.store}: no label {name!r}; the store has {list(self.label_names)}"
            )
        return self.label_names.index(name)

    def slide_index(self, slide: str | int) -> int:
        """The slide's row of the slide table, from its file name, stem or index."""
        if isinstance(slide, (int, np.integer)) and 0 <= slide < len(self.slide_names):
            return int(slide)
        for index, name in enumerate(self.slide_names):
            if slide in (name, Path(name).stem):
                return index
        raise ParameterError(
            f"{self.store}: no slide {slide!r}; the store has {list(self.slide_names)}"
        )


def quality_bounds(
    min_tissue: float | None = None, min_sharpness: float | None = None, max_pen: float | None = None,
    bounds: Bounds | None = None,
) -> dict[str, tuple[float | None, float | None]]:
    """The quality filters as ``{measure: (low, high)}`` (the shorthands folded into
    ``bounds``); ``ParameterError`` for an unknown measure or a bound that is not a number."""
    merged: dict[str, tuple[float | None, float | None]] = {}
    for name, (low, high), given in [
        *((name, bound, "bounds") for name, bound in (bounds or {}).items()),
        ("tissue_fraction", (min_tissue, None), "min_tissue"),
        ("sharpness", (min_sharpness, None), "min_sharpness"),
        ("pen_fraction", (None, max_pen), "max_pen"),
    ]:
        if name not in QUALITY_MEASURES:
            raise ParameterError(f"{option(given)}: no quality measure {name!r}; choose from {list(QUALITY_MEASURES)}")
        for value in (low, high):
            if value is not None and not (isinstance(value, (int, float, np.number)) and np.isfinite(value)):
                raise ParameterError(f"{option(given)}: the bound {value!r} of {name} is not a finite number")
        if low is None and high is None:
            continue
        low, high = (None if value is None else float(value) for value in (low, high))
        lows = [v for v in (merged.get(name, (None, None))[0], low) if v is not None]
        highs = [v for v in (merged.get(name, (None, None))[1], high) if v is not None]
        merged[name] = (max(lows) if lows else None, min(highs) if highs else None)  # the tighter of each
    return merged


def read_patch_table(
    store: StoreLike, *, storage_options: Mapping[str, str] | None = None
) -> PatchTable:
    """The 1-D arrays of a complete store as a :class:`PatchTable` (``IncompleteStoreError``
    for a store whose extraction did not finish)."""
    location = parse_location(store, storage_options)
    return patch_table(location, open_store(location))


def open_patches(
    store: StoreLike, storage_options: Mapping[str, str] | None = None
) -> tuple[PatchReader, PatchTable]:
    """A reader of the store's pixels and its patch table, from one opening of the store."""
    location = parse_location(store, storage_options)
    group = open_store(location)
    return PatchReader(location, group=group), patch_table(location, group)


def patch_table(location: Location, group: zarr.Group) -> PatchTable:
    """The patch table of the store ``group``, opened at ``location`` with ``open_store``."""
    manifest = read_manifest(group)
    arrays = {name: np.asarray(group[name][:]) for name in COORDINATE_ARRAYS}
    return PatchTable(
        store=str(location),
        **arrays,
        label_names=manifest.label_names,
        slide_names=tuple(Path(path).name for path in slide_table(group).paths),
        shard_size=manifest.shard_size,
        added=dict(manifest.added),
        quality={name: np.asarray(group[name][:]) for name in manifest.quality},
    )


def added_rows(reader: PatchReader, table: PatchTable) -> AddedRows:
    """The reader of the store's added arrays (``add_array``)."""
    return AddedRows(reader.location, table.shard_size, table.added)


def shuffled_batches(
    reader: PatchReader,
    table: PatchTable,
    *,
    batch_size: int,
    indices: np.ndarray | None = None,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    shuffle_buffer: int | None = None,
    drop_last: bool = False,
    part: int = 0,
    parts: int = 1,
    images: tuple[str, ...] = ("patches",),
    channels_first: bool = False,
    allocate: Allocate = np.empty,
    added: tuple[str, ...] = (),
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the patches ``indices`` (default all) that fall to ``part`` of ``parts``.

    The shards holding the patches are ordered at random from ``(seed, epoch)`` (the same for
    every part, so the parts split them exactly) and dealt out round-robin; each part reads its
    shards whole, one request each, into a window of at least ``shuffle_buffer`` patches
    (default four shards; the first windows hold one batch, two, four, ... so the first batch
    waits for few shards), shuffles the window's patches with those left over from the last
    window and emits them as batches, keeping the rest (less than a batch) for the next window.
    Without ``shuffle``: shards and patches in store order. Each batch holds ``index``, the 1-D
    arrays and the ``images`` arrays (``patches`` as ``(B, 3, H, W)`` with ``channels_first``)
    and the ``added`` arrays (names of arrays added after extraction, read a shard's chunk at a
    time). The window holds shards as stored (encoded); each patch is decoded once, when its
    batch goes out, straight into the batch's array, which ``allocate(shape, dtype)`` makes
    (e.g. in shared memory).
    """
    if batch_size < 1:
        raise ParameterError(f"batch size must be at least 1, got {batch_size}")
    if not 0 <= part < parts:
        raise ParameterError(f"part {part} must lie in 0..{parts - 1}")
    if shuffle_buffer is not None and shuffle_buffer < 1:
        raise ParameterError(f"shuffle buffer must hold at least 1 patch, got {shuffle_buffer}")
    chosen = np.arange(len(table)) if indices is None else np.flatnonzero(table._mask_of(indices))
    capacity = batch_size if not shuffle else max(batch_size, shuffle_buffer or 4 * reader.shard_size)
    return _batches(
        reader, table, chosen, batch_size=batch_size, capacity=capacity, shuffle=shuffle,
        seed=seed, epoch=epoch, drop_last=drop_last, part=part, parts=parts, images=images,
        channels_first=channels_first, allocate=allocate,
        extra=_added_reader(reader, table, added),
    )


def _added_reader(reader: PatchReader, table: PatchTable, names: Iterable[str]) -> Callable[[np.ndarray], dict[str, np.ndarray]] | None:
    """What adds the rows of the added arrays ``names`` to a batch (None: none asked for);
    ``ParameterError`` for a name the store has not, ``IncompleteStoreError`` for one not finished."""
    names = tuple(names)
    if not names:
        return None
    for name in names:
        if name not in table.added:
            raise ParameterError(
                f"{table.store}: no added array {name!r}; the store has {list(table.added) or 'none'}"
            )
        check_added(table.store, table.added, name)
    rows = added_rows(reader, table)
    return lambda index: {name: rows.read(name, index) for name in names}


def _batches(
    reader: PatchReader,
    table: PatchTable,
    chosen: np.ndarray,
    *,
    batch_size: int,
    capacity: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
    part: int,
    parts: int,
    images: tuple[str, ...],
    channels_first: bool,
    allocate: Allocate,
    extra: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    shards, starts = np.unique(chosen // reader.shard_size, return_index=True)
    rows_of_shard = np.split(chosen, starts[1:])
    order = np.random.default_rng([seed, epoch]).permutation(len(shards)) if shuffle else np.arange(len(shards))
    rng = np.random.default_rng([seed, epoch, part, parts])
    mine = order[part::parts].tolist()
    window = _Window(reader, images, channels_first, allocate)
    target = batch_size  # the window grows from one batch to ``capacity``: the first batch waits for few shards
    while True:
        while mine and window.n_pending < target:
            position = mine.pop(0)
            window.fetch(int(shards[position]), rows_of_shard[position])
        if shuffle:
            window.shuffle(rng)
        full, rest = divmod(window.n_pending, batch_size)
        last = not mine
        for size in [batch_size] * full + ([rest] if last and rest and not drop_last else []):
            batch = window.emit(size)
            batch.update({name: values[batch["index"]] for name, values in table.arrays().items()})
            if extra is not None:  # the rows of added arrays
                batch.update(extra(batch["index"]))
            yield batch
        if last:
            return
        target = min(2 * target, capacity)


class _Window:
    """The shards fetched and not yet emitted, kept as received (encoded, about half the
    decoded size for zstd): each patch is decoded only when its batch goes out, straight into
    the batch's array, so no decoded buffer is copied again."""

    def __init__(self, reader: PatchReader, images: tuple[str, ...], channels_first: bool, allocate: Allocate) -> None:
        self.reader, self.images, self.channels_first, self.allocate = reader, images, channels_first, allocate
        self.held: dict[int, list[FetchedShard]] = {}  # by shard
        self.shard = np.empty(0, np.int64)  # each pending patch's shard and row in it, in emission order
        self.row = np.empty(0, np.int64)
        self.scratch: dict[str, np.ndarray] = {}  # one decoded patch, for the channels-first copy

    @property
    def n_pending(self) -> int:
        return len(self.shard)

    def fetch(self, shard: int, patches: np.ndarray) -> None:
        self.held[shard] = [self.reader.fetch_shard(shard, name) for name in self.images]
        first, _ = self.reader.shard_bounds(shard)
        self.shard = np.concatenate([self.shard, np.full(len(patches), shard, np.int64)])
        self.row = np.concatenate([self.row, patches - first])

    def shuffle(self, rng: np.random.Generator) -> None:
        order = rng.permutation(self.n_pending)
        self.shard, self.row = self.shard[order], self.row[order]

    def emit(self, n: int) -> dict[str, np.ndarray]:
        """The next ``n`` pending patches as a batch: ``index`` and the images, decoded."""
        shards, rows = self.shard[:n].tolist(), self.row[:n].tolist()
        self.shard, self.row = self.shard[n:], self.row[n:]
        batch: dict[str, np.ndarray] = {"index": np.asarray(shards, np.int64) * self.reader.shard_size + rows}
        for position, name in enumerate(self.images):
            patch_shape = self.held[shards[0]][position].layout.patch_shape
            transposed = self.channels_first and len(patch_shape) == 3
            shape = (n, patch_shape[2], *patch_shape[:2]) if transposed else (n, *patch_shape)
            out = self.allocate(shape, np.uint8)
            if transposed and name not in self.scratch:
                self.scratch[name] = np.empty(patch_shape, np.uint8)
            for at, (shard, row) in enumerate(zip(shards, rows)):
                fetched = self.held[shard][position]
                if transposed:  # decoded into a small buffer that stays in cache, then moved
                    fetched.decode_into(row, self.scratch[name])
                    out[at] = self.scratch[name].transpose(2, 0, 1)
                else:
                    fetched.decode_into(row, out[at])
            batch[name] = out
        for shard in set(shards) - set(self.shard.tolist()):
            del self.held[shard]
        return batch


def gather_patches(
    pool: np.ndarray, slots: np.ndarray, channels_first: bool, allocate: Allocate = np.empty
) -> np.ndarray:
    """``pool[slots]`` in an array from ``allocate(shape, dtype)``; RGB patches as
    ``(B, 3, H, W)`` with ``channels_first`` (numpy's transposing copy is ~3x faster than
    torch's ``permute(...).contiguous()`` on uint8)."""
    if not channels_first or pool.ndim != 4:
        return np.take(pool, slots, axis=0, out=allocate((len(slots), *pool.shape[1:]), pool.dtype))
    out = allocate((len(slots), pool.shape[3], *pool.shape[1:3]), pool.dtype)
    for row, slot in enumerate(slots.tolist()):
        out[row] = pool[slot].transpose(2, 0, 1)
    return out


def iter_batches(
    store: StoreLike,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    indices: np.ndarray | None = None,
    shuffle_buffer: int | None = None,
    drop_last: bool = False,
    masks: bool = False,
    channels_first: bool = False,
    rank: int = 0,
    world_size: int = 1,
    storage_options: Mapping[str, str] | None = None,
    added: Sequence[str] = (),
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of a complete store, for JAX, TensorFlow or plain numpy.

    Each batch is a dict: ``patches`` ``(B, H, W, 3)`` uint8 (``channels_first``:
    ``(B, 3, H, W)``; and ``masks`` ``(B, H, W)`` with ``masks=True``), ``index`` (the patch numbers), and ``x``, ``y``, ``level``,
    ``annotation_id``, ``label`` (codes), ``slide``, ``padded``. Whole shards are read in a
    random order (from ``seed`` and ``epoch``), their patches shuffled in windows of at least
    ``shuffle_buffer`` patches (default four shards, held as stored: the memory is that of
    their files, not of decoded patches); ``indices`` (from
    ``read_patch_table(...).select`` or ``.split``) restricts to those patches; ``rank`` of
    ``world_size`` reads its share of the shards, every patch once across the ranks.
    ``added`` names arrays added after extraction (``add_array``) to include, e.g.
    ``("features",)``.
    """
    if not 0 <= rank < world_size:
        raise ParameterError(f"rank {rank} must lie in 0..{world_size - 1} (world size {world_size})")
    reader, table = open_patches(store, storage_options)
    return shuffled_batches(
        reader, table, batch_size=batch_size, indices=indices, shuffle=shuffle, seed=seed,
        epoch=epoch, shuffle_buffer=shuffle_buffer, drop_last=drop_last, part=rank,
        parts=world_size, images=("patches", "masks") if masks else ("patches",),
        channels_first=channels_first, added=tuple(added),
    )
