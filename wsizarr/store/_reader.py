"""The read path of a finished store: whole shards and single patches, one request each.

``encode_shard`` writes every shard of ``patches`` (and ``masks``) as the standard
``sharding_indexed`` bytes: one inner chunk per patch ending in its crc32c, then the
``(offset, nbytes)`` index and its crc32c (the layout lives in ``_shards``). :class:`PatchReader`
reads them back with the same ``ShardIndex``: a whole shard with one GET, decoded straight into
one array (zarr's pipeline would decode chunk by chunk, costing more than the codec), and a
single patch with one ranged GET once its shard's index is cached. Every checksum is checked
before decoding, so a missing, truncated or damaged shard is a ``CorruptStoreError`` naming the
shard and the patch, never wrong or white pixels; ``checked_store`` puts the same checks under
zarr and xarray. Stores whose layout differs (another writer's index location or chunking) are
read through zarr itself.

A reader pickles without its open store and reopens it lazily in each process, so it is safe to
hand to DataLoader workers under fork and spawn.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numcodecs.abc
import numpy as np
import zarr
from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import WrapperStore

from .._errors import CorruptStoreError, ParameterError, option
from .._locations import Location, parse_location
from ._codecs import CODECS
from ._shards import (
    ShardDamaged,
    ShardIndex,
    chunk_payload,
    has_chunk_checksums,
    index_size,
    is_standard,
    n_shards,
    parse_shard_key,
    received,
    shard_key,
)
from ._store import MASK_CODEC, gather_all, open_store, read_manifest

__all__ = ["FetchedShard", "PatchReader"]

_CACHED_INDEXES = 4096  # shard indexes kept for random access (16 bytes a patch each)


@dataclass(frozen=True)
class _Layout:
    """How one image array (``patches`` or ``masks``) is stored."""

    path: str
    patch_shape: tuple[int, ...]
    codec: str
    fill_value: int
    standard: bool  # wsizarr's own shard layout: whole-shard and ranged reads apply
    checksums: bool  # each inner chunk ends in its crc32c (stores written before: no)

    def shard_key(self, shard: int) -> str:
        return shard_key(self.path, shard, 1 + len(self.patch_shape))


def _layout(array: zarr.Array, codec: str) -> _Layout:
    return _Layout(
        array.path, tuple(array.shape[1:]), codec, int(array.fill_value), is_standard(array),
        has_chunk_checksums(array),
    )


class PatchReader:
    """Reads ``patches`` (and ``masks``) of a complete store: whole shards, or patches by index.

    ``IncompleteStoreError`` for a store whose extraction did not finish; ``CorruptStoreError``
    (a ``StoreError``) for a missing, truncated or damaged shard, naming it and the patch.
    """

    def __init__(
        self,
        store: str | os.PathLike[str] | Location,
        storage_options: Mapping[str, str] | None = None,
        *,
        group: zarr.Group | None = None,
    ) -> None:
        """``group``: the store, already opened with ``open_store`` (spares a second open)."""
        self.location = parse_location(store, storage_options)
        group = open_store(self.location) if group is None else group
        manifest = read_manifest(group)
        self.n_patches: int = manifest.n_patches
        self.shard_size: int = manifest.shard_size
        self._layouts = {
            name: _layout(group[name], manifest.codec if name == "patches" else MASK_CODEC)
            for name in ("patches", "masks") if name in group
        }
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._store: Store | None = None
        self._decoders: dict[str, numcodecs.abc.Codec | None] = {}
        self._indexes: OrderedDict[tuple[str, int], ShardIndex] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_store", "_decoders", "_indexes", "_pid"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def arrays(self) -> tuple[str, ...]:
        """The image arrays this store has: ``("patches",)`` or ``("patches", "masks")``."""
        return tuple(self._layouts)

    @property
    def n_shards(self) -> int:
        return n_shards(self.n_patches, self.shard_size)

    def shard_key(self, shard: int, name: str = "patches") -> str:
        """The store key of ``shard`` of the image array ``name``."""
        return self._layout_of(name).shard_key(shard)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        """The first patch of ``shard`` and one past its last."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.n_patches)

    def read_shard(self, shard: int, name: str = "patches") -> np.ndarray:
        """Every patch of ``shard`` as one ``(n, H, W, 3)`` (masks: ``(n, H, W)``) uint8 array."""
        fetched = self.fetch_shard(shard, name)
        out = np.empty((fetched.n_patches, *fetched.layout.patch_shape), np.uint8)
        for row in range(fetched.n_patches):
            fetched.decode_into(row, out[row])
        return out

    def fetch_shard(self, shard: int, name: str = "patches") -> FetchedShard:
        """``shard``'s bytes, received with one request and checked, to decode patch by patch
        into arrays the caller owns (no copy of the whole shard in between)."""
        layout = self._layout_of(name)
        self._check_process()
        if not 0 <= shard < self.n_shards:
            raise ParameterError(f"{self.location}: shard {shard} is outside 0..{self.n_shards - 1}")
        start, stop = self.shard_bounds(shard)
        if not layout.standard:
            return FetchedShard(self, layout, shard, stop - start, self._read_with_zarr(layout, slice(start, stop)))
        assert self._store is not None  # opened by _check_process
        data = self.location.read_key(self._store, layout.shard_key(shard))
        return FetchedShard(self, layout, shard, stop - start, data, self._parse_index(layout, shard, data, whole=True))

    def check_shard(self, shard: int, name: str = "patches") -> list[CorruptStoreError]:
        """What is wrong with each damaged patch of ``shard``: every chunk's checksum is checked
        (stores without chunk checksums: every patch decoded). ``CorruptStoreError`` when the
        shard itself is missing, truncated or has a damaged index."""
        fetched = self.fetch_shard(shard, name)
        scratch = np.empty(fetched.layout.patch_shape, np.uint8)
        damaged = []
        for row in range(fetched.n_patches):
            try:
                fetched.check(row, scratch)
            except CorruptStoreError as exc:
                damaged.append(exc)
        return damaged

    def read_patches(self, indices: Sequence[int] | np.ndarray, name: str = "patches") -> np.ndarray:
        """The patches at ``indices`` (any order, repeats allowed), one ranged request each, all
        in flight at once; a shard's index is fetched once and cached."""
        layout = self._layout_of(name)
        self._check_process()
        indices = self._checked_indices(indices)
        out = np.empty((len(indices), *layout.patch_shape), np.uint8)
        if not layout.standard:
            for row, index in enumerate(indices.tolist()):
                out[row] = self._read_with_zarr(layout, index)
            return out
        shards, rows = np.divmod(indices, self.shard_size)
        chunks = self._ranged_chunks(layout, shards, rows)
        for out_row, (chunk, shard, row) in enumerate(zip(chunks, shards.tolist(), rows.tolist())):
            self._decode(layout, shard, row, chunk, out[out_row])
        return out

    def read_chunks(self, indices: Sequence[int] | np.ndarray, name: str = "patches") -> list[np.ndarray]:
        """The stored bytes of the patches at ``indices`` as a shard holds them (each encoded
        patch and its crc32c), every checksum checked, to be copied without decoding
        (``pack_shard``; this layout only). A shard holding a quarter or more of them is read
        whole with one request, the other chunks with a ranged request each, all at once."""
        layout = self._layout_of(name)
        self._check_process()
        if not layout.standard:
            raise ParameterError(f"{self.location}: '{name}' is not in wsizarr's shard layout; read its patches instead")
        indices = self._checked_indices(indices)
        shards, rows = np.divmod(indices, self.shard_size)
        found, counts = np.unique(shards, return_counts=True)
        whole = found[4 * counts >= self.shard_size]
        chunks: list[np.ndarray | None] = [None] * len(indices)
        ranged = np.flatnonzero(~np.isin(shards, whole))
        for position, chunk in zip(ranged.tolist(), self._ranged_chunks(layout, shards[ranged], rows[ranged])):
            chunks[position] = chunk
        for shard in whole.tolist():
            fetched = self.fetch_shard(shard, name)
            for position in np.flatnonzero(shards == shard).tolist():
                chunks[position] = fetched._chunk(int(rows[position]))
        out = []
        for chunk, shard, row in zip(chunks, shards.tolist(), rows.tolist()):
            if chunk is None:
                raise self._corrupt(layout, shard, "is not stored", row)
            self._payload(layout, shard, row, chunk)
            out.append(chunk.copy())  # not a view: the shard it was read with is freed
        return out
    def checked_store(self) -> Store:
        """The store for zarr (and xarray) to read, with this reader's checks on every shard of
        ``patches`` and ``masks``: a missing, truncated or damaged one raises
        ``CorruptStoreError`` naming it (and the patch) instead of reading as white pixels."""
        self._check_process()
        assert self._store is not None  # opened by _check_process
        return _CheckedStore(self._store, self)

    # --- internals -------------------------------------------------------------------------

    def _checked_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_patches):
            raise ParameterError(
                f"{self.location}: patch indices must lie in 0..{self.n_patches - 1}"
            )
        return indices

    def _ranged_chunks(self, layout: _Layout, shards: np.ndarray, rows: np.ndarray) -> list[np.ndarray | None]:
        """The stored chunk of each ``(shard, row)``, one ranged request each, all in flight at
        once (a shard's index is fetched once and cached); None where a chunk is not stored."""
        sync(self._cache_indexes(layout, sorted(set(shards.tolist()))))
        requests: list[tuple[str, RangeByteRequest] | None] = []
        for shard, row in zip(shards.tolist(), rows.tolist()):
            chunk = self._indexes[(layout.path, shard)].chunk(row)
            requests.append(
                None if chunk is None
                else (layout.shard_key(shard), RangeByteRequest(chunk[0], chunk[0] + chunk[1]))
            )
        received = iter(sync(gather_all([self._get(*r) for r in requests if r is not None])))
        return [
            None if request is None else self._received(layout, shard, next(received), request[1])
            for request, shard in zip(requests, shards.tolist())
        ]

    def _layout_of(self, name: str) -> _Layout:
        if name not in self._layouts:
            raise ParameterError(
                f"{self.location}: the store has no '{name}' array"
                + (f"; extract with {option('masks', True)} to add one" if name == "masks" else "")
            )
        return self._layouts[name]

    def _check_process(self) -> None:
        """Open the store in this process (a forked child never uses its parent's handle)."""
        if self._pid != os.getpid():
            self._reset()
        if self._store is None:
            self._store = self.location.open("r")

    async def _get(
        self, key: str, byte_range: RangeByteRequest | SuffixByteRequest | None = None
    ) -> np.ndarray | None:
        """The bytes at ``key`` as a uint8 array, without copying what the store returned."""
        assert self._store is not None  # opened by _check_process
        buffer = await self._store.get(key, default_buffer_prototype(), byte_range)
        return _as_bytes(buffer)

    async def _cache_indexes(self, layout: _Layout, shards: list[int]) -> None:
        wanted = [s for s in shards if (layout.path, s) not in self._indexes]
        suffix = SuffixByteRequest(index_size(self.shard_size))
        tails = await gather_all([self._get(layout.shard_key(s), suffix) for s in wanted])
        for shard, tail in zip(wanted, tails):
            self._indexes[(layout.path, shard)] = self._parse_index(layout, shard, tail)
        for shard in shards:
            self._indexes.move_to_end((layout.path, shard))
        self._trim_indexes(max(_CACHED_INDEXES, len(shards)))

    def _trim_indexes(self, keep: int) -> None:
        while len(self._indexes) > keep:
            self._indexes.popitem(last=False)

    def _parse_index(
        self, layout: _Layout, shard: int, data: np.ndarray | None, *, whole: bool = False
    ) -> ShardIndex:
        """The index at the end of ``data`` (the shard or, unless ``whole``, its tail), checked."""
        try:
            return ShardIndex.parse(data, self.shard_size, whole=whole)
        except ShardDamaged as exc:
            raise self._corrupt(layout, shard, str(exc)) from None

    def _received(
        self, layout: _Layout, shard: int, data: np.ndarray | None, request: RangeByteRequest
    ) -> np.ndarray:
        """``data``, checked to be every byte a ranged read of one chunk of ``shard`` asked for."""
        try:
            return received(data, request.end - request.start)
        except ShardDamaged as exc:
            raise self._corrupt(layout, shard, str(exc)) from None

    def _payload(self, layout: _Layout, shard: int, row: int, chunk: np.ndarray) -> np.ndarray:
        """The encoded patch of a stored chunk, its checksum (if the layout has one) checked."""
        if not layout.checksums:
            return chunk
        try:
            return chunk_payload(chunk)
        except ShardDamaged as exc:
            raise self._corrupt(layout, shard, str(exc), row) from None

    def _decode(
        self, layout: _Layout, shard: int, row: int, chunk: np.ndarray | None, out: np.ndarray
    ) -> None:
        if chunk is None:
            out[...] = layout.fill_value
            return
        data = self._payload(layout, shard, row, chunk)
        if layout.codec not in self._decoders:
            self._decoders[layout.codec] = CODECS[layout.codec].encoder()
        decoder = self._decoders[layout.codec]
        try:
            if decoder is None:
                out[...] = np.frombuffer(data, np.uint8).reshape(out.shape)
            else:
                decoder.decode(data, out=out)
        except Exception as exc:  # any codec's failure means the bytes on storage are damaged
            raise self._corrupt(layout, shard, f"does not decode ({type(exc).__name__}: {exc})", row) from None

    def _corrupt(self, layout: _Layout, shard: int, why: str, row: int | None = None) -> CorruptStoreError:
        patch = None if row is None else shard * self.shard_size + row
        detail = f"shard {shard} of '{layout.path}' is unreadable ({why if patch is None else f'patch {patch} {why}'})"
        return CorruptStoreError(
            f"{self.location}: {detail}; run `wsizarr verify` and re-extract the store", detail, patch
        )

    def _read_with_zarr(self, layout: _Layout, selection: slice | int) -> np.ndarray:
        array = zarr.open_array(self._store, path=layout.path, mode="r", zarr_format=3)
        try:
            return np.asarray(array[selection])
        except ValueError as exc:  # zarr's codecs: a checksum, a truncated shard, a bad frame
            shard = (selection.start if isinstance(selection, slice) else selection) // self.shard_size
            raise self._corrupt(layout, shard, f"{type(exc).__name__}: {exc}") from None

    def _shard_of_key(self, key: str) -> tuple[_Layout, int] | None:
        """The checked layout and shard a store key holds, or None for any other key."""
        found = parse_shard_key(key)
        if found is None:
            return None
        path, shard, ndim = found
        layout = self._layouts.get(path)
        if layout is None or not layout.standard or ndim != 1 + len(layout.patch_shape):
            return None
        return (layout, shard) if shard < self.n_shards else None


