"""The read path of a finished store: whole shards and single patches, one request each.

``encode_shard`` writes every shard of ``patches`` (and ``masks``) as the standard
``sharding_indexed`` bytes: one inner chunk per patch, then the ``(offset, nbytes)`` index and its
crc32c. :class:`PatchReader` reads them back the same way: a whole shard with one GET, decoded
straight into one array (zarr's pipeline would decode chunk by chunk, costing more than the
codec), and a single patch with one ranged GET once its shard's index is cached. Stores whose
layout differs (another writer's index location or chunking) are read through zarr itself.

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

import google_crc32c
import numcodecs.abc
import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.codecs.sharding import ShardingCodec, ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ._errors import ParameterError, StoreError
from ._locations import Location, open_zarr_store, parse_location, read_key
from ._store import CODECS, MASK_CODEC, open_store, store_metadata

__all__ = ["FetchedShard", "PatchReader"]

_MISSING = np.uint64(2**64 - 1)
_CACHED_INDEXES = 4096  # shard indexes kept for random access (16 bytes a patch each)


@dataclass(frozen=True)
class _Layout:
    """How one image array (``patches`` or ``masks``) is stored."""

    path: str
    patch_shape: tuple[int, ...]
    codec: str
    fill_value: int
    standard: bool  # wsizarr's own shard layout: whole-shard and ranged reads apply

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
    return _Layout(array.path, tuple(array.shape[1:]), codec, int(array.fill_value), standard)


class PatchReader:
    """Reads ``patches`` (and ``masks``) of a complete store: whole shards, or patches by index.

    ``IncompleteStoreError`` for a store whose extraction did not finish; ``StoreError`` for a
    missing or corrupt shard, naming it.
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
        earlier ``FetchedShard.buffer`` the caller is done with (see ``read_key``)."""
        layout = self._layout_of(name)
        self._check_process()
        if not 0 <= shard < self.n_shards:
            raise ParameterError(f"{self.location}: shard {shard} is outside 0..{self.n_shards - 1}")
        start, stop = self.shard_bounds(shard)
        if not layout.standard:
            return FetchedShard(self, layout, shard, stop - start, self._read_with_zarr(layout, slice(start, stop)))
        assert self._store is not None  # opened by _check_process
        received = read_key(self.location, self._store, layout.shard_key(shard), reuse)
        if received is None:
            raise self._corrupt(layout, shard, "the shard file is missing")
        index = self._parse_index(layout, shard, received[-(16 * self.shard_size + 4):])
        return FetchedShard(self, layout, shard, stop - start, received, index)

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
            missing = offset == _MISSING
            requests.append(
                None if missing else (layout.shard_key(shard), RangeByteRequest(int(offset), int(offset + nbytes)))
            )
        chunks = sync(_gather([self._get(*r) for r in requests if r is not None]))
        received = iter(chunks)
        for row, (request, shard) in enumerate(zip(requests, shards.tolist())):
            data = None if request is None else next(received)
            if request is not None and data is None:
                raise self._corrupt(layout, shard, "the shard file is missing")
            self._decode(layout, shard, data, out[row])
        return out

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
            self._store = open_zarr_store(self.location, "r")

    async def _get(
        self, key: str, byte_range: RangeByteRequest | SuffixByteRequest | None = None
    ) -> np.ndarray | None:
        """The bytes at ``key`` as a uint8 array, without copying what the store returned."""
        assert self._store is not None  # opened by _check_process
        buffer = await self._store.get(key, default_buffer_prototype(), byte_range)
        return None if buffer is None else buffer.as_numpy_array().view(np.uint8).reshape(-1)

    async def _cache_indexes(self, layout: _Layout, shards: list[int]) -> None:
        wanted = [s for s in shards if (layout.path, s) not in self._indexes]
        suffix = SuffixByteRequest(16 * self.shard_size + 4)
        tails = await _gather([self._get(layout.shard_key(s), suffix) for s in wanted])
        for shard, tail in zip(wanted, tails):
            if tail is None:
                raise self._corrupt(layout, shard, "the shard file is missing")
            self._indexes[(layout.path, shard)] = self._parse_index(layout, shard, tail)
        for shard in shards:
            self._indexes.move_to_end((layout.path, shard))
        while len(self._indexes) > max(_CACHED_INDEXES, len(shards)):
            self._indexes.popitem(last=False)

    def _parse_index(self, layout: _Layout, shard: int, tail: np.ndarray) -> np.ndarray:
        index_bytes, checksum = tail[:-4].tobytes(), tail[-4:].tobytes()
        if len(tail) != 16 * self.shard_size + 4 or google_crc32c.value(index_bytes).to_bytes(4, "little") != checksum:
            raise self._corrupt(layout, shard, "its index fails its checksum")
        return np.frombuffer(index_bytes, "<u8").reshape(self.shard_size, 2)

    def _decode(self, layout: _Layout, shard: int, data: np.ndarray | None, out: np.ndarray) -> None:
        if data is None:
            out[...] = layout.fill_value
            return
        if layout.codec not in self._decoders:
            self._decoders[layout.codec] = CODECS[layout.codec].encoder()
        decoder = self._decoders[layout.codec]
        try:
            if decoder is None:
                out[...] = np.frombuffer(data, np.uint8).reshape(out.shape)
            else:
                decoder.decode(data, out=out)
        except Exception as exc:  # any codec's failure means the bytes on storage are damaged
            raise self._corrupt(layout, shard, f"a patch does not decode ({type(exc).__name__}: {exc})") from None

    def _corrupt(self, layout: _Layout, shard: int, why: str) -> StoreError:
        return StoreError(
            f"{self.location}: shard {shard} of '{layout.path}' is unreadable ({why}); "
            "run `wsizarr verify` and re-extract the store"
        )

    def _read_with_zarr(self, layout: _Layout, selection: slice | int) -> np.ndarray:
        array = zarr.open_array(self._store, path=layout.path, mode="r", zarr_format=3)
        return np.asarray(array[selection])


async def _gather(awaitables: list[Any]) -> list[Any]:
    return list(await asyncio.gather(*awaitables))


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
    def buffer(self) -> np.ndarray | None:
        """The memory the shard file was read into, for ``fetch_shard(..., reuse=)``."""
        return None if self.index is None else (self.data if self.data.base is None else self.data.base)

    def decode_into(self, row: int, out: np.ndarray) -> None:
        if self.index is None:
            out[...] = self.data[row]
            return
        offset, nbytes = self.index[row]
        chunk = None if offset == _MISSING else self.data[offset : offset + nbytes]
        self.reader._decode(self.layout, self.shard, chunk, out)
