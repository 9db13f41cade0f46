"""ASAP XML (``<ASAP_Annotations>``): annotations with their groups as labels."""

from __future__ import annotations

from lxml import etree

from .._errors import AnnotationError
from ._records import ANNOTATION_TYPES, Builder, xml_number

__all__ = ["read_asap"]

def read_asap(builder: Builder, root: etree._Element) -> dict[str, str | None]:
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
                xml_number(path, coordinate, "Order", f"annotation {name!r}"),
                xml_number(path, coordinate, "X", f"annotation {name!r}"),
                xml_number(path, coordinate, "Y", f"annotation {name!r}"),
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
