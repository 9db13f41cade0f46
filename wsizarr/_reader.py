"""The read path of a finished store: whole shards and single patches, one request each.

``encode_shard`` writes every shard of ``patches`` (and ``masks``) as the standard
``sharding_indexed`` bytes: one inner chunk per patch ending in its crc32c, then the
``(offset, nbytes)`` index and its crc32c. :class:`PatchReader` reads them back the same way: a
whole shard with one GET, decoded straight into one array (zarr's pipeline would decode chunk by
chunk, costing more than the codec), and a single patch with one ranged GET once its shard's
index is cached. Every checksum is checked before decoding, so a missing, truncated or damaged
shard is a ``CorruptStoreError`` naming the shard and the patch, never wrong or white pixels;
``checked_store`` puts the same checks under zarr and xarray. Stores whose layout differs
(another writer's index location or chunking) are read through zarr itself.

A reader pickles without its open store and reopens it lazily in each process, so it is safe to
hand to DataLoader workers under fork and spawn.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numcodecs.abc
import numpy as np
import zarr
from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.codecs.sharding import ShardingCodec, ShardingCodecIndexLocation
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import WrapperStore

from ._errors import CorruptStoreError, ParameterError
from ._locations import Location, parse_location
from ._store import (
    CHECKSUM_BYTES, CODECS, MASK_CODEC, MISSING_CHUNK, checksum,
    has_chunk_checksums, index_size, open_store, store_metadata,
)

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
        return f"{self.path}/c/{shard}" + "/0" * len(self.patch_shape)


def _layout(array: zarr.Array, codec: str) -> _Layout:
    sharding = array.metadata.codecs[0] if array.metadata.codecs else None
    standard = (
        isinstance(sharding, ShardingCodec)
        and sharding.index_location == ShardingCodecIndexLocation.end
        and tuple(sharding.chunk_shape) == (1, *array.shape[1:])
        and array.metadata.chunk_key_encoding.name == "default"
        and getattr(array.metadata.chunk_key_encoding, "separator", "/") == "/"
    )
    return _Layout(
        array.path, tuple(array.shape[1:]), codec, int(array.fill_value), standard,
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
        metadata = store_metadata(group)
        self.n_patches: int = metadata["n_patches"]
        self.shard_size: int = metadata["shard_size"]
        self._layouts = {
            name: _layout(group[name], metadata["codec"] if name == "patches" else MASK_CODEC)
            for name in ("patches", "masks") if name in group
        }
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._store: Store | None = None
        self._decoders: dict[str, numcodecs.abc.Codec | None] = {}
        self._indexes: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

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
        return -(-self.n_patches // self.shard_size)

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

    def fetch_shard(
        self, shard: int, name: str = "patches", reuse: np.ndarray | None = None
    ) -> FetchedShard:
        """``shard``'s bytes, received with one request and checked, to decode patch by patch
        into arrays the caller owns (no copy of the whole shard in between). ``reuse``: an
        earlier ``FetchedShard.buffer`` the caller is done with (see ``Location.read_key``)."""
        layout = self._layout_of(name)
        self._check_process()
        if not 0 <= shard < self.n_shards:
            raise ParameterError(f"{self.location}: shard {shard} is outside 0..{self.n_shards - 1}")
        start, stop = self.shard_bounds(shard)
        if not layout.standard:
            return FetchedShard(self, layout, shard, stop - start, self._read_with_zarr(layout, slice(start, stop)))
        assert self._store is not None  # opened by _check_process
        received = self.location.read_key(self._store, layout.shard_key(shard), reuse)
        return FetchedShard(self, layout, shard, stop - start, received, self._whole_shard_index(layout, shard, received))

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
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_patches):
            raise ParameterError(
                f"{self.location}: patch indices must lie in 0..{self.n_patches - 1}"
            )
        out = np.empty((len(indices), *layout.patch_shape), np.uint8)
        if not layout.standard:
            for row, index in enumerate(indices.tolist()):
                out[row] = self._read_with_zarr(layout, index)
            return out
        shards, rows = np.divmod(indices, self.shard_size)
        sync(self._cache_indexes(layout, sorted(set(shards.tolist()))))
        requests = []
        for shard, row in zip(shards.tolist(), rows.tolist()):
            offset, nbytes = self._indexes[(layout.path, shard)][row]
            missing = offset == MISSING_CHUNK
            requests.append(
                None if missing else (layout.shard_key(shard), RangeByteRequest(int(offset), int(offset + nbytes)))
            )
        chunks = sync(_gather([self._get(*r) for r in requests if r is not None]))
        received = iter(chunks)
        for out_row, (request, shard, row) in enumerate(zip(requests, shards.tolist(), rows.tolist())):
            data = None if request is None else next(received)
            if request is not None:
                self._check_range(layout, shard, data, request[1])
            self._decode(layout, shard, row, data, out[out_row])
        return out

    def checked_store(self) -> Store:
        """The store for zarr (and xarray) to read, with this reader's checks on every shard of
        ``patches`` and ``masks``: a missing, truncated or damaged one raises
        ``CorruptStoreError`` naming it (and the patch) instead of reading as white pixels."""
        self._check_process()
        assert self._store is not None  # opened by _check_process
        return _CheckedStore(self._store, self)

    # --- internals -------------------------------------------------------------------------

    def _layout_of(self, name: str) -> _Layout:
        if name not in self._layouts:
            raise ParameterError(
                f"{self.location}: the store has no '{name}' array"
                + ("; extract with --masks to add one" if name == "masks" else "")
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
        tails = await _gather([self._get(layout.shard_key(s), suffix) for s in wanted])
        for shard, tail in zip(wanted, tails):
            self._indexes[(layout.path, shard)] = self._parse_index(layout, shard, tail)
        for shard in shards:
            self._indexes.move_to_end((layout.path, shard))
        self._trim_indexes(max(_CACHED_INDEXES, len(shards)))

    def _trim_indexes(self, keep: int) -> None:
        while len(self._indexes) > keep:
            self._indexes.popitem(last=False)

    def _parse_index(self, layout: _Layout, shard: int, data: np.ndarray | None) -> np.ndarray:
        """The ``(offset, nbytes)`` pairs at the end of ``data`` (the shard or its tail), checked."""
        if data is None:
            raise self._corrupt(layout, shard, "the shard file is missing")
        size = index_size(self.shard_size)
        if len(data) < size:
            raise self._corrupt(
                layout, shard, "the shard file is empty" if not len(data) else
                f"the shard file is truncated: {len(data)} bytes, shorter than its index",
            )
        index_bytes, stored = data[-size:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
        if checksum(index_bytes) != stored.tobytes():
            raise self._corrupt(layout, shard, "its index fails its checksum: the file is damaged or truncated")
        return np.frombuffer(index_bytes.tobytes(), "<u8").reshape(-1, 2)  # (offset, nbytes) rows

    def _whole_shard_index(self, layout: _Layout, shard: int, data: np.ndarray | None) -> np.ndarray:
        """The index of a whole shard file, checked to address only bytes before the index."""
        index = self._parse_index(layout, shard, data)
        assert data is not None  # _parse_index raised otherwise
        stored = index[:, 0] != MISSING_CHUNK
        end = int(index[stored].sum(axis=1).max(initial=0))
        if end > len(data) - index_size(self.shard_size):
            raise self._corrupt(layout, shard, f"the shard file is truncated: {len(data)} bytes, its index needs more")
        return index

    def _check_range(
        self, layout: _Layout, shard: int, data: np.ndarray | None, request: RangeByteRequest
    ) -> None:
        """A ranged read of one chunk of ``shard`` received every byte it asked for."""
        if data is None:
            raise self._corrupt(layout, shard, "the shard file is missing")
        if len(data) != request.end - request.start:
            raise self._corrupt(layout, shard, "the shard file is truncated")

    def _payload(self, layout: _Layout, shard: int, row: int, chunk: np.ndarray) -> np.ndarray:
        """The encoded patch of a stored chunk, its checksum (if the layout has one) checked."""
        if not layout.checksums:
            return chunk
        payload, stored = chunk[:-CHECKSUM_BYTES], chunk[-CHECKSUM_BYTES:]
        if len(chunk) < CHECKSUM_BYTES or checksum(payload) != stored.tobytes():
            raise self._corrupt(layout, shard, "fails its checksum: its bytes are damaged", row)
        return payload

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
        path, _, rest = key.partition("/c/")
        layout = self._layouts.get(path)
        first = rest.split("/", 1)[0]
        if layout is None or not layout.standard or not first.isdigit():
            return None
        shard = int(first)
        return (layout, shard) if key == layout.shard_key(shard) and shard < self.n_shards else None


def _as_bytes(buffer: Buffer | None) -> np.ndarray | None:
    """A zarr buffer as a flat uint8 array (no copy)."""
    return None if buffer is None else buffer.as_numpy_array().view(np.uint8).reshape(-1)


async def _gather(awaitables: list[Any]) -> list[Any]:
    return list(await asyncio.gather(*awaitables))


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
            index = reader._whole_shard_index(layout, shard, data)
            assert data is not None
            for row, (offset, nbytes) in enumerate(index.tolist()):
                if offset != MISSING_CHUNK:
                    reader._payload(layout, shard, row, data[offset : offset + nbytes])
        elif isinstance(byte_range, SuffixByteRequest):  # zarr reads the index for a few chunks
            reader._indexes[(layout.path, shard)] = reader._parse_index(layout, shard, data)
            reader._trim_indexes(_CACHED_INDEXES)
        elif isinstance(byte_range, RangeByteRequest):  # one chunk, found in the index read before
            index = reader._indexes.get((layout.path, shard))
            rows = [] if index is None else np.flatnonzero(index[:, 0] == byte_range.start).tolist()
            reader._check_range(layout, shard, data, byte_range)
            if rows and data is not None:
                reader._payload(layout, shard, rows[0], data)
        return buffer


@dataclass(frozen=True, eq=False)
class FetchedShard:
    """One shard as received: ``decode_into(row, out)`` decodes its patch ``row`` into ``out``."""

    reader: PatchReader
    layout: _Layout
    shard: int
    n_patches: int
    data: np.ndarray  # the shard file, or (another writer's layout) its decoded patches
    index: np.ndarray | None = None  # (offset, nbytes) of every patch; None: data is patches

    @property
    def first_patch(self) -> int:
        return self.shard * self.reader.shard_size

    @property
    def buffer(self) -> np.ndarray | None:
        """The memory the shard file was read into, for ``fetch_shard(..., reuse=)``."""
        return None if self.index is None else (self.data if self.data.base is None else self.data.base)

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
        offset, nbytes = self.index[row]
        return None if offset == MISSING_CHUNK else self.data[offset : offset + nbytes]
