"""What a store says about itself: the O(1) manifest in its attributes, and its tables as arrays.

Schema 2 keeps the root ``zarr.json`` the same size whatever the cohort: the ``wsizarr``
attribute (:class:`Manifest`) holds only the schema and package versions, the recorded
parameters, label names, codec, counts, completeness and the state of a run under way. The
per-slide and per-annotation records are tables of aligned arrays in the ``slides/`` and
``annotations/`` groups (:data:`SLIDE_COLUMNS`, :data:`ANNOTATION_COLUMNS`), written a chunk at
a time by :class:`TableWriter` as slides are planned, and read whole (O(slides)) or by rows.

Schema 1 stores (slide table in the attributes) still open read-only: :func:`read_slides`
returns the same table for both. Columns added since (the colour columns) are absent from older
stores: :class:`SlideTable` reads them as their fill value ("no profile", ``unchanged``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from .._errors import StoreError
from ..slides._color import applied_color, profile_description, profile_sha256
from ..slides._slide import Resolution, SlideInfo
from ._shards import n_shards

__all__ = [
    "ANNOTATION_COLUMNS", "COORDINATE_COLUMNS", "MAX_LEVELS", "QUALITY_MEASURES", "SCHEMA_VERSION", "SLIDE_COLUMNS",
    "AddedArray", "Column", "Manifest", "RunState", "SlideTable", "StoredAnnotation", "SubsetOrigin", "TableWriter",
    "annotation_rows", "create_table", "plan_sha256", "read_annotations", "read_slides",
    "read_table", "slide_row",
]

SCHEMA_VERSION = 2
MAX_LEVELS = 32  # level columns are padded to this many levels (-1 / NaN)
ATTRS = "wsizarr"

# The quality arrays along ``patch``, one float32 value per patch each (computed by
# ``extraction._quality.measure_patches``): name -> (dtype, description as stored in the array).
QUALITY_MEASURES: Mapping[str, tuple[np.dtype, str]] = MappingProxyType({
    "tissue_fraction": (
        np.dtype("float32"),
        "share 0-1 of the patch's pixels that are tissue (HSV saturation above the tissue "
        "mask's threshold; glass is grey)",
    ),
    "sharpness": (
        np.dtype("float32"),
        "focus: variance of the 4-neighbour Laplacian, at 2-px spacing, of the green channel "
        "(0-255; H&E's grey: 0.99 correlated with luma's) in grey levels^2, >= 0, higher is "
        "sharper: sharp H&E ~1e3-2e4 at 0.25-1 um/px, far less when blurred or on glass; "
        "a per-pixel variance, so not the patch's pixel count but its um/px and staining "
        "contrast set the scale: compare patches read at one resolution",
    ),
    "pen_fraction": (
        np.dtype("float32"),
        "share 0-1 of the patch's pixels in marker-ink colours: hue green to blue (60-248 deg, "
        "saturation >= 0.25, max - min >= 16 of 255) or black (every channel < 24, or < 48 at "
        "saturation < 0.5); H&E pink and purple do not count, cyan fringes at tissue edges do",
    ),
    "brightness": (
        np.dtype("float32"),
        "mean grey 0-1 (ITU-R 601 luma / 255): ~0.95 for glass, ~0.45-0.8 for H&E; low for "
        "folds, thick or over-stained tissue and dark scan artefacts",
    ),
    "saturation": (
        np.dtype("float32"),
        "mean HSV saturation 0-1 of the tissue pixels (0 if none): stain intensity, low for "
        "faded or weakly stained tissue, high for folds and over-staining",
    ),
})


@dataclass(frozen=True)
class RunState:
    """A run under way: it adds slides from ``first_slide``, patches from ``first_patch`` and
    annotations from ``first_annotation``; ``planned`` once every slide's plan is in the
    store (shards are written only then, so an unplanned run has written none)."""

    first_slide: int
    first_patch: int
    first_annotation: int
    planned: bool = False


@dataclass(frozen=True)
class AddedArray:
    """An array added after extraction (``wsizarr.add_array``): aligned with the patches along
    ``patch``, ``shape`` ``(N, ...)`` of ``dtype``, computed by ``fn`` (its description);
    ``complete`` once every shard's rows are written."""

    shape: tuple[int, ...]
    dtype: str
    fn: str
    complete: bool = False

    def to_attrs(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "fn": self.fn, "complete": self.complete}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> AddedArray:
        return cls(tuple(int(n) for n in attrs["shape"]), str(attrs["dtype"]), str(attrs.get("fn", "")),
                   bool(attrs.get("complete")))


