"""The Zarr v3 patch store: its schema, and how it is created, filled, resumed and opened.

Layout (schema version 1), all arrays along the ``patch`` dimension of length N:

* ``patches``  ``(N, H, W, 3)`` uint8, dims ``(patch, row, column, channel)``, one patch per
  chunk, ``shard_size`` patches per shard, a standard lossless codec by default; every chunk of
  ``patches``, ``masks`` and the 1-D arrays ends in its crc32c.
* ``masks`` (optional) ``(N, H, W)`` uint8, label code + 1 of the annotation covering a pixel.
* ``x``, ``y`` int64 level-0 top-left; ``level`` int32; ``annotation_id`` int64; ``label`` int32
  (names in its ``label_names`` attribute, -1 unlabelled); ``slide`` int32 (index into the slide
  table); ``padded`` bool (the patch crosses the slide edge).
* group attribute ``wsizarr``: schema version, package version, parameters, slide table, label
  names, plan digest, codec, ``complete`` (false until every shard is written) and, while a
  run is under way, ``run`` (its first patch and first slide).

While a run is under way, ``_shards_done`` (one uint8 chunk per shard) records finished shards;
it is removed once the store is complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numcodecs.abc
import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec, BytesBytesCodec
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ._errors import (
    IncompleteStoreError, ParameterError, StoreError, StoreExistsError, WsizarrError,
)
from ._locations import Location, parse_location

__all__ = [
    "CHECKSUM_BYTES",
    "CODECS",
    "COORDINATE_ARRAYS",
    "INDEX_ENTRY_BYTES",
    "MASK_CODEC",
    "MASK_DIMS",
    "MISSING_CHUNK",
    "PATCH_DIMS",
    "SCHEMA_VERSION",
    "begin_run",
    "checksum",
    "checksummed",
    "create_store",
    "delete_store",
    "done_shards",
    "encode_shard",
    "ensure_own_store",
    "finalize_store",
    "has_chunk_checksums",
    "index_size",
    "open_store",
    "open_for_writing",
    "partial_location",
    "plan_digest",
    "store_info",
    "store_metadata",
    "store_writes",
    "why_not_a_store",
    "write_shard",
]

SCHEMA_VERSION = 1
PATCH_DIMS = ("patch", "row", "column", "channel")
COORDINATE_ARRAYS: dict[str, str] = {
    "x": "int64", "y": "int64", "level": "int32",
    "annotation_id": "int64", "label": "int32", "slide": "int32", "padded": "bool",
}
MASK_DIMS = ("patch", "row", "column")
MASK_CODEC = "zstd"


@dataclass(frozen=True)
class _Codec:
    """A patch codec: what the metadata declares, and the encoder that writes each patch."""

    compressor: Callable[[], BytesBytesCodec | None]
    encoder: Callable[[], numcodecs.abc.Codec | None]
    serializer: Callable[[], ArrayBytesCodec] | None = None  # None: zarr's core "bytes"
    lossless: bool = True
    requires: tuple[str, ...] = ()  # packages a reader needs besides zarr


def _jpeg_serializer() -> ArrayBytesCodec:
    from ._codecs import ImagecodecsJpeg

    return ImagecodecsJpeg(level=_JPEG_QUALITY)


def _jpegxl_serializer() -> ArrayBytesCodec:
    from ._codecs import ImagecodecsJpegXL

    return ImagecodecsJpegXL(lossless=True, effort=1)


def _image_encoder(name: str, **config: Any) -> Callable[[], numcodecs.abc.Codec]:
    def make() -> numcodecs.abc.Codec:
        from ._codecs import imagecodecs_codec

        return imagecodecs_codec(name, **config)

    return make


_JPEG_QUALITY = 90
_IMAGE_REQUIRES = ("wsizarr", "imagecodecs")
CODECS: dict[str, _Codec] = {
    # level 1: on H&E about 1 % larger than level 3 but 2-3x faster to encode
    "zstd": _Codec(lambda: ZstdCodec(level=1), lambda: numcodecs.Zstd(level=1)),
    "blosc-lz4": _Codec(
        lambda: BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle, typesize=1),
        lambda: numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
    ),
    "none": _Codec(lambda: None, lambda: None),
    "jpegxl": _Codec(
        lambda: None, _image_encoder("Jpegxl", lossless=True, effort=1),
        serializer=_jpegxl_serializer, requires=_IMAGE_REQUIRES,
    ),
    "jpeg": _Codec(
        lambda: None, _image_encoder("Jpeg", level=_JPEG_QUALITY),
        serializer=_jpeg_serializer, lossless=False, requires=_IMAGE_REQUIRES,
    ),
}

# The shard byte layout (zarr's ``sharding_indexed``, index at the end), shared by the writer,
# the reader and ``verify``: inner chunks back to back, each ending in its own crc32c (stores
# written before the checksums were added have none), then one (offset, nbytes) uint64 pair per chunk and the
# crc32c of those pairs.
INDEX_ENTRY_BYTES = 16  # one little-endian (offset, nbytes) uint64 pair
MISSING_CHUNK = np.uint64(2**64 - 1)  # the offset and nbytes of a chunk that is not stored
CHECKSUM_BYTES = 4  # a little-endian crc32c


def checksum(data: bytes | memoryview | np.ndarray) -> bytes:
    """The crc32c of ``data`` as zarr's ``crc32c`` codec appends it (4 bytes, little-endian)."""
    return google_crc32c.value(data).to_bytes(CHECKSUM_BYTES, "little")


