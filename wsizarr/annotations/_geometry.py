"""Polygon geometry on plain numpy arrays: area, centroid, point tests and rasterising."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely
from PIL import Image, ImageDraw

__all__ = [
    "centroid", "ellipse", "has_area", "point_inside", "points_in_polygon", "rasterize", "rotate",
    "window_sums",
]

# An inscribed 64-gon has n/(2*pi)*sin(2*pi/n) = 99.84 % of the ellipse's area (pi*a*b).
_ELLIPSE_VERTICES = 64


def has_area(vertices: np.ndarray) -> bool:
    """True for a ring with at least 3 vertices and a non-zero area."""
    return len(vertices) >= 3 and abs(_signed_area(vertices)) > 0


def _signed_area(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def centroid(vertices: np.ndarray) -> tuple[float, float]:
    """Area centroid of a polygon ring; the mean of the points for dots and degenerate rings."""
    if not has_area(vertices):
        x, y = vertices.mean(axis=0)
        return float(x), float(y)
    x, y = vertices[:, 0], vertices[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2
    return float(((x + x1) * cross).sum() / (6 * area)), float(((y + y1) * cross).sum() / (6 * area))


def ellipse(cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """A ``(64, 2)`` polygon inscribed in the axis-aligned ellipse of centre ``(cx, cy)`` and
    semi-axes ``a`` (x) and ``b`` (y): its area is within 0.2 % of ``pi * a * b``."""
    angles = np.linspace(0, 2 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
    return np.column_stack([cx + a * np.cos(angles), cy + b * np.sin(angles)])


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """``(K, 2)`` points rotated by ``angle`` radians about the origin (image axes, y down:
    ``x' = x cos - y sin``, ``y' = x sin + y cos``, as the Digital Slide Archive does)."""
    cos, sin = np.cos(angle), np.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return np.column_stack([x * cos - y * sin, x * sin + y * cos])


def _in_ring(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < x_at)).sum(axis=1) % 2 == 1


def points_in_polygon(
    points: np.ndarray, exterior: np.ndarray, holes: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """Boolean mask of the ``(K, 2)`` points inside ``exterior`` and outside every hole."""
    inside = _in_ring(points, exterior)
    for hole in holes:
        inside &= ~_in_ring(points, hole)
    return inside


def point_inside(exterior: np.ndarray, holes: Sequence[np.ndarray] = ()) -> tuple[float, float] | None:
    """A point inside ``exterior`` and outside every hole (holes may cross the exterior, like
    exclusions that overlap an annotation); None when the holes cover it all."""
    with np.errstate(all="ignore"):  # GEOS may divide by zero on near-degenerate input
        area = shapely.make_valid(shapely.Polygon(exterior))
        for hole in holes:
            area = area.difference(shapely.make_valid(shapely.Polygon(hole)))
    if area.is_empty or area.area == 0:
        return None
    point = area.point_on_surface()
    return float(point.x), float(point.y)


def rasterize(
    shapes: Sequence[tuple[np.ndarray, Sequence[np.ndarray], int]],
    size: tuple[int, int],
    origin: tuple[float, float],
    scale: float,
) -> np.ndarray:
    """A ``(height, width)`` uint8 image of polygons filled with their values, holes cleared.

    ``shapes`` are ``(exterior, holes, value)`` in source coordinates; a source point ``p``
    lands at pixel ``(p - origin) * scale``. Later shapes paint over earlier ones.
    """
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    ox, oy = origin
    for exterior, holes, value in shapes:
        if len(exterior) < 3:
            continue
        draw.polygon([((x - ox) * scale, (y - oy) * scale) for x, y in exterior], fill=value)
        for hole in holes:
            draw.polygon([((x - ox) * scale, (y - oy) * scale) for x, y in hole], fill=0)
    return np.array(image)


def window_sums(mask: np.ndarray, tops: np.ndarray, lefts: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``mask`` over ``size``-pixel square windows at ``(tops, lefts)``, clipped to the mask."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    h, w = mask.shape
    t, l = np.clip(tops, 0, h), np.clip(lefts, 0, w)
    b, r = np.clip(tops + size, 0, h), np.clip(lefts + size, 0, w)
    return integral[b, r] - integral[t, r] - integral[b, l] + integral[t, l]
