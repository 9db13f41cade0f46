"""Annotation files -> ``Annotation`` records (level-0 pixel coordinates)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lxml import etree

from ._errors import AnnotationError

__all__ = ["ANNOTATION_TYPES", "Annotation", "read_annotations"]

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


def read_annotations(path: str | Path) -> list[Annotation]:
    """Read the annotations of one file (ASAP XML), in file order.

    Coordinates are level-0 pixels. Raises ``AnnotationError`` with the file, the line and the fix
    when the file is missing, is not well-formed XML, declares entities, or holds invalid data.
    """
    path = Path(path)
    data = _read_bytes(path)
    root = _parse_xml(path, data)
    if root.tag == "ASAP_Annotations":
        return _read_asap(path, root)
    raise AnnotationError(
        f"{path}: unknown annotation format (XML root <{root.tag}>); "
        "expected an ASAP XML file whose root is <ASAP_Annotations>"
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


def _read_asap(path: Path, root: etree._Element) -> list[Annotation]:
    annotations: list[Annotation] = []
    for index, element in enumerate(root.iterfind("Annotations/Annotation")):
        name = element.get("Name") or f"Annotation {index}"
        where = f"annotation {name!r}"
        kind = element.get("Type", "Polygon")
        if kind not in ANNOTATION_TYPES:
            raise AnnotationError(
                f"{path}:{element.sourceline}: {where}: unknown Type={kind!r}; "
                f"expected one of {', '.join(ANNOTATION_TYPES)}"
            )
        group = element.get("PartOfGroup")
        label = None if group in (None, "", "None") else group
        rows: list[tuple[float, float, float]] = []
        for coordinate in element.iterfind("Coordinates/Coordinate"):
            order = _number(path, coordinate, "Order", where)
            rows.append((
                order,
                _number(path, coordinate, "X", where),
                _number(path, coordinate, "Y", where),
            ))
        orders = [row[0] for row in rows]
        if len(set(orders)) != len(orders):
            raise AnnotationError(
                f"{path}:{element.sourceline}: {where}: duplicate coordinate Order values; "
                "number the coordinates 0, 1, 2, ..."
            )
        if len(rows) < _MIN_VERTICES[kind]:
            raise AnnotationError(
                f"{path}:{element.sourceline}: {where}: a {kind} needs at least "
                f"{_MIN_VERTICES[kind]} coordinates, found {len(rows)}; fix or remove it"
            )
        rows.sort()
        vertices = np.array([row[1:] for row in rows], dtype=np.float64)
        vertices.setflags(write=False)
        annotations.append(Annotation(index, name, label, kind, vertices))
    return annotations
