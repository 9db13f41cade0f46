"""Annotation files -> ``Annotation`` records (level-0 pixel coordinates).

Formats are recognised from the content: ASAP XML (``<ASAP_Annotations>``), Aperio ImageScope
XML (``<Annotations>``), QuPath GeoJSON (a FeatureCollection, a Feature, an array of them or a bare
geometry) and DSA / HistomicsUI annotation JSON (a document, or a list of documents, with
``elements``).
Objects that hold nothing usable (too few points, no area, lines) are skipped and counted; a file
is refused only when nothing usable is left, or at the first one with ``strict``.
"""

from __future__ import annotations

import ast
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from lxml import etree

from ._errors import AnnotationError, ParameterError, option
from ._geometry import ellipse, points_in_polygon, rotate
from ._text import count

__all__ = [
    "ANNOTATION_TYPES", "Annotation", "AnnotationFile", "Skipped", "annotation_note",
    "apply_label_map", "describe", "format_description", "parse_label_map",
    "read_annotation_file", "read_annotations",
]

ANNOTATION_TYPES = ("Polygon", "Rectangle", "Spline", "Dot", "PointSet")
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")
_MIN_VERTICES = {"Polygon": 3, "Spline": 3, "Rectangle": 4, "Dot": 1, "PointSet": 1}
_MAX_BYTES = 512 * 1024 * 1024
_MAX_CLASSIFICATION_CHARS = 10_000  # a classification string longer than this is not parsed
_Format = Literal["asap", "imagescope", "geojson", "dsa"]
_LabelFrom = Literal["name", "attribute"]
_XML_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")  # ASCII-compatible + wide
_IMAGESCOPE_DEFAULT_ATTRIBUTE = "Description"  # what ImageScope puts in every new layer
_GEOJSON_GEOMETRIES = (
    "Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection",
)