@dataclass(frozen=True)
class SubsetOrigin:
    """Where a store made by ``wsizarr.subset`` came from: the ``source`` store, its
    ``source_patches``, and the ``selection`` (the filters given; explicit indices as
    ``indices_sha256`` and ``n_indices``)."""

    source: str
    source_patches: int
    selection: Mapping[str, Any]

    def to_attrs(self) -> dict[str, Any]:
        return {"source": self.source, "source_patches": self.source_patches, "selection": dict(self.selection)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> SubsetOrigin:
        return cls(str(attrs["source"]), int(attrs["source_patches"]), dict(attrs.get("selection", {})))


@dataclass(frozen=True)
class Manifest:
    """The store's ``wsizarr`` attribute, typed; O(1) in slides, annotations and patches."""

    wsizarr_version: str
    parameters: Mapping[str, Any]
    shard_size: int
    codec: str
    codec_lossless: bool = True
    requires: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION
    label_names: tuple[str, ...] = ()
    n_patches: int = 0
    n_slides: int = 0
    n_annotations: int = 0
    complete: bool = False
    run: RunState | None = None
    added: Mapping[str, AddedArray] = field(default_factory=dict)  # by name, in the order added
    quality: tuple[str, ...] = ()  # the quality measures (``QUALITY_MEASURES``) stored as arrays along patch
    subset: SubsetOrigin | None = None  # made by ``wsizarr.subset`` from another store
    legacy: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def n_shards(self) -> int:
        return n_shards(self.n_patches, self.shard_size)

    def to_attrs(self) -> dict[str, Any]:
        """The JSON-ready attribute; only schema 2 is ever written."""
        if self.legacy is not None:
            raise StoreError("a schema 1 store is read-only: migrate it with `wsizarr migrate STORE`")
        attrs = {k: v for k, v in asdict(self).items() if k not in ("legacy", "run", "added", "subset")}
        attrs["requires"] = list(self.requires)
        attrs["label_names"] = list(self.label_names)
        attrs["quality"] = list(self.quality)
        attrs["parameters"] = dict(self.parameters)
        if self.run is not None:
            attrs["run"] = asdict(self.run)
        if self.added:  # absent until an array is added: older stores' attributes unchanged
            attrs["added"] = {name: added.to_attrs() for name, added in self.added.items()}
        if self.subset is not None:
            attrs["subset"] = self.subset.to_attrs()
        return attrs

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Manifest:
        """The manifest of either schema (schema 1's slide table is kept as ``legacy``)."""
        version = attrs.get("schema_version")
        legacy = attrs if version == 1 else None
        run, subset = attrs.get("run"), attrs.get("subset")
        return cls(
            wsizarr_version=attrs.get("wsizarr_version", "?"), parameters=dict(attrs.get("parameters", {})),
            shard_size=int(attrs["shard_size"]), codec=attrs["codec"],
            codec_lossless=bool(attrs.get("codec_lossless", True)),
            requires=tuple(attrs.get("requires", ())), schema_version=version,
            label_names=tuple(attrs.get("label_names", ())), n_patches=int(attrs.get("n_patches", 0)),
            n_slides=len(attrs.get("slides", ())) if legacy else int(attrs.get("n_slides", 0)),
            n_annotations=int(attrs.get("n_annotations", 0)), complete=bool(attrs.get("complete")),
            run=None if run is None or legacy else RunState(**run),
            added={name: AddedArray.from_attrs(a) for name, a in attrs.get("added", {}).items()},
            quality=tuple(attrs.get("quality", ())),
            subset=None if subset is None else SubsetOrigin.from_attrs(subset),
            legacy=legacy,
        )


@dataclass(frozen=True)
class Column:
    """One array of a table: its dtype (``str`` for text), the shape of one row, its fill value
    and the rows per chunk."""

    dtype: str
    row_shape: tuple[int, ...] = ()
    fill: Any = None
    chunk_rows: int = 4096


def _text(chunk_rows: int = 4096) -> Column:
    return Column("str", (), "", chunk_rows)


SLIDE_COLUMNS: dict[str, Column] = {
    "path": _text(),
    "content_hash": _text(),
    "annotations": _text(),  # the annotation file ("" for records)
    "annotations_sha256": _text(),
    "vendor": _text(),
    "dimensions": Column("int64", (2,), -1),
    "level_dimensions": Column("int64", (MAX_LEVELS, 2), -1),
    "level_downsamples": Column("float64", (MAX_LEVELS,), np.nan),
    "mpp": Column("float64", (2,), np.nan),
    "objective_power": Column("float64", (), np.nan),
    "level": Column("int32", (), -1),  # the level read
    "read_size_px": Column("int32", (), -1),
    "effective_mpp": Column("float64", (), np.nan),
    "reader": _text(),
    "first_patch": Column("int64", (), -1),
    "n_patches": Column("int64", (), 0),
    "first_annotation": Column("int64", (), -1),
    "n_annotations": Column("int64", (), 0),
    "plan_sha256": _text(),  # of the slide's rows of the 1-D patch arrays
    # the ICC profile the slide embeds, its bytes as base64 text (zarr's variable-length bytes
    # has no Zarr v3 specification yet; text has, and every reader reads it); "" without one
    "icc_profile": _text(),
    "icc_description": _text(),
    "icc_sha256": _text(),  # of the profile's bytes
    "color": _text(),  # what the color option did: srgb (converted from icc_profile) or unchanged
}
_ANNOTATION_ROWS = 1 << 14
ANNOTATION_COLUMNS: dict[str, Column] = {
    "slide": Column("int32", (), -1, _ANNOTATION_ROWS),
    "id": Column("int64", (), -1, _ANNOTATION_ROWS),
    "name": _text(_ANNOTATION_ROWS),
    "label": Column("int32", (), -1, _ANNOTATION_ROWS),  # code into label_names, -1 none
    "type": _text(_ANNOTATION_ROWS),
    "exclusion": Column("bool", (), False, _ANNOTATION_ROWS),
    "bbox": Column("float64", (4,), np.nan, _ANNOTATION_ROWS),  # level-0 x0, y0, x1, y1
    "first_ring": Column("int64", (), -1, _ANNOTATION_ROWS),  # exterior, then holes
    "n_rings": Column("int32", (), 0, _ANNOTATION_ROWS),
}
_RING_ROWS = 1 << 16
RING_COLUMNS: dict[str, Column] = {
    "ring_start": Column("int64", (), -1, _RING_ROWS),  # first row of ``vertices``
    "ring_length": Column("int64", (), 0, _RING_ROWS),
}
VERTEX_COLUMNS: dict[str, Column] = {"vertices": Column("float64", (2,), np.nan, _RING_ROWS)}
COORDINATE_COLUMNS: dict[str, Column] = {
    "x": Column("int64", (), -1), "y": Column("int64", (), -1), "level": Column("int32", (), -1),
    "annotation_id": Column("int64", (), -1), "label": Column("int32", (), -1),
    "slide": Column("int32", (), -1), "padded": Column("bool", (), False),
}
TABLE_DIMS = {"slides": "slide", "annotations": "annotation", "rings": "ring", "vertices": "vertex"}


def coordinate_chunk_rows(shard_size: int) -> int:
    """Rows per chunk of the 1-D patch arrays: about 64 Ki, a whole number of shards, so a
    shard's plan is in one chunk of each."""
    return shard_size * max(1, (1 << 16) // shard_size)


def create_table(
    group: zarr.Group, columns: Mapping[str, Column], dim: str, chunk_rows: int | None = None,
    attributes: Mapping[str, Mapping[str, Any]] | None = None, rows: int = 0,
) -> None:
    """Create arrays for ``columns`` in ``group`` along dimension ``dim``, ``rows`` long (their
    fill value; empty by default), each chunk compressed and ending in its crc32c."""
    for name, column in columns.items():
        chunk = chunk_rows or column.chunk_rows
        extra_dims = tuple(f"{name}_{i}" for i in range(len(column.row_shape)))
        group.create_array(
            name, shape=(rows, *column.row_shape), dtype=str if column.dtype == "str" else column.dtype,
            chunks=(chunk, *column.row_shape), compressors=(ZstdCodec(level=0), Crc32cCodec()),
            fill_value=column.fill, dimension_names=(dim, *extra_dims),
            attributes=dict((attributes or {}).get(name, {})),
        )


class TableWriter:
    """Appends rows to a table's arrays from row ``start``, a whole chunk at a time.

    Rows are buffered until they fill the chunk they belong to, so each chunk is written once
    (the first may be a partly filled chunk of an earlier run, rewritten with its old rows) and
    memory stays one chunk per column. ``close()`` writes the rest and trims the arrays to the
    rows written.
    """

    def __init__(self, group: zarr.Group, columns: Mapping[str, Column], start: int) -> None:
        self._arrays = {name: group[name] for name in columns}
        self._columns = columns
        self._chunk = min(a.chunks[0] for a in self._arrays.values())
        self._flushed = start  # rows before this are in the store
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in columns}
        self._n_pending = 0

    @property
    def rows(self) -> int:
        """Rows in the table once everything appended is written."""
        return self._flushed + self._n_pending

    def append(self, rows: Mapping[str, np.ndarray]) -> None:
        lengths = {len(values) for values in rows.values()}
        if len(lengths) != 1 or set(rows) != set(self._columns):
            raise ValueError(f"rows must give every column once, with one length: {sorted(rows)}")
        for name, values in rows.items():
            self._pending[name].append(np.asarray(values))
        self._n_pending += lengths.pop()
        boundary = (self.rows // self._chunk) * self._chunk
        if boundary > self._flushed:
            self._write(boundary)

    def close(self) -> int:
        """Write the remaining rows; returns the table's length."""
        self._write(self.rows)
        for array in self._arrays.values():
            if array.shape[0] != self._flushed:
                array.resize((self._flushed, *array.shape[1:]))
        return self._flushed

    def _write(self, stop: int) -> None:
        if stop <= self._flushed:
            return
        take = stop - self._flushed
        for name, array in self._arrays.items():
            values = np.concatenate(self._pending[name]) if self._pending[name] else np.zeros(0)
            column = self._columns[name]
            if array.shape[0] < stop:
                array.resize((stop, *array.shape[1:]))
            data = values[:take]
            array[self._flushed:stop] = data.astype(object) if column.dtype == "str" else data.astype(column.dtype, copy=False)
            self._pending[name] = [values[take:]] if len(values) > take else []
        self._n_pending -= take
        self._flushed = stop


def read_table(group: zarr.Group, names: Iterable[str] | None = None, rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """Columns of a table (all of them by default), ``rows`` of each."""
    wanted = list(names) if names is not None else [name for name, _ in group.arrays()]
    return {name: _plain(np.asarray(group[name][rows])) for name in wanted}


def _plain(values: np.ndarray) -> np.ndarray:
    """Text columns as arrays of Python ``str`` (zarr gives numpy's variable-width strings)."""
    return values.astype(object) if values.dtype.kind == "T" else values


def slide_row(
    info: SlideInfo, resolution: Resolution, *, content_hash: str, annotations: str | None,
    annotations_sha256: str, reader: str, first_patch: int, n_patches: int, first_annotation: int,
    n_annotations: int, plan_sha256: str, color: str,
) -> dict[str, np.ndarray]:
    """One slide's row of ``SLIDE_COLUMNS`` (arrays of length 1); ``color`` is the run's option."""
    if info.level_count > MAX_LEVELS:
        raise StoreError(f"{info.path}: {info.level_count} levels; the store holds at most {MAX_LEVELS}")
    level_dimensions = np.full((MAX_LEVELS, 2), -1, np.int64)
    level_dimensions[: info.level_count] = info.level_dimensions
    downsamples = np.full(MAX_LEVELS, np.nan)
    downsamples[: info.level_count] = info.level_downsamples
    values: dict[str, Any] = {
        "path": info.path, "content_hash": content_hash, "annotations": annotations or "",
        "annotations_sha256": annotations_sha256, "vendor": info.vendor or "",
        "dimensions": info.dimensions, "level_dimensions": level_dimensions,
        "level_downsamples": downsamples, "mpp": info.mpp or (np.nan, np.nan),
        "objective_power": np.nan if info.objective_power is None else info.objective_power,
        "level": resolution.level, "read_size_px": resolution.read_size_px,
        "effective_mpp": np.nan if resolution.mpp is None else resolution.mpp, "reader": reader,
        "first_patch": first_patch, "n_patches": n_patches, "first_annotation": first_annotation,
        "n_annotations": n_annotations, "plan_sha256": plan_sha256,
        "icc_profile": "" if info.icc_profile is None else base64.b64encode(info.icc_profile).decode("ascii"),
        "icc_description": profile_description(info.icc_profile), "icc_sha256": profile_sha256(info.icc_profile),
        "color": applied_color(color, info.icc_profile),
    }
    return {
        name: np.array([values[name]], dtype=object if column.dtype == "str" else column.dtype)
        for name, column in SLIDE_COLUMNS.items()
    }


def annotation_rows(
    slide_index: int, annotations: Sequence[Any], exclusions: Sequence[Any], labels: Mapping[str, int],
    first_ring: int, first_vertex: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The rows of one slide's annotations (then its exclusions): the annotation table's, the
    rings' and the vertices'."""
    records = [*annotations, *exclusions]
    rings = [ring for a in records for ring in (a.vertices, *a.holes)]
    lengths = np.array([len(r) for r in rings], np.int64)
    n_rings = np.array([1 + len(a.holes) for a in records], np.int32)
    table = {
        "slide": np.full(len(records), slide_index, np.int32),
        "id": np.array([a.id for a in records], np.int64),
        "name": np.array([a.name for a in records], dtype=object),
        "label": np.array(
            [-1 if a.label is None or k >= len(annotations) else labels[a.label] for k, a in enumerate(records)],
            np.int32,
        ),
        "type": np.array([a.type for a in records], dtype=object),
        "exclusion": np.arange(len(records)) >= len(annotations),
        "bbox": np.array([a.bbox for a in records], np.float64).reshape(-1, 4),
        "first_ring": first_ring + np.concatenate([[0], np.cumsum(n_rings)[:-1]]).astype(np.int64)
        if records else np.zeros(0, np.int64),
        "n_rings": n_rings,
    }
    ring_rows = {
        "ring_start": first_vertex + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        if rings else np.zeros(0, np.int64),
        "ring_length": lengths,
    }
    vertices = np.concatenate([np.asarray(r, np.float64) for r in rings]) if rings else np.zeros((0, 2))
    return table, ring_rows, {"vertices": vertices}


@dataclass(frozen=True)
class StoredAnnotation:
    """An annotation (or exclusion) as the store holds it: label code (-1 none), level-0
    bounding box and rings (exterior first, then holes)."""

    id: int
    label: int
    exclusion: bool
    bbox: tuple[float, float, float, float]
    rings: tuple[np.ndarray, ...]


def read_annotations(annotations: zarr.Group, rows: range | slice) -> list[StoredAnnotation]:
    """The annotations in ``rows`` of the store's annotation table, with their vertices."""
    if rows.stop <= rows.start:
        return []
    table = read_table(annotations, ("id", "label", "exclusion", "bbox", "first_ring", "n_rings"), slice(rows.start, rows.stop))
    first_ring = int(table["first_ring"][0])
    ring_rows = slice(first_ring, int(table["first_ring"][-1] + table["n_rings"][-1]))
    starts = np.asarray(annotations["ring_start"][ring_rows])
    lengths = np.asarray(annotations["ring_length"][ring_rows])
    base = int(starts[0]) if len(starts) else 0
    vertices = np.asarray(annotations["vertices"][base: int(starts[-1] + lengths[-1])]) if len(starts) else np.zeros((0, 2))
    rings = [vertices[s - base: s - base + n] for s, n in zip(starts.tolist(), lengths.tolist())]
    out = []
    for k in range(len(table["id"])):
        own = int(table["first_ring"][k]) - first_ring
        out.append(StoredAnnotation(
            int(table["id"][k]), int(table["label"][k]), bool(table["exclusion"][k]),
            tuple(float(v) for v in table["bbox"][k]), tuple(rings[own: own + int(table["n_rings"][k])]),
        ))
    return out


def plan_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of one slide's rows of the 1-D patch arrays (names sorted, little-endian bytes)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class SlideTable:
    """The store's slides as columns (either schema): ``path[i]``, ``info(i)``, ``resolution(i)``."""

    columns: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["path"])

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in self.columns["path"]]

    def info(self, index: int) -> SlideInfo:
        c = self.columns
        count = int((c["level_downsamples"][index] == c["level_downsamples"][index]).sum())
        mpp = c["mpp"][index]
        power = float(c["objective_power"][index])
        return SlideInfo(
            path=str(c["path"][index]), vendor=str(c["vendor"][index]) or None,
            dimensions=tuple(int(v) for v in c["dimensions"][index]),
            level_dimensions=tuple((int(w), int(h)) for w, h in c["level_dimensions"][index][:count]),
            level_downsamples=tuple(float(d) for d in c["level_downsamples"][index][:count]),
            mpp=None if np.isnan(mpp).any() else (float(mpp[0]), float(mpp[1])),
            objective_power=None if np.isnan(power) else power, icc_profile=self.icc_profile(index),
        )

    def icc_profile(self, index: int) -> bytes | None:
        """The ICC profile the slide embeds, None without one (or in a store made before
        profiles were recorded)."""
        encoded = str(self.columns["icc_profile"][index]) if "icc_profile" in self.columns else ""
        return base64.b64decode(encoded) if encoded else None

    def color(self, index: int) -> str:
        """``srgb`` when the slide's patches were converted from its profile, else ``unchanged``."""
        recorded = str(self.columns["color"][index]) if "color" in self.columns else ""
        return recorded or "unchanged"  # "": a slide of a store made before colours were recorded

    def resolution(self, index: int) -> Resolution:
        c = self.columns
        mpp = float(c["effective_mpp"][index])
        return Resolution(int(c["level"][index]), int(c["read_size_px"][index]), None if np.isnan(mpp) else mpp)

    def reader(self, index: int) -> str:
        return str(self.columns["reader"][index])

    def annotations(self, index: int) -> str | None:
        return str(self.columns["annotations"][index]) or None

    def patch_rows(self, index: int) -> range:
        """The slide's rows of the patch arrays (``first_patch``, ``n_patches``); ``StoreError``
        for a schema 1 store, which does not record them."""
        first, n = int(self.columns["first_patch"][index]), int(self.columns["n_patches"][index])
        if first < 0:
            raise StoreError(
                f"slide {self.paths[index]!r}: the store (schema 1) does not record its slides' rows; "
                "run wsizarr migrate on it"
            )
        return range(first, first + n)


def read_slides(group: zarr.Group, manifest: Manifest) -> SlideTable:
    """The slide table of a store of either schema."""
    if manifest.legacy is None:
        return SlideTable(read_table(group["slides"]))
    rows = manifest.legacy.get("slides", [])
    columns: dict[str, list[Any]] = {name: [] for name in SLIDE_COLUMNS}
    for entry in rows:
        info = SlideInfo.from_attrs(entry)
        read_size = entry.get("read_size_px") or manifest.parameters.get("patch_size", 0)
        resolution = Resolution(entry.get("level") or 0, read_size, entry.get("effective_mpp"))
        row = slide_row(
            info, resolution, content_hash=entry.get("content_hash") or "",
            annotations=entry.get("annotations"), annotations_sha256=entry.get("annotations_sha256") or "",
            reader=entry.get("reader", "openslide"), first_patch=-1, n_patches=0, first_annotation=-1,
            n_annotations=len(entry.get("annotation_names", ())), plan_sha256="", color="unchanged",
        )
        for name, values in row.items():
            columns[name].append(values[0])
    return SlideTable({
        name: np.array(values, dtype=object if SLIDE_COLUMNS[name].dtype == "str" else SLIDE_COLUMNS[name].dtype)
        .reshape(len(rows), *SLIDE_COLUMNS[name].row_shape)
        for name, values in columns.items()
    })