def index_size(shard_size: int) -> int:
    """Bytes of a shard's index, its checksum included."""
    return INDEX_ENTRY_BYTES * shard_size + CHECKSUM_BYTES


def has_chunk_checksums(array: zarr.Array) -> bool:
    """Whether each inner chunk of the sharded ``array`` ends in a crc32c (its last codec)."""
    sharding = array.metadata.codecs[0] if array.metadata.codecs else None
    inner = getattr(sharding, "codecs", ())
    return bool(inner) and isinstance(inner[-1], Crc32cCodec)


_DONE = "_shards_done"
_ATTRS = "wsizarr"
_COORD_CHUNK = 1 << 16
# the top-level names of a store; a location holding anything else is not only a wsizarr store
_STORE_NAMES = frozenset({"zarr.json", "patches", "masks", _DONE, *COORDINATE_ARRAYS})
_PARTIAL_SUFFIX = ".partial.zarr"


def _metadata(group: zarr.Group) -> dict[str, Any]:
    metadata = group.attrs.get(_ATTRS)
    if not isinstance(metadata, dict):
        raise StoreError(f"{group.store}: not a wsizarr store (no '{_ATTRS}' attributes)")
    return metadata


StoreLocation = str | Path | Location


def create_store(
    location: StoreLocation,
    *,
    patch_size: int,
    shard_size: int,
    codec: str,
    metadata: Mapping[str, Any],
    masks: bool = False,
) -> zarr.Group:
    """Create an empty, incomplete store (no patches yet); ``begin_run`` then sizes it.

    ``location`` is a directory or an ``s3://`` URL (see ``parse_location``). ``masks`` adds the
    ``(N, H, W)`` uint8 ``masks`` array. Raises ``StoreExistsError`` when the location holds
    anything (``delete_store`` first to replace a store).
    """
    if codec not in CODECS:
        raise ParameterError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    if shard_size < 1:
        raise ParameterError(f"shard size must be at least 1 patch, got {shard_size}")
    spec = CODECS[codec]
    spec.encoder()  # fails now, with the fix, when an optional codec is not installed
    location = parse_location(location)
    if location.exists():
        raise StoreExistsError(
            f"{location}: already exists; pass --overwrite to replace it or --resume to finish it"
        )
    try:
        group = zarr.create_group(location.open("w"), zarr_format=3)
    except OSError as exc:
        raise StoreError(f"{location}: cannot create the store ({exc}); check the path") from None
    group.attrs[_ATTRS] = {
        **metadata, "schema_version": SCHEMA_VERSION, "complete": False, "n_patches": 0,
        "shard_size": shard_size, "codec": codec, "codec_lossless": spec.lossless,
        "requires": list(spec.requires), "label_names": [], "slides": [],
    }
    compressor = spec.compressor()
    coordinates = {"coordinates": " ".join(COORDINATE_ARRAYS)}
    group.create_array(
        "patches",
        shape=(0, patch_size, patch_size, 3),
        dtype="uint8",
        chunks=(1, patch_size, patch_size, 3),
        shards=(shard_size, patch_size, patch_size, 3),
        serializer="auto" if spec.serializer is None else spec.serializer(),
        compressors=checksummed(compressor),
        fill_value=255,
        dimension_names=PATCH_DIMS,
        attributes=coordinates,
    )
    if masks:
        group.create_array(
            "masks",
            shape=(0, patch_size, patch_size),
            dtype="uint8",
            chunks=(1, patch_size, patch_size),
            shards=(shard_size, patch_size, patch_size),
            compressors=checksummed(CODECS[MASK_CODEC].compressor()),
            fill_value=0,
            dimension_names=MASK_DIMS,
            attributes={
                **coordinates,
                "meaning": "label code + 1 of the annotation covering each pixel; 0 none, 255 unlabelled",
            },
        )
    for name, dtype in COORDINATE_ARRAYS.items():
        group.create_array(
            name, shape=(0,), dtype=dtype, chunks=(_COORD_CHUNK,),
            compressors=checksummed(ZstdCodec(level=0)),  # zarr's default, plus the checksum
            fill_value=False if dtype == "bool" else -1,
            dimension_names=("patch",),
        )
    return group