def _as_bytes(buffer: Buffer | None) -> np.ndarray | None:
    """A zarr buffer as a flat uint8 array (no copy)."""
    return None if buffer is None else buffer.as_numpy_array().view(np.uint8).reshape(-1)


class _CheckedStore(WrapperStore[Store]):
    """A read-only store that passes every shard of ``patches`` and ``masks`` through its
    reader's checks before zarr decodes it (see ``PatchReader.checked_store``)."""

    def __init__(self, store: Store, reader: PatchReader) -> None:
        super().__init__(store)
        self._reader = reader

    def _with_store(self, store: Store) -> _CheckedStore:
        return _CheckedStore(store, self._reader)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        buffer = await self._store.get(key, prototype, byte_range)
        found = self._reader._shard_of_key(key)
        if found is None:
            return buffer
        layout, shard = found
        data = _as_bytes(buffer)
        reader = self._reader
        if byte_range is None:  # a whole shard: its index and every chunk
            index = reader._parse_index(layout, shard, data, whole=True)
            assert data is not None
            for row, offset, nbytes in index.stored_chunks():
                reader._payload(layout, shard, row, data[offset : offset + nbytes])
        elif isinstance(byte_range, SuffixByteRequest):  # zarr reads the index for a few chunks
            reader._indexes[(layout.path, shard)] = reader._parse_index(layout, shard, data)
            reader._trim_indexes(_CACHED_INDEXES)
        elif isinstance(byte_range, RangeByteRequest):  # one chunk, found in the index read before
            index = reader._indexes.get((layout.path, shard))
            row = None if index is None else index.row_at(byte_range.start)
            chunk = reader._received(layout, shard, data, byte_range)
            if row is not None:
                reader._payload(layout, shard, row, chunk)
        return buffer


