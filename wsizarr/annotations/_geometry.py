"""Polygon geometry on plain numpy arrays: area, centroid, point tests, rasterising, sums over
windows of a raster, and a raster's outlines (cleaned of small pieces and holes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely
from PIL import Image, ImageDraw

__all__ = [
    "box_sums", "centroid", "clean_mask", "ellipse", "has_area", "outlines", "point_inside", "points_in_polygon",
    "rasterize", "rotate", "window_sums",
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


def _integral(mask: np.ndarray) -> np.ndarray:
    """The ``(h + 1, w + 1)`` integral image: entry ``[r, c]`` sums ``mask[:r, :c]``."""
    dtype = np.int32 if mask.size < 2**31 else np.int64  # half the memory traffic of int64
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype)
    np.cumsum(np.cumsum(mask, 0, dtype=dtype), 1, dtype=dtype, out=integral[1:, 1:])
    return integral


def window_sums(mask: np.ndarray, tops: np.ndarray, lefts: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``mask`` over ``size``-pixel square windows at ``(tops, lefts)``, clipped to the mask."""
    integral = _integral(mask)
    h, w = mask.shape
    t, l = np.clip(tops, 0, h), np.clip(lefts, 0, w)
    b, r = np.clip(tops + size, 0, h), np.clip(lefts + size, 0, w)
    return integral[b, r] - integral[t, r] - integral[b, l] + integral[t, l]


def box_sums(mask: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Sum of ``mask`` over the boxes ``[x0, x1) x [y0, y1)`` with fractional bounds, in pixels:
    pixel ``(r, c)`` is the square ``[c, c + 1) x [r, r + 1)`` and counts by the share of it
    inside the box; outside the mask counts 0. Exact: the integral of a raster is bilinear
    within each pixel, so it is the integral image interpolated bilinearly at the corners."""
    integral = _integral(mask)
    h, w = mask.shape

    def at(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.clip(x, 0, w), np.clip(y, 0, h)
        col, row = np.minimum(np.floor(x), w - 1).astype(np.int64), np.minimum(np.floor(y), h - 1).astype(np.int64)
        fx, fy = x - col, y - row
        top = integral[row, col] * (1 - fx) + integral[row, col + 1] * fx
        bottom = integral[row + 1, col] * (1 - fx) + integral[row + 1, col + 1] * fx
        return top * (1 - fy) + bottom * fy

    x0, y0, x1, y1 = (np.asarray(v, np.float64) for v in (x0, y0, x1, y1))
    return at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, starts and stops (exclusive) of the runs of True along each row, row by row."""
    height, width = mask.shape
    flat = np.zeros(1 + height * (width + 1), bool)  # False, then each row and a False after it
    flat[1:].reshape(height, width + 1)[:, :width] = mask
    change = np.flatnonzero(flat[1:] != flat[:-1])  # the element after each change, less 1
    rows, cols = np.divmod(change, width + 1)  # runs start and stop in turn
    return rows[::2], cols[::2], cols[1::2]


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each ``k``, the indices ``lo[k] .. hi[k] - 1``, flattened: (``k`` of each, index)."""
    counts = np.maximum(hi - lo, 0)
    owner = np.repeat(np.arange(len(lo)), counts)
    return owner, np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts - lo, counts)


def _components(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, width: int) -> np.ndarray:
    """A label per run (the smallest index of its piece): runs in neighbouring rows that overlap
    are 4-connected. Hooking and pointer jumping over the overlapping pairs, vectorised."""
    row_key = rows.astype(np.int64) * (width + 2)
    below = row_key + width + 2
    run, other = _ranges(np.searchsorted(row_key + stops, below + starts, "right"),
                         np.searchsorted(row_key + starts, below + stops, "left"))
    parent = np.arange(len(rows))
    while True:
        mine, theirs = parent[run], parent[other]
        if (mine == theirs).all():
            return parent
        np.minimum.at(parent, np.maximum(mine, theirs), np.minimum(mine, theirs))
        while not (parent[parent] == parent).all():
            parent = parent[parent]


def _set_runs(mask: np.ndarray, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, value: bool) -> None:
    """Set the given runs of a boolean raster to ``value``, in place."""
    owner, cols = _ranges(starts, stops)
    mask.ravel()[rows[owner].astype(np.int64) * mask.shape[1] + cols] = value


def clean_mask(mask: np.ndarray, min_area: float, max_hole_area: float) -> np.ndarray:
    """A boolean raster without its pieces smaller than ``min_area`` pixels, then with its
    holes smaller than ``max_hole_area`` pixels filled. Pieces (of True) and holes (pieces of
    False that do not touch the border) are 4-connected and found on the rows' runs."""
    mask = np.array(mask, bool)
    height, width = mask.shape
    rows, starts, stops = _runs(mask)
    piece = _components(rows, starts, stops, width)
    dropped = np.bincount(piece, stops - starts, len(rows))[piece] < min_area
    _set_runs(mask, rows[dropped], starts[dropped], stops[dropped], False)
    rows, starts, stops = _runs(~mask)
    hole = _components(rows, starts, stops, width)
    border = np.zeros(len(rows), bool)
    border[hole[(rows == 0) | (rows == height - 1) | (starts == 0) | (stops == width)]] = True
    filled = ~border[hole] & (np.bincount(hole, stops - starts, len(rows))[hole] < max_hole_area)
    _set_runs(mask, rows[filled], starts[filled], stops[filled], True)
    return mask


_STEPS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])  # a unit edge's direction: +x, +y, -x, -y (y down)
_ON_THE_RIGHT = np.array([[0, 0], [-1, 0], [-1, -1], [0, -1]])  # the pixel right of an edge, from its start


