"""Annotation files -> ``Annotation`` records (level-0 pixel coordinates).

Formats are recognised from the content: ASAP XML (``<ASAP_Annotations>``), Aperio ImageScope
XML (``<Annotations>``) and QuPath GeoJSON (a FeatureCollection, a Feature or an array of them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from lxml import etree

from ._errors import AnnotationError, ParameterError
from ._geometry import points_in_polygon

__all__ = [
    "ANNOTATION_TYPES", "Annotation", "AnnotationFile", "apply_label_map", "parse_label_map",
    "read_annotation_file", "read_annotations",
]

ANNOTATION_TYPES = ("Polygon", "Rectangle", "Spline", "Dot", "PointSet")
_MIN_VERTICES = {"Polygon": 3, "Spline": 3, "Rectangle": 4, "Dot": 1, "PointSet": 1}
_MAX_BYTES = 512 * 1024 * 1024
_Format = Literal["asap", "imagescope", "geojson"]
_LabelFrom = Literal["name", "attribute"]
_XML_ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")  # ASCII-compatible + wide


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
class AnnotationFile:
    """What a file holds: its annotations, its format, the ImageScope ``MicronsPerPixel`` (if
    any), the ASAP group hierarchy (group -> parent group, None at the top), the number of
    polygons that were repaired, and ImageScope negative regions that lie in no positive region
    (``exclusions``: areas to leave out)."""

    annotations: tuple[Annotation, ...]
    format: _Format
    mpp: float | None = None
    groups: Mapping[str, str | None] = field(default_factory=dict)
    repaired: int = 0
    exclusions: tuple[Annotation, ...] = ()

    def group_chain(self, label: str) -> tuple[str, ...]:
        """``label`` and its ancestor groups, innermost first (``("a", "parent", "root")``)."""
        chain = [label]
        while (parent := self.groups.get(chain[-1])) is not None and parent not in chain:
            chain.append(parent)
        return tuple(chain)


def read_annotations(
    path: str | Path, *, label_from: _LabelFrom = "name", exclude_detections: bool = False
) -> list[Annotation]:
    """Read the annotations of one file (ASAP XML, Aperio ImageScope XML or QuPath GeoJSON).

    Coordinates are level-0 pixels. ``label_from`` picks an ImageScope layer's label from its
    ``name`` (falling back to its first attribute) or its ``attribute``; ``exclude_detections``
    leaves out QuPath detection objects. Raises ``AnnotationError`` with the file, the line or
    annotation and the fix when the file is missing, malformed, hostile or holds invalid data.
    """
    return list(
        read_annotation_file(path, label_from=label_from, exclude_detections=exclude_detections).annotations
    )


def read_annotation_file(
    path: str | Path, *, label_from: _LabelFrom = "name", exclude_detections: bool = False
) -> AnnotationFile:
    """Like ``read_annotations``, with the file's format, mpp, groups, repair count and exclusions."""
    if label_from not in ("name", "attribute"):
        raise ParameterError(f"label_from must be 'name' or 'attribute', got {label_from!r}; pass one of them")
    path = Path(path)
    data = _read_bytes(path)
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head in (b"{", b"["):
        return _read_geojson(path, data, exclude_detections)
    root = _parse_xml(path, data)
    if root.tag == "ASAP_Annotations":
        return _read_asap(path, root)
    if root.tag == "Annotations":
        return _read_imagescope(path, root, label_from)
    raise AnnotationError(
        f"{path}: unknown annotation format (XML root <{root.tag}>); expected ASAP XML "
        "(<ASAP_Annotations>), Aperio ImageScope XML (<Annotations>) or QuPath GeoJSON"
    )


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


def _ring(where: str, points: Sequence[tuple[float, float]], kind: str) -> np.ndarray:
    """A validated, read-only ``(K, 2)`` ring; the closing duplicate of a polygon is dropped.

    ``where`` starts the error message: the file, and the line or annotation."""
    vertices = np.array(points, dtype=np.float64).reshape(-1, 2)
    if kind in ("Polygon", "Spline") and len(vertices) > 3 and np.array_equal(vertices[0], vertices[-1]):
        vertices = vertices[:-1]
    if not np.isfinite(vertices).all():
        raise AnnotationError(f"{where}: a coordinate is not a finite number; fix it")
    if len(vertices) < _MIN_VERTICES[kind]:
        raise AnnotationError(
            f"{where}: a {kind} needs at least {_MIN_VERTICES[kind]} coordinates, "
            f"found {len(vertices)}; fix or remove it"
        )
    return _read_only(vertices)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