@dataclass(frozen=True, eq=False)
class FetchedShard:
    """One shard as received: ``decode_into(row, out)`` decodes its patch ``row`` into ``out``."""

    reader: PatchReader
    layout: _Layout
    shard: int
    n_patches: int
    data: np.ndarray  # the shard file, or (another writer's layout) its decoded patches
    index: ShardIndex | None = None  # where each patch is in data; None: data is patches

    @property
    def first_patch(self) -> int:
        return self.shard * self.reader.shard_size

    def decode_into(self, row: int, out: np.ndarray) -> None:
        if self.index is None:
            out[...] = self.data[row]
            return
        self.reader._decode(self.layout, self.shard, row, self._chunk(row), out)

    def check(self, row: int, scratch: np.ndarray) -> None:
        """``CorruptStoreError`` unless patch ``row`` is stored and intact: its checksum, or
        (without checksums) decoding it into ``scratch``."""
        if self.index is None:
            return  # read through zarr, which checked it
        chunk = self._chunk(row)
        if chunk is None:
            raise self.reader._corrupt(self.layout, self.shard, "is not stored", row)
        if self.layout.checksums:
            self.reader._payload(self.layout, self.shard, row, chunk)
        else:
            self.reader._decode(self.layout, self.shard, row, chunk, scratch)

    def _chunk(self, row: int) -> np.ndarray | None:
        assert self.index is not None
        chunk = self.index.chunk(row)
        return None if chunk is None else self.data[chunk[0] : chunk[0] + chunk[1]]
