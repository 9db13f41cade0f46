"""QuPath GeoJSON: a FeatureCollection, a Feature, an array of them or a bare geometry."""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import AnnotationError
from ._records import Builder, malformed

__all__ = ["read_geojson"]

_MAX_CLASSIFICATION_CHARS = 10_000  # a classification string longer than this is not parsed


_GEOJSON_GEOMETRIES = (
    "Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection",
)


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


def read_geojson(builder: Builder, document: Any, exclude_detections: bool) -> None:
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
            raise malformed(builder, where, geometry.get("type"), exc) from None


def _add_geometry(
    builder: Builder, where: str, name: str, label: str | None, origin: str,
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