class _Builder:
    """Collects annotations (and exclusions) with consecutive ids, repairing invalid polygons."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.annotations: list[Annotation] = []
        self.exclusions: list[Annotation] = []
        self.repaired = 0

    def add(
        self, name: str, label: str | None, kind: str, vertices: np.ndarray,
        holes: Sequence[np.ndarray] = (), *, exclusion: bool = False,
    ) -> None:
        parts = [(vertices, tuple(holes))]
        if kind in ("Polygon", "Spline", "Rectangle"):
            polygon = shapely.Polygon(vertices, holes)
            if not polygon.is_valid:  # what make_valid gives back is a plain polygon
                parts, kind = _repair(f"{self.path}: annotation {name!r}", polygon), "Polygon"
                self.repaired += 1
        into = self.exclusions if exclusion else self.annotations
        for k, (exterior, part_holes) in enumerate(parts):
            part_name = name if len(parts) == 1 else f"{name} #{k + 1}"
            into.append(Annotation(len(into), part_name, label, kind, exterior, part_holes))

    def result(
        self, format: _Format, mpp: float | None = None, groups: Mapping[str, str | None] | None = None
    ) -> AnnotationFile:
        return AnnotationFile(
            tuple(self.annotations), format, mpp, groups or {}, self.repaired, tuple(self.exclusions)
        )


def _repair(where: str, polygon: shapely.Polygon) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    """The polygons of shapely's ``make_valid`` (a bow-tie becomes two triangles)."""

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
    parts = [
        (ring(p.exterior), tuple(ring(i) for i in p.interiors if shapely.Polygon(i).area > sliver))
        for p in polygons(valid) if p.area > sliver
    ]
    if not parts:
        raise AnnotationError(f"{where} has no area once repaired (its points are in a line); remove it")
    return parts


def _read_asap(path: Path, root: etree._Element) -> AnnotationFile:
    builder = _Builder(path)
    for index, element in enumerate(root.iterfind("Annotations/Annotation")):
        name = element.get("Name") or f"Annotation {index}"
        where = f"{element.sourceline}: annotation {name!r}"
        kind = element.get("Type", "Polygon")
        if kind not in ANNOTATION_TYPES:
            raise AnnotationError(
                f"{path}:{where}: unknown Type={kind!r}; expected one of {', '.join(ANNOTATION_TYPES)}"
            )
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
        vertices = _ring(f"{path}:{where}", [r[1:] for r in rows], kind)
        builder.add(name, None if group in (None, "", "None") else group, kind, vertices)
    groups = {
        g.get("Name"): (None if g.get("PartOfGroup") in (None, "", "None") else g.get("PartOfGroup"))
        for g in root.iterfind("AnnotationGroups/Group") if g.get("Name")
    }
    return builder.result("asap", groups=groups)


def _imagescope_label(layer: etree._Element, label_from: _LabelFrom) -> str | None:
    attribute = next((a.get("Name") for a in layer.iterfind("Attributes/Attribute") if a.get("Name")), None)
    if label_from == "attribute":
        return attribute
    return layer.get("Name") or attribute


