"""The Zarr v3 patch store: its schema, and how it is created, filled, resumed and opened.

Layout (schema version 2), the patch arrays along the ``patch`` dimension of length N:

* ``patches``  ``(N, H, W, 3)`` uint8, dims ``(patch, row, column, channel)``, one patch per
  chunk, ``shard_size`` patches per shard, a standard lossless codec by default; every chunk of
  every array ends in its crc32c (the shard bytes: ``_shards``).
* ``masks`` (optional) ``(N, H, W)`` uint8, label code + 1 of the annotation covering a pixel.
* ``x``, ``y`` int64 level-0 top-left; ``level`` int32; ``annotation_id`` int64; ``label`` int32
  (names in its ``label_names`` attribute, -1 unlabelled); ``slide`` int32 (row of the slide
  table); ``padded`` bool (the patch crosses the slide edge). Chunks hold whole shards.
* ``slides/`` one row per slide (path, content hash, geometry, annotation file, the level
  read, its patch and annotation rows, the SHA-256 of its plan); ``annotations/`` one row per
  annotation and exclusion (slide, id, name, label, type, bounding box, rings) with the
  vertices of every ring (``ring_start``, ``ring_length``, ``vertices``). See ``_manifest``.
* group attribute ``wsizarr``: the :class:`~wsizarr.store._manifest.Manifest` (schema and package
  version, parameters, label names, codec, counts, ``complete`` and, while a run is under way,
  ``run``), the same size whatever the number of slides.

While a run is under way, ``_shards_done`` (one uint8 chunk per shard) records finished shards;
it is removed once the store is complete. Schema 1 stores (the slide table in the attribute)
open read-only; ``wsizarr migrate`` rewrites them as schema 2.
"""

from __future__ import annotations

import asyncio
import errno
import json
import warnings
import zipfile
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import Crc32cCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .._errors import (
    IncompleteStoreError,
    ParameterError,
    StoreError,
    StoreExistsError,
    WsizarrError,
    option,
)
from .._locations import PARTIAL_WRITE, Location, parse_location
from .._text import count
from ._codecs import CODECS
from ._manifest import (
    ANNOTATION_COLUMNS,
    ATTRS,
    COORDINATE_COLUMNS,
    QUALITY_MEASURES,
    RING_COLUMNS,
    SCHEMA_VERSION,
    SLIDE_COLUMNS,
    TABLE_DIMS,
    VERTEX_COLUMNS,
    Manifest,
    SlideTable,
    TableWriter,
    coordinate_chunk_rows,
    create_table,
    read_slides,
)
from ._shards import (
    encode_rows,
    encode_shard,
    has_chunk_checksums,
    pack_shard,
    shard_key,
)

__all__ = [
    "COORDINATE_ARRAYS",
    "MASK_CODEC",
    "MASK_DIMS",
    "PATCH_DIMS",
    "RESERVED_NAMES",
    "SCHEMA_VERSION",
    "begin_run",
    "checksummed",
    "create_store",
    "create_tables",
    "delete_store",
    "done_shards",
    "ensure_own_store",
    "consolidate",
    "finalize_store",
    "open_store",
    "quality_summary",
    "refuse_legacy",
    "roll_back_run",
    "shard_arrays",
    "open_for_task",
    "open_for_writing",
    "partial_location",
    "end_planning",
    "open_store_manifest",
    "read_manifest",
    "slide_table",
    "store_info",
    "store_writes",
    "tidy_complete",
    "why_not_a_store",
    "write_manifest",
    "gather_all",
    "write_shard",
]

PATCH_DIMS = ("patch", "row", "column", "channel")
COORDINATE_ARRAYS: dict[str, str] = {name: column.dtype for name, column in COORDINATE_COLUMNS.items()}
MASK_DIMS = ("patch", "row", "column")
MASK_CODEC = "zstd"


