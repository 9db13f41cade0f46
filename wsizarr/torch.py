"""PyTorch datasets over a wsizarr store (``pip install 'wsizarr[torch]'``).

* :class:`PatchDataset`: map-style, any patch by index (one ranged request each, a batch's
  requests in flight together), for ``DataLoader(shuffle=True)`` or a sampler.
* :class:`ShardShuffledPatches`: iterable, whole shards in a random order through a shuffle
  buffer, split between DataLoader workers and distributed ranks; yields whole batches.
* :func:`balanced_sampler`: a ``WeightedRandomSampler`` that draws every label equally often.
* :class:`SlideBags`: map-style, one slide at a time for multiple-instance learning: its
  patches' features (an added array), their level-0 positions and the slide's target.

The datasets open the store lazily in each worker process and never carry an open handle
across a fork or a pickle, so ``num_workers > 0`` is safe under fork and spawn. Select or split
patches with ``wsizarr.read_patch_table(store).select(...)`` / ``.split(...)`` and pass the
indices. Incomplete stores are refused with ``IncompleteStoreError``.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

try:
    import torch
    from torch.utils.data import (
        Dataset,
        IterableDataset,
        WeightedRandomSampler,
        get_worker_info,
    )
except ImportError:
    raise ImportError("wsizarr.torch needs PyTorch: pip install 'wsizarr[torch]'") from None

from ._errors import ParameterError, option
from ._locations import parse_location
from ._text import count
from .loaders._bags import slide_bags
from .loaders._patches import (
    PatchTable,
    StoreLike,
    added_rows,
    check_added,
    gather_patches,
    open_patches,
    shuffled_batches,
)
from .store._store import COORDINATE_ARRAYS, open_store

__all__ = ["PatchDataset", "ShardShuffledPatches", "SlideBags", "balanced_sampler"]

# or the name of an array added after extraction (``wsizarr.add_array``), e.g. "features"
Target = Literal["label", "slide", "annotation_id", "level", "mask"] | str | None
Layout = Literal["CHW", "HWC"]
# a slide's target: its patches' most common label, a value per slide name, a function of the name, or none
SlideTarget = Literal["majority"] | Mapping[str, Any] | Callable[[str], Any] | None
_META = ("x", "y", "level", "slide", "annotation_id", "padded")


class _StoreSource:
    """What both datasets share: the reader, the table, the chosen patches and the output form."""

    def __init__(
        self,
        store: StoreLike,
        *,
        target: Target,
        layout: Layout,
        indices: np.ndarray | None,
        transform: Callable[[torch.Tensor], Any] | None,
        with_meta: bool,
        storage_options: Mapping[str, str] | None,
    ) -> None:
        if layout not in ("CHW", "HWC"):
            raise ParameterError(f"layout must be 'CHW' or 'HWC', not {layout!r}")
        self.reader, self.table = open_patches(store, storage_options)
        added = self.table.added
        if target is not None and target != "mask" and target not in COORDINATE_ARRAYS and target not in added:
            raise ParameterError(
                f"target must be None, 'mask' or one of {list(COORDINATE_ARRAYS)}, or an added array "
                f"({', '.join(map(repr, added)) or 'the store has none'}), not {target!r}"
            )
        if target in added:
            check_added(self.reader.location, added, target)
        names = [target] if target in added else []
        if with_meta:
            names += [name for name, one in added.items() if one.complete and name not in names]
            unfinished = [name for name, one in added.items() if not one.complete]
            if unfinished:
                warnings.warn(
                    f"{self.reader.location}: the added arrays {', '.join(map(repr, unfinished))} are not "
                    "finished and are left out; run the same add_array again to finish them", UserWarning,
                    stacklevel=4,
                )
        self.added = tuple(names)
        self.rows = added_rows(self.reader, self.table)
        if target == "mask" and "masks" not in self.reader.arrays:
            raise ParameterError(
                f"{self.reader.location}: target='mask' needs a store extracted with {option('masks', True)}"
            )
        self.indices = (
            np.arange(len(self.table)) if indices is None else self.table.select(indices=indices)
        )
        self.target = target
        self.layout = layout
        self.transform = transform
        self.with_meta = with_meta

    @property
    def images(self) -> tuple[str, ...]:
        return ("patches", "masks") if self.target == "mask" else ("patches",)

    @property
    def channels_first(self) -> bool:
        return self.layout == "CHW"

    def targets_tensor(self, batch: Mapping[str, np.ndarray]) -> torch.Tensor:
        if self.target == "mask":
            return torch.as_tensor(batch["masks"])
        if self.target in self.added:
            return torch.as_tensor(batch[self.target])
        return torch.from_numpy(batch[self.target].astype(np.int64))

    def meta(self, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        shown = ("index", *_META, *(name for name in self.added if self.with_meta and self.table.added[name].complete))
        return {name: torch.as_tensor(np.asarray(batch[name])) for name in shown}

    def output(self, images: torch.Tensor, targets: torch.Tensor | None, meta: dict | None) -> Any:
        """``images`` through the transform, then the target and the metadata where asked for."""
        out: list[Any] = [self.transform(images) if self.transform else images]
        if self.target:
            out.append(targets)
        if self.with_meta:
            out.append(meta)
        return out[0] if len(out) == 1 else tuple(out)


class _SharedArrays:
    """Batch arrays in shared memory when made inside a DataLoader worker, as the DataLoader's
    own collate does, so handing a batch to the main process copies nothing.

    With ``ring`` > 0 the last ``ring`` arrays of each shape are reused in turn instead of new
    ones made: a new shared mapping costs its page faults on every batch (about 13 ms for a
    ``(64, 3, 256, 256)`` uint8 batch here, against 0.3 ms to fill memory already mapped)."""

    def __init__(self, ring: int = 0) -> None:
        self._tensors: dict[int, torch.Tensor] = {}
        self._ring = ring
        self._made: dict[tuple[tuple[int, ...], str], deque[torch.Tensor]] = {}  # oldest first

    def __call__(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        made = self._made.setdefault((tuple(shape), np.dtype(dtype).str), deque())
        if self._ring and len(made) == self._ring:
            tensor = made.popleft()  # the oldest of its shape: its batch has been handed on
        else:
            empty = torch.empty(0, dtype=torch.from_numpy(np.empty(0, dtype)).dtype)
            storage = empty._typed_storage()._new_shared(int(np.prod(shape)), device=empty.device)
            tensor = empty.new(storage).resize_(shape)
        if self._ring:
            made.append(tensor)
        array = tensor.numpy()
        self._tensors[array.ctypes.data] = tensor
        return array

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """The tensor behind an array this made (else a tensor viewing ``array``)."""
        tensor = self._tensors.pop(array.ctypes.data, None)
        return torch.from_numpy(array) if tensor is None else tensor


class _FromStore:
    """The store-backed part of both datasets."""

    _source: _StoreSource

    @property
    def table(self) -> PatchTable:
        """Where every patch of the store came from."""
        return self._source.table

    @property
    def indices(self) -> np.ndarray:
        """The store's patch numbers this dataset covers."""
        return self._source.indices


