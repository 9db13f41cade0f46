"""Each slide's patches as one bag, for multiple-instance learning: its rows of the store (the
slide table's ``first_patch`` and ``n_patches``), their features (an array added after
extraction, e.g. by ``wsizarr embed``) and their level-0 positions. ``wsizarr.torch.SlideBags``
and the ``trident-h5`` export read slides through it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._errors import ParameterError
from .._locations import Location
from ..store._store import slide_table
from ._patches import AddedRows, PatchTable, check_added, patch_table

if TYPE_CHECKING:
    import zarr

__all__ = ["SlideBagSource", "slide_bags"]


@dataclass(frozen=True, eq=False)
class SlideBagSource:
    """The slides of a complete store as bags of ``features`` rows. Pickles without an open
    store (its reader of the added array reopens it in each process)."""

    store: str
    features: str
    table: PatchTable
    rows: tuple[range, ...]  # per slide of the slide table, its rows of the patch arrays
    reader: AddedRows

    def bag(self, slide: int) -> tuple[np.ndarray, np.ndarray]:
        """The slide's rows, in store order: its features ``(n, D)`` as stored, and its patches'
        level-0 ``x, y`` ``(n, 2)`` int64."""
        rows = self.rows[slide]
        features = self.reader.read(self.features, np.arange(rows.start, rows.stop))
        return features, np.stack([self.table.x[rows.start: rows.stop], self.table.y[rows.start: rows.stop]], axis=1)

    def majority_label(self, slide: int) -> int:
        """The most common label code among the slide's labelled patches (ties: the lower code),
        -1 when none of them is labelled."""
        rows = self.rows[slide]
        labels = self.table.label[rows.start: rows.stop]
        labels = labels[labels >= 0]
        return int(np.bincount(labels).argmax()) if labels.size else -1


def slide_bags(location: Location, group: zarr.Group, features: str) -> SlideBagSource:
    """The slides of the complete store ``group`` (opened at ``location`` with ``open_store``)
    as bags of the added array ``features``, which must be finished and ``(N, D)``."""
    table = patch_table(location, group)
    if features not in table.added:
        raise ParameterError(
            f"{location}: has no added array {features!r} (it has: {', '.join(map(repr, table.added)) or 'none'}); "
            "add features with wsizarr embed"
        )
    check_added(location, table.added, features)
    shape = table.added[features].shape
    if len(shape) != 2:
        raise ParameterError(
            f"{location}: the added array {features!r} has shape {tuple(shape)}; slide bags need "
            "features of shape (N, D), a row of D numbers a patch"
        )
    slides = slide_table(group)
    rows = tuple(slides.patch_rows(index) for index in range(len(slides)))
    return SlideBagSource(str(location), features, table, rows, AddedRows(location, table.shard_size, table.added))
