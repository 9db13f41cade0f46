"""DSA / HistomicsUI annotation JSON: a document, or a list of documents, with ``elements``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import AnnotationError
from ._geometry import ellipse, rotate
from ._records import Builder, malformed

__all__ = ["dsa_documents", "read_dsa"]

def dsa_documents(document: Any) -> list[tuple[str, list[Any]]] | None:
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


def read_dsa(builder: Builder, document: Any) -> None:
    for d, (document_name, elements) in enumerate(dsa_documents(document) or ()):
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
                raise malformed(builder, where, element.get("type"), exc) from None


def _add_dsa_element(
    builder: Builder, where: str, label: str | None, origin: str, element: Mapping[str, Any]
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
