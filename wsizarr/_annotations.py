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
from lxml import etree

from ._errors import AnnotationError
from ._geometry import points_in_polygon

__all__ = [
    "ANNOTATION_TYPES", "Annotation", "AnnotationFile", "apply_label_map", "parse_label_map",
    "read_annotation_file", "read_annotations",
]

ANNOTATION_TYPES = ("Polygon", "Rectangle", "Spline", "Dot", "PointSet")
_MIN_VERTICES = {"Polygon": 3, "Spline": 3, "Rectangle": 4, "Dot": 1, "PointSet": 1}
_MAX_BYTES = 512 * 1024 * 1024


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
    any), the ASAP group hierarchy (group -> parent group, None at the top) and the number of
    self-intersecting polygons that were repaired."""

    annotations: tuple[Annotation, ...]
    format: Literal["asap", "imagescope", "geojson"]
    mpp: float | None = None
    groups: Mapping[str, str | None] = field(default_factory=dict)
    repaired: int = 0


def read_annotations(
    path: str | Path, *, label_from: str = "name", exclude_detections: bool = False
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
    path: str | Path, *, label_from: str = "name", exclude_detections: bool = False
) -> AnnotationFile:
    """Like ``read_annotations``, with the file's format, mpp, groups and repair count."""
    if label_from not in ("name", "attribute"):
        raise AnnotationError(f"label_from must be 'name' or 'attribute', got {label_from!r}")
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
        raise AnnotationError(f"{path}: {size} bytes is too large for an annotation file")
    return path.read_bytes()


def _parse_xml(path: Path, data: bytes) -> etree._Element:
    # Entity declarations are refused outright: no expansion (billion laughs), no external
    # entities (XXE), and the parser never touches the network.
    if b"<!ENTITY" in data:
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


def _ring(path: Path, where: str, points: Sequence[tuple[float, float]], kind: str) -> np.ndarray:
    """A validated, read-only ``(K, 2)`` ring; the closing duplicate of a polygon is dropped."""
    vertices = np.array(points, dtype=np.float64).reshape(-1, 2)
    if kind in ("Polygon", "Spline") and len(vertices) > 3 and np.array_equal(vertices[0], vertices[-1]):
        vertices = vertices[:-1]
    if not np.isfinite(vertices).all():
        raise AnnotationError(f"{path}: {where}: a coordinate is not a finite number; fix it")
    if len(vertices) < _MIN_VERTICES[kind]:
        raise AnnotationError(
            f"{path}: {where}: a {kind} needs at least {_MIN_VERTICES[kind]} coordinates, "
            f"found {len(vertices)}; fix or remove it"
        )
    vertices.setflags(write=False)
    return vertices


class _Builder:
    """Collects annotations with consecutive ids and repairs self-intersecting polygons."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.annotations: list[Annotation] = []
        self.repaired = 0

    def add(
        self, name: str, label: str | None, kind: str, vertices: np.ndarray,
        holes: Sequence[np.ndarray] = (),
    ) -> None:
        parts = [(vertices, tuple(holes))]
        if kind in ("Polygon", "Spline", "Rectangle") and _self_intersects(vertices, holes):
            parts = _repair(self.path, name, vertices, holes)
            self.repaired += 1
        for k, (exterior, part_holes) in enumerate(parts):
            part_name = name if len(parts) == 1 else f"{name} #{k + 1}"
            self.annotations.append(
                Annotation(len(self.annotations), part_name, label, kind, exterior, part_holes)
            )


def _self_intersects(vertices: np.ndarray, holes: Sequence[np.ndarray]) -> bool:
    """Whether any two non-adjacent edges of the rings cross (O(n^2), vectorised)."""
    for ring in (vertices, *holes):
        n = len(ring)
        if n < 4:
            continue
        a, b = ring, np.roll(ring, -1, axis=0)
        d = b - a
        for i in range(n - 2):
            j = np.arange(i + 2, n if i else n - 1)
            if j.size == 0:
                continue
            p, r, q, sv = a[i], d[i], a[j], d[j]
            denominator = r[0] * sv[:, 1] - r[1] * sv[:, 0]
            qp = q - p
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (qp[:, 0] * sv[:, 1] - qp[:, 1] * sv[:, 0]) / denominator
                u = (qp[:, 0] * r[1] - qp[:, 1] * r[0]) / denominator
            if np.any((denominator != 0) & (t > 0) & (t < 1) & (u > 0) & (u < 1)):
                return True
    return False


def _repair(
    path: Path, name: str, vertices: np.ndarray, holes: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    """Valid polygons covering a self-intersecting one, as shapely's ``make_valid`` makes them."""
    from shapely.geometry import Polygon
    from shapely.validation import make_valid

    def polygons(geometry: Any) -> Iterable[Any]:  # make_valid may nest collections
        if geometry.geom_type == "Polygon":
            if geometry.area > 0:
                yield geometry
        else:
            for part in getattr(geometry, "geoms", ()):
                yield from polygons(part)

    parts = []
    for polygon in polygons(make_valid(Polygon(vertices, holes))):
        exterior = np.asarray(polygon.exterior.coords, dtype=np.float64)[:-1]
        exterior.setflags(write=False)
        interiors = []
        for interior in polygon.interiors:
            ring = np.asarray(interior.coords, dtype=np.float64)[:-1]
            ring.setflags(write=False)
            interiors.append(ring)
        parts.append((exterior, tuple(interiors)))
    if not parts:
        raise AnnotationError(f"{path}: annotation {name!r} has no area once repaired; remove it")
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
        vertices = _ring(Path(f"{path}:{element.sourceline}"), f"annotation {name!r}", [r[1:] for r in rows], kind)
        builder.add(name, None if group in (None, "", "None") else group, kind, vertices)
    groups = {
        g.get("Name"): (None if g.get("PartOfGroup") in (None, "", "None") else g.get("PartOfGroup"))
        for g in root.iterfind("AnnotationGroups/Group") if g.get("Name")
    }
    return AnnotationFile(tuple(builder.annotations), "asap", None, groups, builder.repaired)


