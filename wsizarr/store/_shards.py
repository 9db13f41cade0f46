"""The shard byte layout of ``patches`` and ``masks``, in one place for the writer, the reader
and ``verify``.

A shard is zarr v3's ``sharding_indexed`` with the index at the end, one patch per inner chunk::

    chunk 0 | chunk 1 | ... | index | crc32c(index)

Each inner chunk is the encoded patch followed by its crc32c (stores written before the
checksums were added have none). The index holds one little-endian ``(offset, nbytes)`` uint64
pair per chunk, in patch order; a chunk that is not stored (past the last patch of a partial
last shard) has ``MISSING`` in both. A shard is stored under zarr's default chunk key of its
position in the grid, which only ever steps along the ``patch`` dimension (``shard_key``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import google_crc32c
import numcodecs.abc
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec
from zarr.codecs.sharding import ShardingCodec, ShardingCodecIndexLocation

__all__ = [
    "CHECKSUM_BYTES",
    "ENTRY_BYTES",
    "MISSING",
    "ShardDamaged",
    "ShardIndex",
    "checksum",
    "chunk_payload",
    "encode_shard",
    "has_chunk_checksums",
    "index_size",
    "is_standard",
    "n_shards",
    "pack_shard",
    "parse_shard_key",
    "received",
    "shard_key",
]

ENTRY_BYTES = 16  # one little-endian (offset, nbytes) uint64 pair
CHECKSUM_BYTES = 4  # a little-endian crc32c
MISSING = 2**64 - 1  # the offset and nbytes of a chunk that is not stored (zarr's MAX_UINT_64)


class ShardDamaged(ValueError):
    """What is wrong with a shard's bytes, in words; the reader names the shard and the patch
    and raises it as a ``CorruptStoreError``."""


def checksum(data: bytes | memoryview | np.ndarray) -> bytes:
    """The crc32c of ``data`` as zarr's ``crc32c`` codec appends it (4 bytes, little-endian)."""
    return google_crc32c.value(data).to_bytes(CHECKSUM_BYTES, "little")


def index_size(shard_size: int) -> int:
    """Bytes of a shard's index, its checksum included."""
    return ENTRY_BYTES * shard_size + CHECKSUM_BYTES