_DONE = "_shards_done"
ADDING = "_adding"  # the done-markers of arrays being added (``curate._added``), one array per name
_TABLES = ("slides", "annotations")
# the top-level names of a store (besides its added arrays, which its manifest names); a
# location holding anything else is not only a wsizarr store
_STORE_NAMES = frozenset(
    {"zarr.json", "patches", "masks", _DONE, ADDING, *COORDINATE_ARRAYS, *QUALITY_MEASURES, *_TABLES}
)
# names an added array may not take: the schema's, and those the readers give variables
RESERVED_NAMES = frozenset(
    {*_STORE_NAMES, "index", "label_code", "slide_path", "annotation_name", "mask", "patch"}
)
_PARTIAL_SUFFIX = ".partial.zarr"


def read_manifest(group: zarr.Group) -> Manifest:
    """The store's manifest (its ``wsizarr`` attribute); ``StoreError`` when it has none."""
    attrs = group.attrs.get(ATTRS)
    if not isinstance(attrs, dict):
        raise StoreError(f"{group.store}: not a wsizarr store (no '{ATTRS}' attributes)")
    return Manifest.from_attrs(attrs)


def write_manifest(group: zarr.Group, manifest: Manifest) -> None:
    group.attrs[ATTRS] = manifest.to_attrs()


def slide_table(group: zarr.Group) -> SlideTable:
    """The store's slide table (either schema)."""
    return read_slides(group, read_manifest(group))


StoreLocation = str | Path | Location


