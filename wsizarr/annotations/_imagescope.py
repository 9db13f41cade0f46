"""Aperio ImageScope XML (``<Annotations>``): layers as labels, regions as shapes."""

from __future__ import annotations

import math

import numpy as np
from lxml import etree

from .._text import count
from ._geometry import ellipse, points_in_polygon
from ._records import Builder, LabelFrom, xml_number

__all__ = ["read_imagescope"]

_IMAGESCOPE_DEFAULT_ATTRIBUTE = "Description"  # what ImageScope puts in every new layer


def _imagescope_label(layer: etree._Element, label_from: LabelFrom) -> tuple[str, str]:
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
    builder: Builder, region: etree._Element, where: str, points: list[tuple[float, float]]
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


def read_imagescope(builder: Builder, root: etree._Element, label_from: LabelFrom) -> float | None:
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
                (xml_number(builder.path, v, "X", name), xml_number(builder.path, v, "Y", name))
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