def n_shards(n_patches: int, shard_size: int) -> int:
    """How many shards ``n_patches`` patches fill, the last one possibly partial."""
    return -(-n_patches // shard_size)


def shard_key(array_path: str, shard_index: int, ndim: int) -> str:
    """The store key of shard ``shard_index`` of the ``ndim``-dimensional array at
    ``array_path`` (zarr's default chunk key encoding; the grid steps along the first
    dimension only, as every array of a store does)."""
    return f"{array_path}/c/{shard_index}" + "/0" * (ndim - 1)


def parse_shard_key(key: str) -> tuple[str, int, int] | None:
    """``(array_path, shard_index, ndim)`` of a key ``shard_key`` builds; None for any other key."""
    path, found, rest = key.partition("/c/")
    first, _, _ = rest.partition("/")
    if not found or not (first.isascii() and first.isdigit()):
        return None
    shard, ndim = int(first), rest.count("/") + 1
    return (path, shard, ndim) if shard_key(path, shard, ndim) == key else None


def has_chunk_checksums(array: zarr.Array) -> bool:
    """Whether each inner chunk of the sharded ``array`` ends in a crc32c (its last codec)."""
    sharding = array.metadata.codecs[0] if array.metadata.codecs else None
    inner = getattr(sharding, "codecs", ())
    return bool(inner) and isinstance(inner[-1], Crc32cCodec)


def is_standard(array: zarr.Array) -> bool:
    """Whether ``array`` is stored in this layout (as wsizarr writes it), so that its shards can
    be read whole or a chunk at a time with ``ShardIndex``; other writers' layouts (another
    index location, chunking or key encoding) are for zarr itself to read."""
    sharding = array.metadata.codecs[0] if array.metadata.codecs else None
    return (
        isinstance(sharding, ShardingCodec)
        and sharding.index_location == ShardingCodecIndexLocation.end
        and tuple(sharding.chunk_shape) == (1, *array.shape[1:])
        and array.metadata.chunk_key_encoding.name == "default"
        and getattr(array.metadata.chunk_key_encoding, "separator", "/") == "/"
    )


def chunk_payload(chunk: np.ndarray) -> np.ndarray:
    """The encoded patch of a stored chunk that ends in its crc32c, the checksum checked."""
    payload, stored = chunk[:-CHECKSUM_BYTES], chunk[-CHECKSUM_BYTES:]
    if len(chunk) < CHECKSUM_BYTES or checksum(payload) != stored.tobytes():
        raise ShardDamaged("fails its checksum: its bytes are damaged")
    return payload


def received(data: np.ndarray | None, nbytes: int) -> np.ndarray:
    """``data``, checked to be every one of the ``nbytes`` a ranged read of a chunk asked for."""
    if data is None:
        raise ShardDamaged("the shard file is missing")
    if len(data) != nbytes:
        raise ShardDamaged("the shard file is truncated")
    return data


class ShardIndex:
    """The ``(offset, nbytes)`` of every chunk of one shard: ``empty`` for the writer to fill,
    ``parse`` for the reader; ``to_bytes`` is its stored form, its checksum included."""

    __slots__ = ("entries",)

    def __init__(self, entries: np.ndarray) -> None:
        self.entries = entries  # (shard_size, 2) little-endian uint64: one (offset, nbytes) row a chunk

    @classmethod
    def empty(cls, shard_size: int) -> ShardIndex:
        """An index of ``shard_size`` chunks, none stored yet."""
        return cls(np.full((shard_size, 2), MISSING, dtype="<u8"))

    @classmethod
    def parse(
        cls, data: bytes | np.ndarray | None, shard_size: int, *, whole: bool = False
    ) -> ShardIndex:
        """The index at the end of ``data`` (a shard file, or its last ``index_size`` bytes),
        its checksum checked; ``whole``: ``data`` is the whole file, checked to hold every
        chunk the index points at. ``ShardDamaged`` says what is wrong."""
        if data is None:
            raise ShardDamaged("the shard file is missing")
        if not isinstance(data, np.ndarray):
            data = np.frombuffer(data, np.uint8)
        size = index_size(shard_size)
        if len(data) < size:
            raise ShardDamaged(
                "the shard file is empty" if not len(data) else
                f"the shard file is truncated: {len(data)} bytes, shorter than its index"
            )
        index_bytes, stored = data[-size:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
        if checksum(index_bytes) != stored.tobytes():
            raise ShardDamaged("its index fails its checksum: the file is damaged or truncated")
        # a copy: the index outlives the bytes it came in (a cached index must not keep a shard)
        index = cls(np.frombuffer(index_bytes.tobytes(), "<u8").reshape(-1, 2))
        if whole and index.end() > len(data) - size:
            raise ShardDamaged(f"the shard file is truncated: {len(data)} bytes, its index needs more")
        return index

    def __len__(self) -> int:
        return len(self.entries)

    def chunk(self, row: int) -> tuple[int, int] | None:
        """``(offset, nbytes)`` of chunk ``row`` in the shard file; None when it is not stored."""
        offset, nbytes = self.entries[row].tolist()
        return None if offset == MISSING else (offset, nbytes)

    def is_missing(self, row: int) -> bool:
        return bool(self.entries[row, 0] == MISSING)

    def set(self, row: int, offset: int, nbytes: int) -> None:
        """Record chunk ``row`` as ``nbytes`` bytes at ``offset``."""
        self.entries[row] = (offset, nbytes)

    def stored(self) -> np.ndarray:
        """A boolean array, one entry per chunk: True where it is stored."""
        return self.entries[:, 0] != MISSING

    def stored_chunks(self) -> Iterator[tuple[int, int, int]]:
        """``(row, offset, nbytes)`` of every stored chunk."""
        for row, (offset, nbytes) in enumerate(self.entries.tolist()):
            if offset != MISSING:
                yield row, offset, nbytes

    def row_at(self, offset: int) -> int | None:
        """The chunk stored at ``offset``; None when no chunk starts there."""
        rows = np.flatnonzero(self.entries[:, 0] == offset)
        return int(rows[0]) if len(rows) else None

    def end(self) -> int:
        """One past the last byte of the file any stored chunk occupies (0: none stored)."""
        stored = self.entries[self.stored()]
        return int(stored.sum(axis=1).max(initial=0))

    def to_bytes(self) -> bytes:
        """The index as stored at the end of the shard file: the pairs, then their crc32c."""
        index_bytes = self.entries.astype("<u8", copy=False).tobytes()
        return index_bytes + checksum(index_bytes)


def encode_shard(
    pixels: np.ndarray, shard_size: int, encoder: numcodecs.abc.Codec | None, *, checksums: bool = True
) -> bytes:
    """Encode ``pixels`` (at most ``shard_size`` patches) as one shard, in one piece.

    The bytes are exactly what zarr's ``sharding_indexed`` codec writes and reads: each patch
    encoded by ``encoder`` (None: its raw bytes, zarr's ``bytes`` codec), with ``checksums``
    followed by its crc32c, back to back, then the index. Encoding whole shards here skips
    zarr's per-chunk pipeline, which costs more than the compression itself.
    """
    chunks = []
    for patch in pixels:
        data = np.ascontiguousarray(patch)
        encoded = data.tobytes() if encoder is None else bytes(encoder.encode(data))
        chunks.append(encoded + checksum(encoded) if checksums else encoded)
    return pack_shard(chunks, shard_size)


def encode_rows(values: np.ndarray, chunk_rows: int, fill: float, encoder: numcodecs.abc.Codec) -> bytes:
    """Encode ``values`` (at most ``chunk_rows`` rows of a 1-D little-endian array chunked
    ``chunk_rows`` rows at a time) as its one chunk, as zarr's ``bytes`` + compressor + ``crc32c``
    pipeline stores it: padded with ``fill`` to the whole chunk, compressed by ``encoder``, then
    its crc32c."""
    padded = np.full(chunk_rows, fill, values.dtype.newbyteorder("<"))
    padded[: len(values)] = values
    encoded = bytes(encoder.encode(padded))
    return encoded + checksum(encoded)


def pack_shard(chunks: Sequence[bytes | np.ndarray], shard_size: int) -> bytes:
    """One shard of chunks already encoded as stored (checksum included, as a shard of this
    layout holds them): back to back in order, then the index of where each is. At most
    ``shard_size`` chunks; the rows after them are not stored."""
    index = ShardIndex.empty(shard_size)
    offset = 0
    for row, chunk in enumerate(chunks):
        index.set(row, offset, len(chunk))
        offset += len(chunk)
    return b"".join([*chunks, index.to_bytes()])