def create_store(
    location: StoreLocation, manifest: Manifest, *, patch_size: int, masks: bool = False, quality: bool = False,
) -> zarr.Group:
    """Create an empty, incomplete store (no patches, slides or annotations yet) described by
    ``manifest`` (its codec and shard size); a run then fills it.

    ``location`` is a directory or an ``s3://`` URL (see ``parse_location``). ``masks`` adds the
    ``(N, H, W)`` uint8 ``masks`` array, ``quality`` a float32 array per quality measure
    (``QUALITY_MEASURES``), both written with the patches, a shard at a time. Raises ``StoreExistsError`` when the location holds
    anything (``delete_store`` first to replace a store).
    """
    if manifest.codec not in CODECS:
        raise ParameterError(f"unknown codec {manifest.codec!r}; choose one of {', '.join(CODECS)}")
    spec = CODECS[manifest.codec]
    spec.encoder()  # fails now, with the fix, when an optional codec is not installed
    location = parse_location(location)
    if location.exists():
        raise StoreExistsError(f"{location}: already exists; replace it (overwrite) or finish it (resume)")
    try:
        group = zarr.create_group(location.open("w"), zarr_format=3)
    except OSError as exc:
        raise StoreError(f"{location}: cannot create the store ({exc}); check the path") from None
    write_manifest(group, replace(
        manifest, codec_lossless=spec.lossless, requires=spec.requires,
        quality=tuple(QUALITY_MEASURES) if quality else (),
    ))
    shard_size = manifest.shard_size
    coordinates = {"coordinates": " ".join(COORDINATE_ARRAYS)}
    group.create_array(
        "patches",
        shape=(0, patch_size, patch_size, 3),
        dtype="uint8",
        chunks=(1, patch_size, patch_size, 3),
        shards=(shard_size, patch_size, patch_size, 3),
        serializer="auto" if spec.serializer is None else spec.serializer(),
        compressors=checksummed(spec.compressor()),
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
    for name, (dtype, description) in QUALITY_MEASURES.items() if quality else ():
        group.create_array(
            name, shape=(0,), dtype=dtype, chunks=(shard_size,), compressors=checksummed(CODECS["zstd"].compressor()),
            fill_value=np.nan, dimension_names=("patch",), attributes={**coordinates, "description": description},
        )
    create_table(group, COORDINATE_COLUMNS, "patch", coordinate_chunk_rows(shard_size))
    create_tables(group)
    return group


def shard_arrays(manifest: Manifest) -> tuple[str, ...]:
    """The arrays along ``patch`` a shard task writes, whole shards at a time (those a store
    lacks are not in it): the pixels, the masks and the quality measures."""
    return ("patches", "masks", *manifest.quality)


def create_tables(group: zarr.Group) -> None:
    """Create the store's empty slide and annotation tables (replacing any left by a crash)."""
    for name in _TABLES:
        if name in group:
            del group[name]
    create_table(group.create_group("slides"), SLIDE_COLUMNS, TABLE_DIMS["slides"])
    annotations = group.create_group("annotations")
    create_table(annotations, ANNOTATION_COLUMNS, TABLE_DIMS["annotations"])
    create_table(annotations, RING_COLUMNS, TABLE_DIMS["rings"])
    create_table(annotations, VERTEX_COLUMNS, TABLE_DIMS["vertices"])


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
    if not isinstance(attributes, dict) or not isinstance(attributes.get(ATTRS), dict):
        return "its zarr.json has no wsizarr attributes"
    added = attributes[ATTRS].get("added")
    names = _STORE_NAMES | set(added if isinstance(added, dict) else ())
    foreign = sorted(head for head in {key.split("/")[0] for key in location.keys()} - names if not _unfinished_write(head, names))
    if foreign:
        return f"it also holds {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}"
    return None


def _unfinished_write(name: str, names: frozenset[str] | set[str]) -> bool:
    """``name`` is zarr's temporary file of a write into the store that never finished (a killed
    writer's ``zarr.<uuid hex>.partial`` for ``zarr.json``): the store's own, not a user's."""
    stem = PARTIAL_WRITE.sub("", name)
    return stem != name and (stem in names or f"{stem}.json" in names)


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


def begin_run(group: zarr.Group, manifest: Manifest) -> dict[str, TableWriter]:
    """Start (or restart) the run ``manifest.run`` describes: mark the store incomplete and
    return the writers of its tables, each positioned at the run's first row (rows an
    unfinished plan left beyond it are replaced, and trimmed when the writers close)."""
    run = manifest.run
    if run is None:
        raise ValueError("begin_run needs a manifest with a run")
    write_manifest(group, replace(manifest, complete=False))
    if _DONE in group:
        del group[_DONE]
    _add_new_slide_columns(group, run.first_slide)
    annotations = group["annotations"]
    first_ring = _row_count(annotations, "first_ring", "n_rings", run.first_annotation)
    first_vertex = _row_count(annotations, "ring_start", "ring_length", first_ring)
    return {
        "patches": TableWriter(group, COORDINATE_COLUMNS, run.first_patch),
        "slides": TableWriter(group["slides"], SLIDE_COLUMNS, run.first_slide),
        "annotations": TableWriter(annotations, ANNOTATION_COLUMNS, run.first_annotation),
        "rings": TableWriter(annotations, RING_COLUMNS, first_ring),
        "vertices": TableWriter(annotations, VERTEX_COLUMNS, first_vertex),
    }


def _add_new_slide_columns(group: zarr.Group, rows: int) -> None:
    """Add the slide columns a store made by an older version lacks, ``rows`` long: their fill
    value reads as what that version did (no profile recorded, colours unchanged)."""
    slides = group["slides"]
    missing = {name: column for name, column in SLIDE_COLUMNS.items() if name not in slides}
    create_table(slides, missing, TABLE_DIMS["slides"], rows=rows)


def roll_back_run(group: zarr.Group, manifest: Manifest) -> None:
    """Put a store back as ``manifest`` (read before the run began) describes it, after a run
    that failed before writing any shard (an append whose plan could not be made): the tables
    and patch arrays are trimmed to its rows and its manifest written again."""
    annotations = group["annotations"]
    rings = _row_count(annotations, "first_ring", "n_rings", manifest.n_annotations)
    lengths = {
        **{name: manifest.n_patches for name in (*COORDINATE_COLUMNS, *shard_arrays(manifest)) if name in group},
        **{f"slides/{name}": manifest.n_slides for name in SLIDE_COLUMNS},
        **{f"annotations/{name}": manifest.n_annotations for name in ANNOTATION_COLUMNS},
        **{f"annotations/{name}": rings for name in RING_COLUMNS},
        **{f"annotations/{name}": _row_count(annotations, "ring_start", "ring_length", rings) for name in VERTEX_COLUMNS},
    }
    for path, rows in lengths.items():
        array = group[path]
        if array.shape[0] != rows:
            array.resize((rows, *array.shape[1:]))
    if _DONE in group:
        del group[_DONE]
    write_manifest(group, manifest)
    consolidate(group)


def _row_count(group: zarr.Group, start: str, length: str, rows: int) -> int:
    """The rows of the next table that the first ``rows`` rows of this one use."""
    if rows == 0:
        return 0
    return int(group[start][rows - 1]) + int(group[length][rows - 1])


def end_planning(group: zarr.Group, manifest: Manifest) -> Manifest:
    """Size the patch arrays for the planned run and record that its plan is complete: from
    now on shards are written, and ``_shards_done`` marks those wholly before the run's first
    patch (the shard holding it is rewritten with its earlier patches)."""
    run = manifest.run
    assert run is not None
    n = manifest.n_patches
    for name in shard_arrays(manifest):
        if name in group:
            group[name].resize((n, *group[name].shape[1:]))
    group["label"].attrs["label_names"] = list(manifest.label_names)
    if _DONE in group:
        del group[_DONE]
    done = group.create_array(
        _DONE, shape=(manifest.n_shards,), dtype="uint8", chunks=(1,), fill_value=0,
        dimension_names=("shard",), config={"write_empty_chunks": True},
    )
    done[: run.first_patch // manifest.shard_size] = 1
    planned = replace(manifest, run=replace(run, planned=True))
    write_manifest(group, planned)
    return planned


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
                f"the same extraction with {option('resume', True)}"
            ) from None
        raise
    try:
        group = zarr.open_group(zarr_store, mode="r", zarr_format=3)
    except (FileNotFoundError, ValueError, zarr.errors.NodeTypeValidationError) as exc:
        raise StoreError(f"{location}: not a Zarr v3 group ({exc}); is this a wsizarr store?") from None
    manifest = read_manifest(group)
    if manifest.schema_version not in (1, SCHEMA_VERSION):
        raise StoreError(
            f"{location}: schema version {manifest.schema_version} is not supported by "
            f"this wsizarr (schema {SCHEMA_VERSION}); upgrade wsizarr"
        )
    if require_complete and not manifest.complete:
        done = done_shards(group)
        raise IncompleteStoreError(
            f"{location}: the extraction did not finish ({int(done.sum())} of {count(len(done), 'shard')} "
            f"written); run the same extraction with {option('resume', True)}"
        )
    return group


def open_for_writing(location: StoreLocation) -> zarr.Group:
    """Open an existing store to resume or append to it."""
    location = parse_location(location)
    refuse_legacy(location, open_store_manifest(location))
    return zarr.open_group(
        location.open("a"), mode="r+", zarr_format=3, use_consolidated=False
    )


def refuse_legacy(location: Location, manifest: Manifest) -> None:
    """``StoreError`` for a schema 1 store: read, never added to, until it is migrated."""
    if manifest.legacy is not None:
        raise StoreError(
            f"{location}: was written by an older wsizarr (schema 1), which this version reads "
            "but does not add to; rewrite it as schema 2 with `wsizarr migrate STORE` first"
        )


def open_for_task(location: Location) -> zarr.Group:
    """Open the store a run is writing, for one of its tasks: the coordinator has checked it,
    so this is one open (no listing, no second read of the root)."""
    return zarr.open_group(location.open("a", check=False), mode="r+", zarr_format=3, use_consolidated=False)


def open_store_manifest(location: StoreLocation) -> Manifest:
    """The manifest of the store at ``location`` (finished or not)."""
    return read_manifest(open_store(location, require_complete=False))


def done_shards(group: zarr.Group) -> np.ndarray:
    """A boolean array, one entry per shard: True where the shard is fully written."""
    manifest = read_manifest(group)
    if manifest.complete:
        return np.ones(manifest.n_shards, bool)
    if _DONE not in group or manifest.run is None or not manifest.run.planned:
        return np.zeros(manifest.n_shards, bool)
    return np.asarray(group[_DONE][:], dtype=bool)


def write_shard(
    group: zarr.Group, shard_index: int, arrays: Mapping[str, np.ndarray],
    chunks: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> None:
    """Write one whole shard of ``patches`` (and ``masks``, and the arrays chunked a shard's
    rows at a time: the quality measures, added arrays; one chunk each), then mark it done.
    ``chunks``: image arrays given as their chunks already encoded as stored, packed as they
    are (``pack_shard``).

    Marking after writing makes a crash lose at most the shards in flight. A store created
    before chunk checksums existed keeps getting shards without them.
    """
    manifest = read_manifest(group)
    pieces: dict[str, bytes] = {}  # key -> bytes, written together
    for name, values in arrays.items():
        if name in manifest.quality:  # a known layout (``create_store``): encoded here, no metadata read
            pieces[shard_key(name, shard_index, 1)] = encode_rows(values, manifest.shard_size, np.nan, CODECS["zstd"].encoder())
            continue
        array = group[name]
        if array.shards is None:  # an added array, whatever its layout: through zarr
            start = shard_index * manifest.shard_size
            array[start: start + len(values)] = values
            continue
        encoder = CODECS[manifest.codec if name == "patches" else MASK_CODEC].encoder()
        pieces[shard_key(array.path, shard_index, array.ndim)] = encode_shard(
            values, manifest.shard_size, encoder, checksums=has_chunk_checksums(array),
        )
    for name, stored in (chunks or {}).items():
        pieces[shard_key(name, shard_index, group[name].ndim)] = pack_shard(stored, manifest.shard_size)
    sync(_set_all(group.store, pieces))
    group[_DONE][shard_index] = 1


async def gather_all(awaitables: Iterable[Awaitable[Any]]) -> list[Any]:
    """The results of ``awaitables``, run concurrently; every one is awaited before the first
    failure is raised: one left failing unawaited would print its own traceback ("Future
    exception was never retrieved") beside the error that the caller turns into one line."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    failure = next((result for result in results if isinstance(result, BaseException)), None)
    if failure is not None:
        raise failure
    return results


async def _set_all(store: Any, data: Mapping[str, bytes]) -> None:
    """Write every ``key: bytes`` of ``data``, concurrently (one round trip of zarr's loop)."""
    prototype = default_buffer_prototype()
    await gather_all(store.set(key, prototype.buffer.from_bytes(value)) for key, value in data.items())


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
            f"extraction with {option('resume', True)} (finished shards are kept)"
        ) from None


def consolidate(group: zarr.Group) -> None:
    """Write the consolidated metadata (one read opens the whole store) into the root
    ``zarr.json``, as compact JSON: every open reads it whole."""
    with warnings.catch_warnings(), zarr.config.set({"json_indent": None}):
        # consolidated metadata is a zarr-python extension; other readers simply ignore it
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(group.store)


def finalize_store(group: zarr.Group, location: Location) -> None:
    """Mark the store at ``location`` complete once every shard is written (removing what
    killed writers left half-written); ``IncompleteStoreError`` otherwise."""
    done = done_shards(group)
    if not done.all():
        raise IncompleteStoreError(
            f"{group.store}: {count(int((~done).sum()), 'shard')} missing; resume the extraction"
        )
    location.remove_partial_writes()
    write_manifest(group, replace(read_manifest(group), complete=True, run=None))
    tidy_complete(group)


def tidy_complete(group: zarr.Group) -> None:
    """What follows marking a store complete: its shard markers removed and its metadata
    consolidated. A resume of a store killed in between finds it complete and does this again."""
    if _DONE in group:
        del group[_DONE]
    root = sync(group.store.get("zarr.json", default_buffer_prototype()))
    if root is None or json.loads(root.to_bytes()).get("consolidated_metadata") is None:
        consolidate(group)


def store_info(location: StoreLocation) -> dict[str, Any]:
    """A summary of a store, complete or not: counts per label and slide, shapes, bytes, parameters."""
    location = parse_location(location)
    group = open_store(location, require_complete=False)
    manifest = read_manifest(group)
    slides_table = slide_table(group)
    paths = slides_table.paths
    patches = group["patches"]
    done = done_shards(group)
    n_bytes, n_files = location.usage()
    label_names = manifest.label_names
    labels = np.asarray(group["label"][:])
    slides = np.asarray(group["slide"][:])
    codes, counts = np.unique(labels, return_counts=True)
    slide_codes, slide_counts = np.unique(slides, return_counts=True)
    return {
        "store": str(location),
        "complete": manifest.complete,
        "shards_done": int(done.sum()),
        "n_shards": len(done),
        "n_patches": int(patches.shape[0]),
        "patch_shape": list(patches.shape[1:]),
        "chunks": list(patches.chunks),
        "shards": list(patches.shards or patches.chunks),
        "codec": manifest.codec,
        "bytes_on_disk": n_bytes,
        "files": n_files,
        "per_label": {
            ("(unlabelled)" if code < 0 else label_names[code]): int(count)
            for code, count in zip(codes.tolist(), counts.tolist())
        },
        "per_slide": {
            paths[code]: int(count)
            for code, count in zip(slide_codes.tolist(), slide_counts.tolist())
        },
        "slides": [_slide_reading(slides_table, index) for index in range(len(slides_table))],
        "n_slides": manifest.n_slides,
        "n_annotations": manifest.n_annotations,
        "parameters": dict(manifest.parameters),
        "wsizarr_version": manifest.wsizarr_version,
        "schema_version": manifest.schema_version,
        "added": {name: added.to_attrs() for name, added in manifest.added.items()},
        "quality": {
            name: quality_summary(np.asarray(group[name][:]), labels, label_names) for name in manifest.quality
        },
        "subset": None if manifest.subset is None else manifest.subset.to_attrs(),
    }


def _slide_reading(slides: SlideTable, index: int) -> dict[str, Any]:
    """How the store read one slide: reader, level and its downsample, level pixels read per
    patch (resized to the patch size) and the resulting microns per pixel (None: unknown)."""
    resolution = slides.resolution(index)
    info = slides.info(index)
    return {
        "path": info.path, "vendor": info.vendor, "reader": slides.reader(index), "level": resolution.level,
        "downsample": info.level_downsamples[resolution.level] if 0 <= resolution.level < info.level_count else None,
        "read_size_px": resolution.read_size_px, "effective_mpp": resolution.mpp, "color": slides.color(index),
    }


def quality_summary(values: np.ndarray, labels: np.ndarray, label_names: tuple[str, ...]) -> dict[str, list[float]]:
    """Per label name, the 5th, 50th and 95th percentile of a quality measure's values (those
    not yet written, NaN in an unfinished store, left out)."""
    summary = {}
    for code in np.unique(labels).tolist():
        written = values[(labels == code) & ~np.isnan(values)]
        if written.size:
            summary["(unlabelled)" if code < 0 else label_names[code]] = [
                round(float(v), 4) for v in np.percentile(written, (5, 50, 95))
            ]
    return summary