class PatchDataset(_FromStore, Dataset):
    """Map-style dataset: item ``i`` is patch ``indices[i]`` of a complete store.

    Returns ``(image, target)``: ``image`` a uint8 tensor ``(3, H, W)`` (``layout="HWC"``:
    ``(H, W, 3)``) passed through ``transform``; ``target`` the patch's ``label`` code (-1
    unlabelled; or ``"slide"``, ``"annotation_id"``, ``"level"``, or ``"mask"``: its ``(H, W)``
    uint8 mask; or the name of an array added after extraction, e.g. ``"features"``: its row),
    or only ``image`` with ``target=None``. ``with_meta`` appends a dict of ``index``, ``x``,
    ``y``, ``level``, ``slide``, ``annotation_id``, ``padded`` and the finished added arrays. ``indices``
    (from ``read_patch_table(store).select``/``.split``) restricts it to those patches.
    """

    def __init__(
        self,
        store: StoreLike,
        *,
        transform: Callable[[torch.Tensor], Any] | None = None,
        target: Target = "label",
        with_meta: bool = False,
        indices: np.ndarray | None = None,
        layout: Layout = "CHW",
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        self._source = _StoreSource(
            store, target=target, layout=layout, indices=indices, transform=transform,
            with_meta=with_meta, storage_options=storage_options,
        )

    def __len__(self) -> int:
        return len(self._source.indices)

    def __getitem__(self, item: int) -> Any:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[int]) -> list[Any]:
        """A whole batch at once (the DataLoader calls this): its reads go out together."""
        source = self._source
        try:
            patches = source.indices[np.asarray(items, np.int64)]
        except IndexError:
            raise IndexError(f"item out of range for a dataset of {count(len(self), 'patch')}") from None
        batch: dict[str, np.ndarray] = {
            name: source.reader.read_patches(patches, name) for name in source.images
        }
        batch.update({name: values[patches] for name, values in source.table.arrays().items()})
        batch.update({name: source.rows.read(name, patches) for name in source.added})
        batch["index"] = patches
        pixels = batch["patches"]
        if source.channels_first:
            pixels = gather_patches(pixels, np.arange(len(pixels)), channels_first=True)
        images = torch.from_numpy(pixels).unbind(0)
        targets = source.targets_tensor(batch).unbind(0) if source.target else None
        meta = source.meta(batch) if source.with_meta else None
        samples = []
        for row, image in enumerate(images):
            row_meta = None if meta is None else {name: values[row] for name, values in meta.items()}
            samples.append(source.output(image, None if targets is None else targets[row], row_meta))
        return samples