def outlines(mask: np.ndarray, tolerance: float = 1.0) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The outlines of a boolean raster's 4-connected pieces, ``(exterior, holes)`` as ``(K, 2)``
    arrays in pixels (pixel ``(r, c)`` is the square ``[c, c + 1) x [r, r + 1)``), simplified to
    within ``tolerance`` pixels (rings that shrink to nothing left out).

    Traced, not united: every unit edge between True and False is walked with True on its right;
    each edge's successor leaves its end (turning right where two do, at a diagonal touch, which
    keeps 4-connected pieces apart); rings are labelled by pointer doubling and put in walking
    order by list ranking, all vectorised; a ring's sign of area says exterior or hole and the
    piece on its right which polygon it bounds. The rings are simplified as lines and only
    the ones that come out invalid (a ring touching itself where its piece meets itself corner
    to corner, or crossing itself once simplified) are repaired, so every polygon is valid.
    About 0.09 s for the 1875 x 1250 tissue mask of the benchmark slide (217k edges), where
    uniting the runs as a coverage took 0.4-0.9 s.
    """
    mask = np.asarray(mask, bool)
    height, width = mask.shape
    padded = np.zeros((height + 2, width + 2), bool)
    padded[1:-1, 1:-1] = mask
    rows, cols = np.nonzero(padded[1:, 1:-1] != padded[:-1, 1:-1])  # edges along y = row, x = col..col + 1
    below = padded[rows + 1, cols + 1]
    down_rows, down_cols = np.nonzero(padded[1:-1, 1:] != padded[1:-1, :-1])  # along x = col, y = row..row + 1
    left = padded[down_rows + 1, down_cols]
    x = np.concatenate([np.where(below, cols, cols + 1), down_cols])
    y = np.concatenate([rows, np.where(left, down_rows, down_rows + 1)])
    direction = np.concatenate([np.where(below, 0, 2), np.where(left, 1, 3)])
    n = len(direction)
    if not n:
        return []
    vertex = (y.astype(np.int64) * (width + 1) + x) * 4
    order = np.argsort(vertex + direction)
    leaving = (vertex + direction)[order]
    end = ((y + _STEPS[direction, 1]).astype(np.int64) * (width + 1) + x + _STEPS[direction, 0]) * 4
    # the edge leaving each edge's end: the only one, or at a diagonal touch (two leave) the
    # one turning right
    at = np.searchsorted(leaving, end)
    second = np.minimum(at + 1, n - 1)
    turns_right = (leaving[second] - end == (direction + 1) % 4) & (at + 1 < n)
    successor = order[np.where(turns_right, second, at)]
    ring, jump = np.arange(n), successor
    while not (ring[successor] == ring).all():  # each ring labelled by its smallest edge
        ring, jump = np.minimum(ring, ring[jump]), jump[jump]
    last = successor == ring  # the edge before the ring's label ends the walk
    ahead, steps = np.where(last, np.arange(n), successor), (~last).astype(np.int64)
    while not (ahead == ahead[ahead]).all():  # steps to the walk's last edge
        steps, ahead = steps + steps[ahead], ahead[ahead]
    predecessor = np.empty(n, np.int64)
    predecessor[successor] = np.arange(n)
    ring = (np.cumsum(ring == np.arange(n)) - 1)[ring]  # rings numbered 0, 1, ... in order of their labels
    size = np.bincount(ring)
    walk = np.empty(n, np.int64)  # ring by ring, each from its label on
    walk[(np.cumsum(size) - 1)[ring] - steps] = np.arange(n)
    walk = walk[direction[walk] != direction[predecessor[walk]]]  # the corners
    length = np.bincount(ring[walk], minlength=len(size))
    first = np.cumsum(length) - length
    corner_x, corner_y = x[walk].astype(np.float64), y[walk].astype(np.float64)
    following = np.arange(1, len(walk) + 1)
    following[first + length - 1] = first
    area = np.add.reduceat(corner_x * corner_y[following] - corner_x[following] * corner_y, first) / 2
    start = walk[first]
    right_x = x[start] + _ON_THE_RIGHT[direction[start], 0]
    right_y = y[start] + _ON_THE_RIGHT[direction[start], 1]
    run_rows, starts, stops = _runs(mask)
    run_keys = run_rows.astype(np.int64) * (width + 2) + starts
    piece = _components(run_rows, starts, stops, width)[
        np.searchsorted(run_keys, right_y.astype(np.int64) * (width + 2) + right_x, "right") - 1
    ]
    rings = shapely.linearrings(np.column_stack([corner_x, corner_y]), indices=np.repeat(np.arange(len(first)), length))
    # the rings simplified as lines: 10x faster than simplifying the polygons, which GEOS repairs
    # whether they need it or not; only the rings and polygons that are invalid are repaired
    coords, owner = shapely.get_coordinates(
        shapely.simplify(rings, tolerance, preserve_topology=False), return_index=True
    )
    alive = np.bincount(owner, minlength=len(rings)) >= 4  # a closed ring of three corners or more
    kept = alive[owner]
    simple = np.full(len(rings), None, object)
    simple[alive] = shapely.polygons(
        shapely.linearrings(coords[kept], indices=(np.cumsum(alive) - 1)[owner[kept]])
    )
    valid = np.zeros(len(rings), bool)
    valid[alive] = shapely.is_valid(simple[alive])
    polygons: list[shapely.Polygon] = []
    shells: list[shapely.Polygon] = []
    holes: list[shapely.Polygon] = []
    for k in [*np.lexsort((area < 0, piece)).tolist(), -1]:  # each piece's exterior (area > 0), then its holes
        if k < 0 or area[k] > 0:
            polygons += _assemble(shells, holes)
            shells, holes = [], []
            if k < 0:
                break
        parts = [simple[k]] if valid[k] else _repaired(simple[k]) if alive[k] else []
        (shells if area[k] > 0 else holes).extend(parts)
    return [
        (np.asarray(polygon.exterior.coords)[:-1], [np.asarray(hole.coords)[:-1] for hole in polygon.interiors])
        for polygon in polygons
    ]


def _assemble(shells: list[shapely.Polygon], holes: list[shapely.Polygon]) -> list[shapely.Polygon]:
    """The valid polygons of one piece: its exterior as one or more ``shells`` (a ring that
    touches or crosses itself comes repaired in parts) with its ``holes``, each hole in the
    shell it lies in; a polygon still invalid (a simplified hole crossing its exterior, say)
    is repaired whole, which costs far more on a large one. No shell (it collapsed): none."""
    if not shells:
        return []
    if len(shells) == 1 or not holes:
        owner = np.zeros(len(holes), np.int64)
    else:
        inside = shapely.point_on_surface(holes)
        owner = np.argmax([shapely.contains(shell, inside) for shell in shells], axis=0)
    polygons = [
        shapely.Polygon(
            shell.exterior, [*shell.interiors, *(hole.exterior for hole, k in zip(holes, owner.tolist()) if k == index)]
        )
        for index, shell in enumerate(shells)
    ]
    return [
        part for polygon in polygons
        for part in ([polygon] if not polygon.interiors or polygon.is_valid else _repaired(polygon))
    ]


def _repaired(polygon: shapely.Polygon) -> list[shapely.Polygon]:
    """The polygons of ``buffer(0)`` of an invalid polygon."""
    return [
        part for part in shapely.get_parts(shapely.buffer(polygon, 0))
        if isinstance(part, shapely.Polygon) and not part.is_empty
    ]