def _read_imagescope(path: Path, root: etree._Element, label_from: _LabelFrom) -> AnnotationFile:
    builder = _Builder(path)
    try:
        mpp: float | None = float(root.get("MicronsPerPixel", ""))
    except ValueError:
        mpp = None
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        mpp = None
    for layer in root.iterfind("Annotation"):
        label = _imagescope_label(layer, label_from)
        positive: list[tuple[str, np.ndarray]] = []
        negative: list[tuple[str, np.ndarray]] = []
        for region in layer.iterfind("Regions/Region"):
            name = f"layer {layer.get('Id', '?')} region {region.get('Id', '?')}"
            points = [
                (_number(path, v, "X", name), _number(path, v, "Y", name))
                for v in region.iterfind("Vertices/Vertex")
            ]
            is_negative = region.get("NegativeROA") == "1"
            kind = "Polygon" if is_negative or len(points) >= 3 else ("Dot" if len(points) == 1 else "PointSet")
            vertices = _ring(f"{path}:{region.sourceline}: {name}", points, kind)
            (negative if is_negative else positive).append((name, vertices))
        used: set[int] = set()
        for name, vertices in positive:
            if len(vertices) < 3:
                builder.add(name, label, "Dot" if len(vertices) == 1 else "PointSet", vertices)
                continue
            inside = [i for i, (_, hole) in enumerate(negative) if points_in_polygon(hole, vertices).all()]
            used.update(inside)
            builder.add(name, label, "Polygon", vertices, [negative[i][1] for i in inside])
        for i, (name, vertices) in enumerate(negative):
            if i not in used:  # a negative region in no positive one: an area to leave out
                builder.add(name, label, "Polygon", vertices, exclusion=True)
    return builder.result("imagescope", mpp)


def _geojson_features(path: Path, document: Any) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and document.get("type") == "FeatureCollection":
        features = document.get("features")
        if isinstance(features, list):
            return features
    if isinstance(document, dict) and document.get("type") == "Feature":
        return [document]
    raise AnnotationError(
        f"{path}: not QuPath GeoJSON (expected a FeatureCollection, a Feature or an array of "
        "Features); export the annotations as GeoJSON from QuPath"
    )


def _geojson_label(properties: Mapping[str, Any]) -> str | None:
    classification = properties.get("classification")
    if isinstance(classification, dict):
        if isinstance(classification.get("name"), str) and classification["name"]:
            return classification["name"]
        names = classification.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)
    name = properties.get("name")
    return name if isinstance(name, str) and name else None


def _is_detection(feature: Mapping[str, Any], properties: Mapping[str, Any]) -> bool:
    """A QuPath detection, cell or tile: ``objectType`` (new layout) or the feature ``id`` (old)."""
    return (
        properties.get("objectType") in ("detection", "cell", "tile")
        or feature.get("id") in ("PathDetectionObject", "PathCellObject", "PathTileObject")
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _read_geojson(path: Path, data: bytes, exclude_detections: bool) -> AnnotationFile:
    try:
        document = json.loads(data)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); re-export the annotations"
        ) from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, a huge integer, nested too deeply
        reason = "nested too deeply" if isinstance(exc, RecursionError) else _first_line(exc)
        raise AnnotationError(f"{path}: not valid JSON ({reason}); re-export the annotations") from None
    builder = _Builder(path)
    for index, feature in enumerate(_geojson_features(path, document)):
        where = f"feature {index}"
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            raise AnnotationError(f"{path}: {where} has no geometry; fix or remove it")
        properties = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        if exclude_detections and _is_detection(feature, properties):
            continue
        name = properties.get("name") if isinstance(properties.get("name"), str) else f"Feature {index}"
        label = _geojson_label(properties)
        geometry = feature["geometry"]
        kind, coordinates = geometry.get("type"), geometry.get("coordinates")
        at = f"{path}: {where}"
        try:
            if kind == "Polygon":
                polygons = [coordinates]
            elif kind == "MultiPolygon":
                polygons = list(coordinates)
            elif kind == "Point":
                builder.add(name, label, "Dot", _ring(at, [coordinates[:2]], "Dot"))
                continue
            elif kind == "MultiPoint":
                builder.add(name, label, "PointSet", _ring(at, [c[:2] for c in coordinates], "PointSet"))
                continue
            else:
                raise AnnotationError(
                    f"{path}: {where}: geometry type {kind!r} is not supported; use Polygon, "
                    "MultiPolygon, Point or MultiPoint"
                )
            for k, rings in enumerate(polygons):
                exterior = _ring(at, [c[:2] for c in rings[0]], "Polygon")
                holes = [_ring(at, [c[:2] for c in ring], "Polygon") for ring in rings[1:]]
                part = name if len(polygons) == 1 else f"{name} #{k + 1}"
                builder.add(part, label, "Polygon", exterior, holes)
        except AnnotationError:
            raise
        except (TypeError, IndexError, ValueError) as exc:
            raise AnnotationError(
                f"{at}: malformed {kind} coordinates ({_first_line(exc)}); fix or remove the feature"
            ) from None
    return builder.result("geojson")


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