def checksummed(compressor: BytesBytesCodec | None) -> tuple[BytesBytesCodec, ...]:
    """The bytes-to-bytes codecs of a chunk: ``compressor`` (if any), then its crc32c."""
    return (Crc32cCodec(),) if compressor is None else (compressor, Crc32cCodec())


def partial_location(location: Location) -> Location:
    """Where a store is built before it replaces ``location`` (a zip, or a store being
    overwritten): the directory or S3 prefix ``<location>.partial.zarr`` beside it."""
    return location.beside(_PARTIAL_SUFFIX)


def why_not_a_store(location: Location) -> str | None:
    """Why ``location`` is not recognisably a wsizarr store; None when it is one.

    A store is a root ``zarr.json`` with ``wsizarr`` attributes and nothing at its top level but
    the schema's names: a folder that merely contains a store-like ``zarr.json`` is not one.
    """
    try:
        store = location.open("r")
        try:
            raw = sync(store.get("zarr.json", default_buffer_prototype()))
        finally:
            store.close()
    except (OSError, ValueError, zipfile.BadZipFile):
        return "it is not a Zarr store"
    if raw is None:
        return "it has no zarr.json"
    try:
        document = json.loads(raw.to_bytes())
    except ValueError:
        return "its zarr.json is not JSON"
    attributes = document.get("attributes") if isinstance(document, dict) else None
    if not isinstance(attributes, dict) or not isinstance(attributes.get(_ATTRS), dict):
        return "its zarr.json has no wsizarr attributes"
    foreign = sorted({key.split("/")[0] for key in location.keys()} - _STORE_NAMES)
    if foreign:
        return f"it also holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}"
    return None


def ensure_own_store(location: Location) -> None:
    """``StoreError`` unless ``location`` is a wsizarr store (which wsizarr may replace), so a
    mistyped output location never costs a user their files."""
    problem = why_not_a_store(location)
    if problem is not None:
        raise StoreError(
            f"{location}: is not a wsizarr store ({problem}); wsizarr only replaces its own "
            "stores: choose another output location"
        )


def delete_store(location: Location) -> None:
    """Delete the wsizarr store at ``location``; anything else is refused (``ensure_own_store``)."""
    ensure_own_store(location)
    location.delete()