class ShardShuffledPatches(_FromStore, IterableDataset):
    """Iterable dataset of whole batches, read shard by shard: use ``DataLoader(ds, batch_size=None)``.

    Each epoch visits the shards holding ``indices`` (default all) in a random order from
    ``(seed, epoch)``, reads each in one request, and draws batches of ``batch_size`` from a
    window of at least ``shuffle_buffer`` patches (default four shards) whose patches are shuffled.
    Shards are dealt out between DataLoader workers and ``torch.distributed`` ranks (or the
    given ``rank``/``world_size``), so every patch comes exactly once per epoch across them;
    ranks may differ by a shard's worth of batches. Call ``set_epoch`` before each epoch (with
    ``persistent_workers=False``, the default, so workers see it). Batches are ``(images,
    targets)`` as in :class:`PatchDataset` but with a leading batch dimension; ``transform``
    is applied to the batch tensor.

    ``reuse_batches`` = N > 0: each DataLoader worker decodes into N batches' shared memory in
    turn instead of new memory for every batch (new shared memory costs its page faults, about
    a quarter of the loader's time; ``benchmarks/bench_load.py``). A batch's images are then
    overwritten by a later batch: with N at least the DataLoader's ``prefetch_factor`` + 1 (2
    by default, so N = 3), a batch stays as it was until the loader is asked for the next one,
    which suits ``for images, targets in loader: step(images, targets)``; keep a batch longer
    only as a copy (``images.clone()``, or ``.to(device)``). 0 (the default): new memory.
    """

    def __init__(
        self,
        store: StoreLike,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        transform: Callable[[torch.Tensor], Any] | None = None,
        target: Target = "label",
        with_meta: bool = False,
        indices: np.ndarray | None = None,
        layout: Layout = "CHW",
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: Mapping[str, str] | None = None,
        reuse_batches: int = 0,
    ) -> None:
        super().__init__()
        if reuse_batches < 0:
            raise ParameterError(f"reuse_batches must be 0 (new memory for each batch) or more, got {reuse_batches}")
        self.reuse_batches = reuse_batches
        self._source = _StoreSource(
            store, target=target, layout=layout, indices=indices, transform=transform,
            with_meta=with_meta, storage_options=storage_options,
        )
        if (rank is None) != (world_size is None):
            raise ParameterError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:  # type: ignore[operator]
            raise ParameterError(f"rank {rank} must lie in 0..{world_size - 1}")
        self.options = {
            "batch_size": batch_size, "seed": seed, "shuffle_buffer": shuffle_buffer,
            "shuffle": shuffle, "drop_last": drop_last,
        }
        shuffled_batches(self._source.reader, self._source.table, **self.options)  # checks them
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shard order and shuffle of ``epoch`` (the same on every worker and rank)."""
        self.epoch = epoch

    def _part(self) -> tuple[int, int]:
        rank, world_size = self.rank, self.world_size
        if rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
            world_size = torch.distributed.get_world_size() if distributed else 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return rank * workers + worker, world_size * workers  # type: ignore[operator]

    def __iter__(self):  # noqa: ANN204 - an iterator of batches
        source = self._source
        part, parts = self._part()
        shared = _SharedArrays(self.reuse_batches) if get_worker_info() is not None else None
        for batch in shuffled_batches(
            source.reader, source.table, **self.options, indices=source.indices,
            epoch=self.epoch, part=part, parts=parts, images=source.images,
            channels_first=source.channels_first, allocate=shared or np.empty, added=source.added,
        ):
            if shared is not None:
                batch.update({name: shared.tensor(batch[name]) for name in source.images})
            yield source.output(
                torch.as_tensor(batch["patches"]),
                source.targets_tensor(batch) if source.target else None,
                source.meta(batch) if source.with_meta else None,
            )


def balanced_sampler(
    dataset: PatchDataset, *, num_samples: int | None = None, seed: int | None = None
) -> WeightedRandomSampler:
    """A sampler for ``DataLoader(dataset, sampler=...)`` that draws every label equally often
    (with replacement; ``num_samples`` per epoch, default the dataset's length)."""
    weights = dataset.table.balanced_weights(dataset.indices)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.from_numpy(weights), num_samples or len(dataset), replacement=True, generator=generator
    )


