"""The records an annotation file becomes (``Annotation``, ``Skipped``, ``AnnotationFile``) and
the ``Builder`` every format reader fills: shapes checked, repaired or skipped, labels kept."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from lxml import etree

from .._errors import AnnotationError, option

__all__ = ["ANNOTATION_TYPES", "Annotation", "AnnotationFile", "Builder", "Format", "LabelFrom", "Skipped", "first_line", "malformed", "read_only", "skip_counts", "xml_number"]

ANNOTATION_TYPES = ("Polygon", "Rectangle", "Spline", "Dot", "PointSet")


_MIN_VERTICES = {"Polygon": 3, "Spline": 3, "Rectangle": 4, "Dot": 1, "PointSet": 1}


Format = Literal["asap", "imagescope", "geojson", "dsa"]


LabelFrom = Literal["name", "attribute"]


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
    format: Format
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


def xml_number(path: Path, element: etree._Element, attribute: str, where: str) -> float:
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


def read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


class Builder:
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
        return read_only(vertices)

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
        self, format: Format, mpp: float | None = None, groups: Mapping[str, str | None] | None = None
    ) -> AnnotationFile:
        """The file as read; refused when objects were skipped and nothing usable is left."""
        if not self.annotations and not self.exclusions and self.skipped:
            first = self.skipped[0]
            raise AnnotationError(
                f"{self.at(first.where)}: {first.detail}; nothing usable is left in the file "
                f"({skip_counts(self.skipped)}); fix the annotations"
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


def skip_counts(skipped: Sequence[Skipped]) -> str:
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
        return read_only(np.asarray(coordinates.coords, dtype=np.float64)[:-1])

    with np.errstate(all="ignore"):  # GEOS may divide by zero on near-degenerate input
        valid = shapely.make_valid(polygon)
    sliver = 1e-9 * valid.area  # floating-point crumbs of the repair, not structures
    return [
        (ring(p.exterior), tuple(ring(i) for i in p.interiors if shapely.Polygon(i).area > sliver))
        for p in polygons(valid) if p.area > sliver
    ]


def malformed(builder: Builder, where: str, kind: Any, exc: Exception) -> AnnotationError:
    return AnnotationError(
        f"{builder.at(where)}: malformed {kind} coordinates ({first_line(exc)}); fix or remove it"
    )