@dataclass(frozen=True, eq=False)
class Annotation:
    """One annotated structure (a glomerulus, a tumour region, a cell).

    ``id`` is its 0-based position in the file, stable for a given file; ``label`` is its group
    (``None`` when unlabelled); ``vertices`` is a read-only ``(K, 2)`` float64 array of level-0
    ``(x, y)`` pixel coordinates in drawing order; ``holes`` are rings cut out of the polygon.
    """

    id: int
    name: str
    label: str | None
    type: str
    vertices: np.ndarray = field(repr=False)
    holes: tuple[np.ndarray, ...] = field(default=(), repr=False)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Level-0 bounding box ``(x_min, y_min, x_max, y_max)`` in pixels."""
        x_min, y_min = self.vertices.min(axis=0)
        x_max, y_max = self.vertices.max(axis=0)
        return float(x_min), float(y_min), float(x_max), float(y_max)


@dataclass(frozen=True)
class Skipped:
    """An object of the file left out: where it is (line or element), why (``reason``: ``too
    few points``, ``no area``, ``line``, ``no geometry`` or ``unsupported ...``) and ``detail``."""

    where: str
    reason: str
    detail: str


@dataclass(frozen=True)
class AnnotationFile:
    """What a file holds: its annotations, its format, the ImageScope ``MicronsPerPixel`` (if
    any), the ASAP group hierarchy (group -> parent group, None at the top), the number of
    polygons that were repaired, the areas to leave out (``exclusions``: ImageScope negative
    regions that lie in no positive region, and annotations of the excluded labels), the objects
    ``skipped``, ``warnings`` about how the file was read, and where each label came from
    (``label_sources``, label -> e.g. ``"layer 3 attribute 'CaP'"``)."""

    annotations: tuple[Annotation, ...]
    format: _Format
    mpp: float | None = None
    groups: Mapping[str, str | None] = field(default_factory=dict)
    repaired: int = 0
    exclusions: tuple[Annotation, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    warnings: tuple[str, ...] = ()
    label_sources: Mapping[str, str] = field(default_factory=dict)

    def group_chain(self, label: str) -> tuple[str, ...]:
        """``label`` and its ancestor groups, innermost first (``("a", "parent", "root")``)."""
        chain = [label]
        while (parent := self.groups.get(chain[-1])) is not None and parent not in chain:
            chain.append(parent)
        return tuple(chain)


def read_annotations(path: str | Path, **options: Any) -> list[Annotation]:
    """Read the annotations of one file; ``options`` are those of ``read_annotation_file``.

    Coordinates are level-0 pixels. Raises ``AnnotationError`` with the file, the line or
    annotation and the fix when the file is missing, malformed, hostile or holds nothing usable.
    """
    return list(read_annotation_file(path, **options).annotations)


def read_annotation_file(
    path: str | Path, *, label_from: _LabelFrom = "name", exclude_detections: bool = False,
    exclude_labels: Iterable[str] = (), strict: bool = False,
) -> AnnotationFile:
    """Read an annotation file (ASAP XML, Aperio ImageScope XML, QuPath GeoJSON or DSA JSON).

    ``label_from`` picks an ImageScope layer's label from its ``name`` first (default) or its
    ``attribute`` first; ``exclude_detections`` leaves out QuPath detection objects;
    annotations labelled one of ``exclude_labels`` become ``exclusions`` (areas to leave out).
    Degenerate objects are skipped and listed in ``skipped``, or refused with ``strict``.
    """
    if label_from not in ("name", "attribute"):
        raise ParameterError(f"label_from must be 'name' or 'attribute', got {label_from!r}; pass one of them")
    path = Path(path)
    data = _read_bytes(path)
    builder = _Builder(path, strict=strict, exclude_labels=frozenset(exclude_labels))
    if _looks_like_json(data):
        document = _parse_json(path, data)
        if _dsa_documents(document) is not None:
            _read_dsa(builder, document)
            return builder.result("dsa")
        _read_geojson(builder, document, exclude_detections)
        return builder.result("geojson")
    root = _parse_xml(path, data)
    if root.tag == "ASAP_Annotations":
        groups = _read_asap(builder, root)
        return builder.result("asap", groups=groups)
    if root.tag == "Annotations":
        mpp = _read_imagescope(builder, root, label_from)
        return builder.result("imagescope", mpp)
    raise AnnotationError(
        f"{path}: unknown annotation format (XML root <{root.tag}>); expected ASAP XML "
        "(<ASAP_Annotations>), Aperio ImageScope XML (<Annotations>), QuPath GeoJSON or DSA JSON"
    )


def _looks_like_json(data: bytes) -> bool:
    """True when the first character (after any byte-order mark, in UTF-8/16/32) is ``{`` or ``[``."""
    encoding = json.detect_encoding(data[:4])
    head = data[:64].decode(encoding, errors="ignore").lstrip("\ufeff \t\r\n")
    return head[:1] in ("{", "[")


def _parse_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data)  # bytes: UTF-8 (with or without BOM), UTF-16 and UTF-32
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); re-export the annotations"
        ) from None
    except (ValueError, RecursionError) as exc:  # undecodable, a huge integer, nested too deeply
        reason = "nested too deeply" if isinstance(exc, RecursionError) else _first_line(exc)
        raise AnnotationError(f"{path}: not valid JSON ({reason}); re-export the annotations") from None


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found; check the path")
    size = path.stat().st_size
    if size == 0:
        raise AnnotationError(f"{path}: the annotation file is empty; export the annotations again")
    if size > _MAX_BYTES:
        raise AnnotationError(
            f"{path}: {size} bytes is too large for an annotation file (limit {_MAX_BYTES} bytes); "
            "export fewer objects, e.g. without detections"
        )
    return path.read_bytes()


def _parse_xml(path: Path, data: bytes) -> etree._Element:
    # Entity declarations are refused outright: no expansion (billion laughs), no external
    # entities (XXE), and the parser never touches the network.
    if any("<!ENTITY".encode(encoding) in data for encoding in _XML_ENCODINGS):
        raise AnnotationError(
            f"{path}: the XML declares entities (<!ENTITY>), which wsizarr refuses for safety; "
            "remove the DOCTYPE from the file"
        )
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno is not None else "?"
        raise AnnotationError(
            f"{path}:{line}: not well-formed XML ({exc.msg}); re-export the annotations"
        ) from None


def _number(path: Path, element: etree._Element, attribute: str, where: str) -> float:
    text = element.get(attribute)
    if text is None:
        raise AnnotationError(
            f"{path}:{element.sourceline}: {where}: <{element.tag}> has no {attribute}; "
            "add the coordinate or remove the element"
        )
    text = text.strip()
    if "," in text and "." not in text:
        text = text.replace(",", ".")  # ASAP under some locales writes decimal commas
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise AnnotationError(
            f"{path}:{element.sourceline}: {where}: {attribute}={element.get(attribute)!r} "
            "is not a finite number; fix the coordinate"
        )
    return value


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


class _Builder:
    """Collects a file's annotations and exclusions with consecutive ids: repairs invalid
    polygons, skips degenerate objects (refuses them when ``strict``), gathers warnings and
    where each label came from.

    A ``where`` is ``"<line>: <name>"`` in XML and ``"<element>"`` in JSON."""

    def __init__(self, path: Path, *, strict: bool, exclude_labels: frozenset[str]) -> None:
        self.path = path
        self.strict = strict
        self.exclude_labels = exclude_labels
        self.annotations: list[Annotation] = []
        self.exclusions: list[Annotation] = []
        self.skipped: list[Skipped] = []
        self.warned: dict[str, list[str]] = {}
        self.sources: dict[str, list[str]] = {}
        self.repaired = 0

    def at(self, where: str) -> str:
        """``where`` after the file: ``a.xml:12: annotation 'A'``, ``a.json: feature 3``."""
        return f"{self.path}:{where}" if where[:1].isdigit() else f"{self.path}: {where}"

    def skip(self, where: str, reason: str, detail: str) -> None:
        """Leave an object out (``reason`` counts it, ``detail`` explains it), or refuse it."""
        if self.strict:
            raise AnnotationError(
                f"{self.at(where)}: {detail}; fix or remove it (without {option('strict_annotations', True)} it is skipped)"
            )
        self.skipped.append(Skipped(where, reason, detail))

    def warn(self, where: str, what: str) -> None:
        self.warned.setdefault(what, []).append(where)

    def ring(self, where: str, points: Sequence[Sequence[float]], kind: str) -> np.ndarray | None:
        """A validated, read-only ``(K, 2)`` ring (a polygon's closing duplicate dropped), or
        None when it has too few points (skipped)."""
        vertices = np.array(points, dtype=np.float64).reshape(-1, 2)
        if kind in ("Polygon", "Spline") and len(vertices) > 3 and np.array_equal(vertices[0], vertices[-1]):
            vertices = vertices[:-1]
        if not np.isfinite(vertices).all():
            raise AnnotationError(f"{self.at(where)}: a coordinate is not a finite number; fix it")
        if len(vertices) < _MIN_VERTICES[kind]:
            self.skip(
                where, "too few points",
                f"a {kind} needs at least {_MIN_VERTICES[kind]} coordinates, found {len(vertices)}",
            )
            return None
        return _read_only(vertices)

    def add(
        self, where: str, name: str, label: str | None, kind: str, vertices: np.ndarray | None,
        holes: Sequence[np.ndarray | None] = (), *, origin: str = "", exclusion: bool = False,
    ) -> None:
        """Add an annotation (or, for an excluded label, an exclusion); ``origin`` says where
        its label came from. Rings that were skipped (None) are left out: an exterior, with
        the whole annotation."""
        if vertices is None:
            return
        holes = tuple(h for h in holes if h is not None)
        parts = [(vertices, holes)]
        if kind in ("Polygon", "Spline", "Rectangle"):
            polygon = shapely.Polygon(vertices, holes)
            if not polygon.is_valid:  # what make_valid gives back is a plain polygon
                parts, kind = _repair(polygon), "Polygon"
                if not parts:
                    self.skip(where, "no area", "it has no area (its points are in a line or repeat)")
                    return
                self.repaired += 1
        exclusion = exclusion or label in self.exclude_labels
        into = self.exclusions if exclusion else self.annotations
        if not exclusion and label is not None and origin not in self.sources.setdefault(label, []):
            self.sources[label].append(origin)
        for k, (exterior, part_holes) in enumerate(parts):
            part_name = name if len(parts) == 1 else f"{name} #{k + 1}"
            into.append(Annotation(len(into), part_name, label, kind, exterior, part_holes))

    def result(
        self, format: _Format, mpp: float | None = None, groups: Mapping[str, str | None] | None = None
    ) -> AnnotationFile:
        """The file as read; refused when objects were skipped and nothing usable is left."""
        if not self.annotations and not self.exclusions and self.skipped:
            first = self.skipped[0]
            raise AnnotationError(
                f"{self.at(first.where)}: {first.detail}; nothing usable is left in the file "
                f"({_skip_counts(self.skipped)}); fix the annotations"
            )
        unused = sorted(self.exclude_labels - {e.label for e in self.exclusions})
        if unused:
            self.warn("", f"no annotation is labelled {', '.join(map(repr, unused))}, so none is excluded by it")
        warnings = tuple(
            (f"{wheres[0]}: {what}" if wheres[0] else what) if len(wheres) == 1
            else f"{len(wheres)} times: {what} (first at {wheres[0]})"
            for what, wheres in self.warned.items()
        )
        return AnnotationFile(
            tuple(self.annotations), format, mpp, groups or {}, self.repaired, tuple(self.exclusions),
            tuple(self.skipped), warnings,
            {label: "; ".join(origins) for label, origins in self.sources.items()},
        )


def _skip_counts(skipped: Sequence[Skipped]) -> str:
    """``"3 skipped (no area 2, line 1)"``."""
    counts = Counter(s.reason for s in skipped)
    return f"{len(skipped)} skipped ({', '.join(f'{reason} {n}' for reason, n in counts.most_common())})"


def _repair(polygon: shapely.Polygon) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    """The polygons of shapely's ``make_valid`` (a bow-tie becomes two triangles); none when
    the polygon has no area (its points are in a line)."""

    def polygons(geometry: Any) -> Iterable[Any]:  # make_valid may nest collections
        if geometry.geom_type == "Polygon":
            yield geometry
        else:
            for part in getattr(geometry, "geoms", ()):
                yield from polygons(part)

    def ring(coordinates: Any) -> np.ndarray:
        return _read_only(np.asarray(coordinates.coords, dtype=np.float64)[:-1])

    with np.errstate(all="ignore"):  # GEOS may divide by zero on near-degenerate input
        valid = shapely.make_valid(polygon)
    sliver = 1e-9 * valid.area  # floating-point crumbs of the repair, not structures
    return [
        (ring(p.exterior), tuple(ring(i) for i in p.interiors if shapely.Polygon(i).area > sliver))
        for p in polygons(valid) if p.area > sliver
    ]


def _read_asap(builder: _Builder, root: etree._Element) -> dict[str, str | None]:
    """Add an ASAP file's annotations; returns its group hierarchy."""
    path = builder.path
    for index, element in enumerate(root.iterfind("Annotations/Annotation")):
        name = element.get("Name") or f"Annotation {index}"
        where = f"{element.sourceline}: annotation {name!r}"
        kind = element.get("Type", "Polygon")
        if kind == "Measurement":
            builder.skip(where, "line", "a Measurement (ASAP's ruler) measures a length and outlines no area")
            continue
        if kind not in ANNOTATION_TYPES:
            builder.skip(
                where, f"unsupported type {kind!r}",
                f"unknown Type={kind!r}; expected one of {', '.join(ANNOTATION_TYPES)}",
            )
            continue
        group = element.get("PartOfGroup")
        rows: list[tuple[float, float, float]] = []
        for coordinate in element.iterfind("Coordinates/Coordinate"):
            rows.append((
                _number(path, coordinate, "Order", f"annotation {name!r}"),
                _number(path, coordinate, "X", f"annotation {name!r}"),
                _number(path, coordinate, "Y", f"annotation {name!r}"),
            ))
        orders = [row[0] for row in rows]
        if len(set(orders)) != len(orders):
            raise AnnotationError(
                f"{path}:{where}: duplicate coordinate Order values; number the coordinates 0, 1, 2, ..."
            )
        rows.sort()
        if kind == "Dot" and len(rows) > 1:
            builder.warn(where, "a Dot with several coordinates, read as a PointSet")
            kind = "PointSet"
        vertices = builder.ring(where, [r[1:] for r in rows], kind)
        label = None if group in (None, "", "None") else group
        builder.add(where, name, label, kind, vertices, origin="PartOfGroup")
    return {
        g.get("Name"): (None if g.get("PartOfGroup") in (None, "", "None") else g.get("PartOfGroup"))
        for g in root.iterfind("AnnotationGroups/Group") if g.get("Name")
    }


def _imagescope_label(layer: etree._Element, label_from: _LabelFrom) -> tuple[str, str]:
    """A layer's label and where it came from: its ``Name``; else its first attribute with a
    ``Value`` (or a name other than ImageScope's default ``Description``); else ``layer <Id>``.
    ``label_from="attribute"`` puts the attribute before the name."""
    layer_id = layer.get("Id", "?")
    name = (layer.get("Name") or "").strip()
    attributes = [
        ((a.get("Name") or "").strip(), (a.get("Value") or "").strip())
        for a in layer.iterfind("Attributes/Attribute")
    ]
    attribute = next(
        ((value, f"layer {layer_id} attribute {key!r} value") for key, value in attributes if value),
        next(
            ((key, f"layer {layer_id} attribute name") for key, _ in attributes
             if key and key != _IMAGESCOPE_DEFAULT_ATTRIBUTE),
            None,
        ),
    )
    if name and (label_from == "name" or attribute is None):
        return name, f"layer {layer_id} name"
    if attribute is not None:
        return attribute
    return f"layer {layer_id}", f"layer {layer_id} Id (no name, no attribute value)"


def _imagescope_shape(
    builder: _Builder, region: etree._Element, where: str, points: list[tuple[float, float]]
) -> tuple[str, np.ndarray | None]:
    """A region as drawn, by its ``Type``: 1 rectangle, 2 ellipse (its bounding-box corners),
    3 arrow (a Dot at its head, the first vertex), 4 ruler (a line: skipped); 0 (freehand) and
    others by their vertices (1 -> Dot, 2 -> PointSet, more -> Polygon)."""
    kind = region.get("Type", "0")
    if kind == "1" and len(points) in (2, 4):
        (x0, y0), (x1, y1) = np.min(points, axis=0), np.max(points, axis=0)
        corners = points if len(points) == 4 else [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        return "Rectangle", builder.ring(where, corners, "Rectangle")
    if kind == "2" and len(points) >= 2:
        (x0, y0), (x1, y1) = np.min(points, axis=0), np.max(points, axis=0)
        outline = ellipse((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2)
        return "Polygon", builder.ring(where, outline, "Polygon")
    if kind == "3" and points:
        builder.warn(where, "an arrow (Type 3), read as a Dot at its head (its first vertex)")
        return "Dot", builder.ring(where, points[:1], "Dot")
    if kind == "4":
        builder.skip(where, "line", "a ruler (Type 4) measures a length and outlines no area")
        return "PointSet", None
    if kind == "1":
        builder.warn(where, "a rectangle (Type 1) without 2 or 4 vertices, read as a polygon")
    elif kind not in ("0", "2", "3"):
        builder.warn(where, f"region Type {kind} is not a shape wsizarr knows, read by its vertices")
    shape = "Polygon" if len(points) >= 3 else ("Dot" if len(points) == 1 else "PointSet")
    return shape, builder.ring(where, points, shape)


def _read_imagescope(builder: _Builder, root: etree._Element, label_from: _LabelFrom) -> float | None:
    """Add an ImageScope file's regions; returns its ``MicronsPerPixel`` (None when absent)."""
    try:
        mpp: float | None = float(root.get("MicronsPerPixel", ""))
    except ValueError:
        mpp = None
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        mpp = None
    layers_of: dict[str, list[str]] = {}
    for layer in root.iterfind("Annotation"):
        label, origin = _imagescope_label(layer, label_from)
        positive: list[tuple[str, str, str, np.ndarray]] = []
        negative: list[tuple[str, str, np.ndarray]] = []
        for region in layer.iterfind("Regions/Region"):
            name = f"layer {layer.get('Id', '?')} region {region.get('Id', '?')}"
            where = f"{region.sourceline}: {name}"
            points = [
                (_number(builder.path, v, "X", name), _number(builder.path, v, "Y", name))
                for v in region.iterfind("Vertices/Vertex")
            ]
            kind, vertices = _imagescope_shape(builder, region, where, points)
            if vertices is None:  # skipped
                continue
            if region.get("NegativeROA") != "1":
                positive.append((where, name, kind, vertices))
            elif kind in ("Polygon", "Rectangle"):
                negative.append((where, name, vertices))
            else:
                builder.skip(
                    where, "too few points", f"a negative region needs an area, found {count(len(points), 'vertex')}"
                )
        used: set[int] = set()
        for where, name, kind, vertices in positive:
            inside = [] if len(vertices) < 3 else [
                i for i, (_, _, hole) in enumerate(negative) if points_in_polygon(hole, vertices).all()
            ]
            used.update(inside)
            builder.add(where, name, label, kind, vertices, [negative[i][2] for i in inside], origin=origin)
        for i, (where, name, vertices) in enumerate(negative):
            if i not in used:  # a negative region in no positive one: an area to leave out
                builder.add(where, name, label, "Polygon", vertices, exclusion=True)
        if positive:
            layers_of.setdefault(label, []).append(layer.get("Id", "?"))
    for label, ids in layers_of.items():
        if len(ids) > 1:
            builder.warn("", f"layers {', '.join(ids)} share the label {label!r} (merged)")
    return mpp


def _geojson_features(path: Path, document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and document.get("type") == "FeatureCollection":
        features = document.get("features")
        if isinstance(features, list):
            return features
    if isinstance(document, dict) and document.get("type") == "Feature":
        return [document]
    if isinstance(document, dict) and document.get("type") in _GEOJSON_GEOMETRIES:
        return [{"type": "Feature", "geometry": document}]  # a bare geometry: one unnamed feature
    raise AnnotationError(
        f"{path}: neither QuPath GeoJSON (a FeatureCollection, a Feature, an array of Features or "
        "a geometry) nor DSA annotation JSON (documents with elements); export the annotations again"
    )


def _parse_classification(text: str) -> Any:
    """A classification stored as a string (after a pandas / geopandas round trip): JSON or a
    Python dict literal (``"{'name': 'Tumor'}"``); other text is the class name itself."""
    if not text.lstrip().startswith("{"):
        return text.strip()
    if len(text) <= _MAX_CLASSIFICATION_CHARS:
        for parse in (json.loads, ast.literal_eval):  # literal_eval evaluates literals only
            try:
                return parse(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
    return None


def _geojson_label(properties: Mapping[str, Any]) -> tuple[str | None, str]:
    """The label (``classification.name``, its ``names`` joined by ``: ``, else ``name``) and
    where it came from."""
    classification, origin = properties.get("classification"), "classification"
    if isinstance(classification, str):
        classification, origin = _parse_classification(classification), "classification (a string)"
    if isinstance(classification, str) and classification:
        return classification, origin
    if isinstance(classification, dict):
        if isinstance(classification.get("name"), str) and classification["name"]:
            return classification["name"], origin
        names = classification.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names), origin
    name = properties.get("name")
    return (name, "name") if isinstance(name, str) and name else (None, "")


def _is_detection(feature: Mapping[str, Any], properties: Mapping[str, Any]) -> bool:
    """A QuPath detection, cell or tile: ``objectType`` (new layout) or the feature ``id`` (old)."""
    return (
        properties.get("objectType") in ("detection", "cell", "tile")
        or feature.get("id") in ("PathDetectionObject", "PathCellObject", "PathTileObject")
    )


def _malformed(builder: _Builder, where: str, kind: Any, exc: Exception) -> AnnotationError:
    return AnnotationError(
        f"{builder.at(where)}: malformed {kind} coordinates ({_first_line(exc)}); fix or remove it"
    )


def _read_geojson(builder: _Builder, document: Any, exclude_detections: bool) -> None:
    for index, feature in enumerate(_geojson_features(builder.path, document)):
        where = f"feature {index}"
        if not isinstance(feature, dict):
            builder.skip(where, "no geometry", "it is not a GeoJSON Feature")
            continue
        properties = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        if exclude_detections and _is_detection(feature, properties):
            continue
        name = properties.get("name") if isinstance(properties.get("name"), str) else f"Feature {index}"
        label, origin = _geojson_label(properties)
        geometry = feature.get("geometry")
        if not isinstance(geometry, dict):
            builder.skip(where, "no geometry", "it has no geometry")
            continue
        try:
            _add_geometry(builder, where, name, label, origin, geometry)
        except AnnotationError:
            raise
        except (TypeError, IndexError, ValueError, AttributeError) as exc:
            raise _malformed(builder, where, geometry.get("type"), exc) from None


def _add_geometry(
    builder: _Builder, where: str, name: str, label: str | None, origin: str,
    geometry: Mapping[str, Any], depth: int = 0,
) -> None:
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind == "GeometryCollection" and depth < 4:
        parts = [g for g in geometry.get("geometries") or () if isinstance(g, dict)]
        for k, part in enumerate(parts):
            part_name = name if len(parts) == 1 else f"{name} #{k + 1}"
            _add_geometry(builder, f"{where} part {k}", part_name, label, origin, part, depth + 1)
    elif kind == "Point":
        builder.add(where, name, label, "Dot", builder.ring(where, [coordinates[:2]], "Dot"), origin=origin)
    elif kind == "MultiPoint":
        vertices = builder.ring(where, [c[:2] for c in coordinates], "PointSet")
        builder.add(where, name, label, "PointSet", vertices, origin=origin)
    elif kind in ("Polygon", "MultiPolygon"):
        polygons = [coordinates] if kind == "Polygon" else list(coordinates)
        for k, rings in enumerate(polygons):
            exterior = builder.ring(where, [c[:2] for c in rings[0]], "Polygon")
            holes = [builder.ring(where, [c[:2] for c in ring], "Polygon") for ring in rings[1:]]
            part = name if len(polygons) == 1 else f"{name} #{k + 1}"
            builder.add(where, part, label, "Polygon", exterior, holes, origin=origin)
    elif kind in ("LineString", "MultiLineString"):
        builder.skip(where, "line", f"a {kind} outlines no area")
    else:
        builder.skip(
            where, f"unsupported geometry {kind!r}",
            f"geometry type {kind!r} is not supported; use Polygon, MultiPolygon, Point or MultiPoint",
        )


def _dsa_documents(document: Any) -> list[tuple[str, list[Any]]] | None:
    """``(name, elements)`` of each DSA annotation document (a document with ``annotation``
    or the bare ``annotation`` object, alone or in a list); None when this is not DSA JSON."""
    documents = []
    for item in document if isinstance(document, list) else [document]:
        body = item.get("annotation") if isinstance(item, dict) and "annotation" in item else item
        if not isinstance(body, dict) or not isinstance(body.get("elements"), list):
            return None
        documents.append((body["name"] if isinstance(body.get("name"), str) else "", body["elements"]))
    return documents or None


def _dsa_label(element: Mapping[str, Any], document_name: str) -> tuple[str | None, str]:
    """``label.value``, else ``group``, else the document's name."""
    label = element.get("label")
    if isinstance(label, dict) and isinstance(label.get("value"), str) and label["value"].strip():
        return label["value"].strip(), "label.value"
    if isinstance(element.get("group"), str) and element["group"].strip():
        return element["group"].strip(), "group"
    return (document_name, "document name") if document_name else (None, "")


def _read_dsa(builder: _Builder, document: Any) -> None:
    for d, (document_name, elements) in enumerate(_dsa_documents(document) or ()):
        for e, element in enumerate(elements):
            where = f"document {d} element {e}"
            if not isinstance(element, dict):
                builder.skip(where, "no geometry", "it is not an annotation element")
                continue
            label, origin = _dsa_label(element, document_name)
            try:
                _add_dsa_element(builder, where, label, origin, element)
            except AnnotationError:
                raise
            except (TypeError, IndexError, ValueError, KeyError, AttributeError) as exc:
                raise _malformed(builder, where, element.get("type"), exc) from None


def _add_dsa_element(
    builder: _Builder, where: str, label: str | None, origin: str, element: Mapping[str, Any]
) -> None:
    """Closed polylines (with holes) -> Polygon, open ones (lines) skipped; rectangle (rotated
    about its centre) -> Rectangle; ellipse and circle -> Polygon; point -> Dot."""
    kind = element.get("type")
    if kind == "polyline":
        if not element.get("closed", False):
            builder.skip(where, "line", "an open polyline outlines no area")
            return
        exterior = builder.ring(where, [p[:2] for p in element["points"]], "Polygon")
        holes = [builder.ring(where, [p[:2] for p in hole], "Polygon") for hole in element.get("holes") or ()]
        builder.add(where, where, label, "Polygon", exterior, holes, origin=origin)
        return
    if kind not in ("rectangle", "ellipse", "circle", "point"):
        builder.skip(where, f"unsupported element {kind!r}", f"a DSA {kind!r} element is not a shape to sample")
        return
    centre = (float(element["center"][0]), float(element["center"][1]))
    if kind == "point":
        builder.add(where, where, label, "Dot", builder.ring(where, [centre], "Dot"), origin=origin)
        return
    if kind == "circle":
        radius = float(element["radius"])
        points, shape = ellipse(*centre, radius, radius), "Polygon"
    else:
        half_w, half_h = float(element["width"]) / 2, float(element["height"]) / 2
        points = (
            np.array([(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)])
            if kind == "rectangle" else ellipse(0.0, 0.0, half_w, half_h)
        )
        points = rotate(points, float(element.get("rotation") or 0.0)) + centre
        shape = "Rectangle" if kind == "rectangle" else "Polygon"
    builder.add(where, where, label, shape, builder.ring(where, points, shape), origin=origin)


_FORMAT_NAMES = {
    "asap": "ASAP XML", "imagescope": "Aperio ImageScope XML", "geojson": "QuPath GeoJSON",
    "dsa": "DSA / HistomicsUI JSON",
}


def describe(
    result: AnnotationFile, path: str | Path, slide_dimensions: tuple[int, int] | None = None
) -> dict[str, Any]:
    """What a file holds, as plain JSON-ready data: format, counts per label and type, where
    each label came from, repaired / skipped objects, exclusions, warnings and (given the
    slide's level-0 ``slide_dimensions``) the annotations entirely outside the slide."""
    labels: dict[str | None, Counter[str]] = {}
    for a in result.annotations:
        labels.setdefault(a.label, Counter())[a.type] += 1
    outside = None
    if slide_dimensions is not None:
        width, height = slide_dimensions
        outside = sum(
            1 for a in result.annotations
            if a.bbox[2] < 0 or a.bbox[3] < 0 or a.bbox[0] >= width or a.bbox[1] >= height
        )
    return {
        "file": str(path),
        "format": result.format,
        "annotations": len(result.annotations),
        "labels": [
            {
                "label": label, "count": sum(types.values()), "types": dict(types),
                "source": result.label_sources.get(label, "") if label is not None else "",
            }
            for label, types in sorted(labels.items(), key=lambda item: (item[0] is None, str(item[0])))
        ],
        "repaired": result.repaired,
        "skipped": dict(Counter(s.reason for s in result.skipped)),
        "skipped_at": [f"{s.where} ({s.reason})" for s in result.skipped[:10]],
        "exclusions": len(result.exclusions),
        "outside_slide": outside,
        "warnings": list(result.warnings),
    }


def format_description(description: Mapping[str, Any]) -> str:
    """``describe``'s data as lines of text."""
    d = description
    lines = [
        f"{d['file']}: {_FORMAT_NAMES[d['format']]}, {count(d['annotations'], 'annotation')}, "
        f"{count(sum(1 for entry in d['labels'] if entry['label'] is not None), 'label')}"
    ]
    names = ["(unlabelled)" if entry["label"] is None else entry["label"] for entry in d["labels"]]
    width = max(map(len, names), default=0)
    for name, entry in zip(names, d["labels"]):
        types = ", ".join(f"{kind} {n}" for kind, n in entry["types"].items())
        source = f"  from {entry['source']}" if entry["source"] else ""
        lines.append(f"  {name:<{width}} {entry['count']:>6}  {types}{source}")
    skipped = sum(d["skipped"].values())
    lines.append(
        f"repaired {d['repaired']}, skipped {skipped}"
        + (f" ({', '.join(f'{reason} {n}' for reason, n in d['skipped'].items())})" if skipped else "")
        + f", exclusions {d['exclusions']}"
        + ("" if d["outside_slide"] is None else f", outside the slide {d['outside_slide']}")
    )
    lines += [f"  skipped at {where}" for where in d["skipped_at"]]
    if skipped > len(d["skipped_at"]):
        lines.append(f"  ... and {skipped - len(d['skipped_at'])} more")
    lines += [f"warning: {warning}" for warning in d["warnings"]]
    return "\n".join(lines)


def annotation_note(result: AnnotationFile, file: str) -> str | None:
    """One line on what reading ``file`` skipped or warned about; None when nothing."""
    if not (result.skipped or result.warnings):
        return None
    parts = [count(len(result.annotations), "annotation")]
    if result.skipped:
        parts.append(_skip_counts(result.skipped))
    if result.warnings:
        parts.append(f"{count(len(result.warnings), 'warning')} (first: {result.warnings[0]})")
    return f"{file}: {'; '.join(parts)}; `wsizarr annotations {file}` tells more"


def parse_label_map(text_or_path: str | Path) -> dict[str, str]:
    """Parse ``"old=new,old2=new2"`` or a JSON file ``{"old": "new"}`` into a label map."""
    candidate = Path(text_or_path)
    try:
        is_file = candidate.suffix.lower() == ".json" or candidate.is_file()
    except OSError:  # e.g. a map too long to be a file name
        is_file = False
    if is_file:
        try:
            mapping = json.loads(candidate.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            raise AnnotationError(
                f"{candidate}: cannot read the label map ({_first_line(exc)}); give a JSON object"
            ) from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
            raise AnnotationError(
                f'{candidate}: a label map is a JSON object of label -> new label, e.g. {{"glomerulus": "Normal"}}'
            )
        return {str(k): v.strip() for k, v in mapping.items()}
    mapping = {}
    for item in str(text_or_path).split(","):
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not old or not new or old in mapping:
            problem = f"{old!r} is mapped twice" if old in mapping else f"{item!r} is not old=new"
            raise AnnotationError(
                f"label map {text_or_path!r}: {problem}; write e.g. glomerulus=Normal,sclerotic=Abnormal"
            )
        mapping[old] = new
    return mapping


def apply_label_map(
    annotations: Iterable[Annotation], mapping: Mapping[str, str], *, keep_only: bool = False,
    strict: bool = False, order: Sequence[str] | None = None,
) -> list[Annotation]:
    """Rename (and merge) labels by ``mapping``; ids stay those of the file.

    ``keep_only`` drops annotations whose label the map does not name. ``strict`` refuses a map
    that names a label no annotation has (a typo); ``order`` (the fixed label list that gives
    stable codes across slides) refuses any resulting label that is not in it.
    """
    annotations = list(annotations)
    if strict:
        present = {a.label for a in annotations}
        unknown = sorted(set(mapping) - present)
        if unknown:
            raise AnnotationError(
                f"label map: {', '.join(map(repr, unknown))} is no annotation's label (labels: "
                f"{', '.join(sorted(str(p) for p in present))}); fix the spelling in the map"
            )
    out = []
    for annotation in annotations:
        if annotation.label in mapping:
            out.append(replace(annotation, label=mapping[annotation.label]))
        elif not keep_only:
            out.append(annotation)
    if order is not None:
        missing = sorted({a.label for a in out if a.label is not None} - set(order))
        if missing:
            raise AnnotationError(
                f"label order {','.join(order)}: labels {', '.join(map(repr, missing))} are not in it; "
                "add them to the order or map them to a listed label"
            )
    return out