def _imagescope_label(layer: etree._Element, label_from: str) -> str | None:
    attribute = next((a.get("Name") for a in layer.iterfind("Attributes/Attribute") if a.get("Name")), None)
    if label_from == "attribute":
        return attribute
    return layer.get("Name") or attribute


def _read_imagescope(path: Path, root: etree._Element, label_from: str) -> AnnotationFile:
    builder = _Builder(path)
    mpp_text = root.get("MicronsPerPixel")
    try:
        mpp = float(mpp_text) if mpp_text else None
    except ValueError:
        mpp = None
    for layer in root.iterfind("Annotation"):
        label = _imagescope_label(layer, label_from)
        positive: list[tuple[str, np.ndarray]] = []
        negative: list[np.ndarray] = []
        for region in layer.iterfind("Regions/Region"):
            name = f"layer {layer.get('Id', '?')} region {region.get('Id', '?')}"
            points = [
                (_number(path, v, "X", name), _number(path, v, "Y", name))
                for v in region.iterfind("Vertices/Vertex")
            ]
            kind = "Polygon" if len(points) >= 3 else ("Dot" if len(points) == 1 else "PointSet")
            vertices = _ring(Path(f"{path}:{region.sourceline}"), name, points, kind)
            if region.get("NegativeROA") == "1":
                negative.append(vertices)
            else:
                positive.append((name, vertices))
        for name, vertices in positive:
            if len(vertices) < 3:
                builder.add(name, label, "Dot" if len(vertices) == 1 else "PointSet", vertices)
                continue
            holes = [h for h in negative if points_in_polygon(h[:1], vertices).all()]
            builder.add(name, label, "Polygon", vertices, holes)
    return AnnotationFile(tuple(builder.annotations), "imagescope", mpp, {}, builder.repaired)


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


def _read_geojson(path: Path, data: bytes, exclude_detections: bool) -> AnnotationFile:
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", "?")
        column = getattr(exc, "colno", "?")
        raise AnnotationError(
            f"{path}:{line}:{column}: not valid JSON ({getattr(exc, 'msg', exc)}); re-export the annotations"
        ) from None
    builder = _Builder(path)
    for index, feature in enumerate(_geojson_features(path, document)):
        where = f"feature {index}"
        if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
            raise AnnotationError(f"{path}: {where} has no geometry; fix or remove it")
        properties = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        if exclude_detections and properties.get("objectType") in ("detection", "cell", "tile"):
            continue
        name = properties.get("name") if isinstance(properties.get("name"), str) else f"Feature {index}"
        label = _geojson_label(properties)
        geometry = feature["geometry"]
        kind, coordinates = geometry.get("type"), geometry.get("coordinates")
        try:
            if kind == "Polygon":
                polygons = [coordinates]
            elif kind == "MultiPolygon":
                polygons = list(coordinates)
            elif kind == "Point":
                builder.add(name, label, "Dot", _ring(path, where, [coordinates[:2]], "Dot"))
                continue
            elif kind == "MultiPoint":
                builder.add(name, label, "PointSet", _ring(path, where, [c[:2] for c in coordinates], "PointSet"))
                continue
            else:
                raise AnnotationError(
                    f"{path}: {where}: geometry type {kind!r} is not supported; use Polygon, "
                    "MultiPolygon, Point or MultiPoint"
                )
            for k, rings in enumerate(polygons):
                exterior = _ring(path, where, [c[:2] for c in rings[0]], "Polygon")
                holes = [_ring(path, where, [c[:2] for c in ring], "Polygon") for ring in rings[1:]]
                part = name if len(polygons) == 1 else f"{name} #{k + 1}"
                builder.add(part, label, "Polygon", exterior, holes)
        except (TypeError, IndexError, ValueError) as exc:
            if isinstance(exc, AnnotationError):
                raise
            raise AnnotationError(
                f"{path}: {where}: malformed {kind} coordinates ({exc}); fix or remove the feature"
            ) from None
    return AnnotationFile(tuple(builder.annotations), "geojson", None, {}, builder.repaired)


def parse_label_map(text_or_path: str | Path) -> dict[str, str]:
    """Parse ``"old=new,old2=new2"`` or a JSON file ``{"old": "new"}`` into a label map."""
    candidate = Path(text_or_path)
    if candidate.suffix.lower() == ".json" or candidate.is_file():
        try:
            mapping = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise AnnotationError(f"{candidate}: cannot read the label map ({exc}); give a JSON object") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise AnnotationError(f"{candidate}: a label map is a JSON object of label -> new label")
        return {str(k): v for k, v in mapping.items()}
    mapping = {}
    for item in str(text_or_path).split(","):
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise AnnotationError(
                f"label map {text_or_path!r}: {item!r} is not old=new; write e.g. glomerulus=Normal,sclerotic=Abnormal"
            )
        mapping[old.strip()] = new.strip()
    return mapping


def apply_label_map(
    annotations: Iterable[Annotation], mapping: Mapping[str, str], *, keep_only: bool = False
) -> list[Annotation]:
    """Rename (and merge) labels by ``mapping``; ``keep_only`` drops annotations whose label the
    map does not name. Ids stay those of the file."""
    out = []
    for annotation in annotations:
        if annotation.label in mapping:
            out.append(replace(annotation, label=mapping[annotation.label]))
        elif not keep_only:
            out.append(annotation)
    return out