class SlideBags(Dataset):
    """Map-style dataset of slides for multiple-instance learning: item ``i`` is the bag of
    slide ``slides[i]`` of a complete store, read through the slide table's ``first_patch`` and
    ``n_patches``: its patches' rows of the added array ``features`` as a float32 tensor
    ``(n_i, D)``, their level-0 ``x, y`` as an int64 tensor ``(n_i, 2)`` (both in store order)
    and the slide's target.

    ``target``: ``"majority"`` (default) the most common label code among the slide's labelled
    patches (ties: the lower code; -1 when none is labelled), an int64 scalar; a mapping from
    slide file name or stem (``"A-001.svs"`` or ``"A-001"``) to a number or array of numbers;
    a function of the slide's file name that returns one; or ``None`` for ``(features,
    coords)`` only. Targets are computed once, here. ``slides`` (file names, stems or
    indices) keeps only those slides; slides without patches are left out. Use
    ``DataLoader(bags, batch_size=None, shuffle=True, num_workers=...)``: bags differ in
    size. The store is opened lazily in each worker (no open handle is pickled).
    ``ParameterError`` for features that are not a finished ``(N, D)`` added array, a slide
    the mapping lacks, or a target that is not numbers.
    """

    def __init__(
        self,
        store: StoreLike,
        *,
        features: str,
        target: SlideTarget = "majority",
        slides: Iterable[str | int] | None = None,
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        location = parse_location(store, storage_options)
        self._source = slide_bags(location, open_store(location), features)
        table = self._source.table
        chosen = range(len(self._source.rows)) if slides is None else [table.slide_index(slide) for slide in slides]
        self.slides = np.array([slide for slide in chosen if len(self._source.rows[slide])], np.int64)
        self.targets = None if target is None else [self._target(target, int(slide)) for slide in self.slides]

    @property
    def slide_names(self) -> tuple[str, ...]:
        """The file names of the slides, item by item."""
        return tuple(self._source.table.slide_names[slide] for slide in self.slides)

    def _target(self, target: SlideTarget, slide: int) -> np.ndarray:
        """The slide's target as numpy (a tensor kept here would be moved into shared memory
        when the dataset is pickled for a worker, under the arrays already handed out)."""
        name = self._source.table.slide_names[slide]
        if target == "majority":
            return np.array(self._source.majority_label(slide), np.int64)
        if isinstance(target, Mapping):
            key = next((key for key in (name, Path(name).stem) if key in target), None)
            if key is None:
                raise ParameterError(f"{self._source.store}: target has no value for slide {name!r} (nor {Path(name).stem!r})")
            value = target[key]
        elif callable(target):
            value = target(name)
        else:
            raise ParameterError(
                f"target must be 'majority', a mapping of slide names, a function of the slide name or None, not {target!r}"
            )
        try:
            return torch.as_tensor(value).numpy()  # the dtype torch gives it
        except (TypeError, ValueError, RuntimeError):
            raise ParameterError(f"the target of slide {name!r} is {value!r}; give numbers (e.g. a class code)") from None

    def __len__(self) -> int:
        return len(self.slides)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, ...]:
        if not -len(self) <= item < len(self):
            raise IndexError(f"item {item} out of range for {count(len(self), 'slide')}")
        features, coords = self._source.bag(int(self.slides[item]))
        bag = (torch.from_numpy(features).float(), torch.from_numpy(coords))
        return bag if self.targets is None else (*bag, torch.from_numpy(np.array(self.targets[item])))