def plan_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of a store's 1-D arrays (the plan), to check a store against its plan."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def begin_run(
    group: zarr.Group,
    arrays: Mapping[str, np.ndarray],
    *,
    first_patch: int,
    slides: list[dict[str, Any]],
    label_names: list[str],
    plan_digest: str,
) -> None:
    """Size the store for a run that adds the patches ``arrays`` at ``first_patch``.

    Idempotent, so a resumed run calls it again: the store is marked incomplete first, then
    the 1-D arrays are grown and written, then the shards wholly before ``first_patch`` are
    marked done (the shard holding ``first_patch`` is rewritten with its earlier patches).
    """
    metadata = _metadata(group)
    shard_size = metadata["shard_size"]
    n = first_patch + len(arrays["x"])
    group.attrs[_ATTRS] = {
        **metadata, "complete": False, "n_patches": n, "slides": slides,
        "label_names": label_names, "plan_digest": plan_digest,
        "run": {"first_patch": first_patch, "first_slide": int(arrays["slide"].min(initial=len(slides)))},
    }
    for name, dtype in COORDINATE_ARRAYS.items():
        array = group[name]
        array.resize((n,))
        array[first_patch:] = np.asarray(arrays[name]).astype(dtype, copy=False)
        if name == "label":
            array.attrs["label_names"] = label_names
    for name in ("patches", "masks"):
        if name in group:
            group[name].resize((n, *group[name].shape[1:]))
    n_shards = -(-n // shard_size)
    if _DONE not in group or group[_DONE].shape != (n_shards,):
        if _DONE in group:
            del group[_DONE]
        done = group.create_array(
            _DONE, shape=(n_shards,), dtype="uint8", chunks=(1,), fill_value=0,
            dimension_names=("shard",), config={"write_empty_chunks": True},
        )
        done[: first_patch // shard_size] = 1


def open_store(location: StoreLocation, *, require_complete: bool = True) -> zarr.Group:
    """Open a wsizarr store (directory, ``.zip`` or ``s3://`` URL) read-only.

    Raises ``StoreError`` when it is missing or not a wsizarr store, and
    ``IncompleteStoreError`` when ``require_complete`` and the extraction did not finish.
    """
    location = parse_location(location)
    try:
        zarr_store = location.open("r")
    except StoreError:
        partial = partial_location(location)
        if not location.path.endswith(_PARTIAL_SUFFIX) and partial.exists():
            raise IncompleteStoreError(
                f"{location}: not written yet; an unfinished extraction is at {partial}: rerun "
                "the same extract command with --resume"
            ) from None
        raise
    try:
        group = zarr.open_group(zarr_store, mode="r", zarr_format=3)
    except (FileNotFoundError, ValueError, zarr.errors.NodeTypeValidationError) as exc:
        raise StoreError(f"{location}: not a Zarr v3 group ({exc}); is this a wsizarr store?") from None
    metadata = _metadata(group)
    if metadata.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{location}: schema version {metadata.get('schema_version')} is not supported by "
            f"this wsizarr (schema {SCHEMA_VERSION}); upgrade wsizarr"
        )
    if require_complete and not metadata.get("complete"):
        done = done_shards(group)
        raise IncompleteStoreError(
            f"{location}: the extraction did not finish ({int(done.sum())} of {len(done)} shards "
            "written); run the same extract command with --resume"
        )
    return group


def open_for_writing(location: StoreLocation) -> zarr.Group:
    """Open an existing store to resume or append to it."""
    location = parse_location(location)
    open_store(location, require_complete=False)
    return zarr.open_group(
        location.open("a"), mode="r+", zarr_format=3, use_consolidated=False
    )


def store_metadata(group: zarr.Group) -> dict[str, Any]:
    """The store's ``wsizarr`` attributes."""
    return _metadata(group)


def done_shards(group: zarr.Group) -> np.ndarray:
    """A boolean array, one entry per shard: True where the shard is fully written."""
    metadata = _metadata(group)
    n_shards = -(-metadata["n_patches"] // metadata["shard_size"])
    if metadata.get("complete"):
        return np.ones(n_shards, bool)
    return np.asarray(group[_DONE][:], dtype=bool)


def encode_shard(pixels: np.ndarray, shard_size: int, codec: str, *, checksums: bool = True) -> bytes:
    """Encode ``pixels`` (at most ``shard_size`` patches) as one Zarr v3 shard, in one piece.

    The bytes are exactly what zarr's ``sharding_indexed`` codec reads: the inner chunks (one
    patch each: ``bytes`` or the image codec, the compressor, then with ``checksums`` the
    chunk's crc32c) back to back, then the index (see ``INDEX_ENTRY_BYTES``) and its crc32c.
    Encoding whole shards here skips zarr's per-chunk pipeline, which costs more than the
    compression itself.
    """
    encoder = CODECS[codec].encoder()
    index = np.full((shard_size, 2), MISSING_CHUNK, dtype="<u8")
    parts: list[bytes] = []
    offset = 0
    for i, patch in enumerate(pixels):
        data = np.ascontiguousarray(patch)
        encoded = data.tobytes() if encoder is None else bytes(encoder.encode(data))
        parts.append(encoded)
        nbytes = len(encoded)
        if checksums:
            parts.append(checksum(encoded))
            nbytes += CHECKSUM_BYTES
        index[i] = (offset, nbytes)
        offset += nbytes
    index_bytes = index.tobytes()
    parts.append(index_bytes)
    parts.append(checksum(index_bytes))
    return b"".join(parts)


def write_shard(group: zarr.Group, shard_index: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Write one whole shard of ``patches`` (and ``masks``), then mark it done.

    Marking after writing makes a crash lose at most the shards in flight. A store created
    before chunk checksums existed keeps getting shards without them.
    """
    metadata = _metadata(group)
    for name, values in arrays.items():
        array = group[name]
        codec = metadata["codec"] if name == "patches" else MASK_CODEC
        data = encode_shard(values, metadata["shard_size"], codec, checksums=has_chunk_checksums(array))
        chunk_coords = (shard_index,) + (0,) * (array.ndim - 1)
        key = f"{array.path}/{array.metadata.encode_chunk_key(chunk_coords)}"
        sync(group.store.set(key, default_buffer_prototype().buffer.from_bytes(data)))
    group[_DONE][shard_index] = 1


@contextmanager
def store_writes(location: Location) -> Iterator[None]:
    """Turn an OS error while writing the store (a full disk, lost permissions) into a one-line
    ``StoreError``: the shards already written stay, so the run can be resumed."""
    try:
        yield
    except WsizarrError:
        raise
    except OSError as exc:
        cause = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise StoreError(
            f"{location}: writing the store failed ({cause}); fix that, then rerun the same "
            "command with --resume (finished shards are kept)"
        ) from None


def finalize_store(group: zarr.Group, location: Location) -> None:
    """Mark the store at ``location`` complete once every shard is written (removing what
    killed writers left half-written); ``IncompleteStoreError`` otherwise."""
    done = done_shards(group)
    if not done.all():
        raise IncompleteStoreError(
            f"{group.store}: {int((~done).sum())} shards are missing; resume the extraction"
        )
    location.remove_partial_writes()
    metadata = {k: v for k, v in _metadata(group).items() if k != "run"}
    group.attrs[_ATTRS] = {**metadata, "complete": True}
    if _DONE in group:
        del group[_DONE]
    with warnings.catch_warnings():
        # consolidated metadata is a zarr-python extension; other readers simply ignore it
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(group.store)


def store_info(location: StoreLocation) -> dict[str, Any]:
    """A summary of a store, complete or not: counts per label and slide, shapes, bytes, parameters."""
    location = parse_location(location)
    group = open_store(location, require_complete=False)
    metadata = _metadata(group)
    patches = group["patches"]
    done = done_shards(group)
    n_bytes, n_files = location.usage()
    label_names = metadata.get("label_names", [])
    labels = np.asarray(group["label"][:])
    slides = np.asarray(group["slide"][:])
    codes, counts = np.unique(labels, return_counts=True)
    slide_codes, slide_counts = np.unique(slides, return_counts=True)
    return {
        "store": str(location),
        "complete": bool(metadata.get("complete")),
        "shards_done": int(done.sum()),
        "n_shards": len(done),
        "n_patches": int(patches.shape[0]),
        "patch_shape": list(patches.shape[1:]),
        "chunks": list(patches.chunks),
        "shards": list(patches.shards or patches.chunks),
        "codec": metadata.get("codec"),
        "bytes_on_disk": n_bytes,
        "files": n_files,
        "per_label": {
            ("(unlabelled)" if code < 0 else label_names[code]): int(count)
            for code, count in zip(codes.tolist(), counts.tolist())
        },
        "per_slide": {
            metadata["slides"][code]["path"]: int(count)
            for code, count in zip(slide_codes.tolist(), slide_counts.tolist())
        },
        "parameters": metadata.get("parameters", {}),
        "wsizarr_version": metadata.get("wsizarr_version"),
        "schema_version": metadata.get("schema_version"),
    }


