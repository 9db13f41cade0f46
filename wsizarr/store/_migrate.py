"""``wsizarr migrate``: rewrite a schema 1 store (its slide table in the root attributes) as
schema 2 (tables as arrays), in place and without touching a patch."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr

from .._errors import StoreError
from .._locations import Location, parse_store_location
from ._lock import writer_lock
from ._manifest import (
    ANNOTATION_COLUMNS,
    COORDINATE_COLUMNS,
    SLIDE_COLUMNS,
    Manifest,
    TableWriter,
    plan_sha256,
    read_slides,
)
from ._store import (
    consolidate,
    create_tables,
    open_store,
    read_manifest,
    write_manifest,
)

__all__ = ["migrate"]


def migrate(store: str | Path | Location, *, storage_options: Mapping[str, str] | None = None) -> Manifest:
    """Rewrite the complete schema 1 store at ``store`` (directory or ``s3://``) as schema 2.

    The tables are written first and the root attribute last, so an interrupted migration
    leaves the schema 1 store (migrate it again). A store already at schema 2 is left as it
    is. Raises ``StoreError`` for a zip (read-only: migrate the directory, then pack it).
    """
    location = parse_store_location(store, storage_options)
    if not location.can_append:
        raise StoreError(f"{location}: a zip is read-only; migrate the directory store, then pack it again")
    with writer_lock(location):
        manifest = read_manifest(open_store(location))
        if manifest.legacy is None:
            return manifest
        group = zarr.open_group(location.open("a"), mode="r+", zarr_format=3, use_consolidated=False)
        slides = read_slides(group, manifest)
        arrays = {name: np.asarray(group[name][:]) for name in COORDINATE_COLUMNS}
        starts = np.searchsorted(arrays["slide"], np.arange(len(slides) + 1))
        if np.any(np.diff(arrays["slide"]) < 0):
            raise StoreError(f"{location}: its patches are not in slide order; extract it again instead")
        create_tables(group)
        slide_rows = TableWriter(group["slides"], SLIDE_COLUMNS, 0)
        annotation_rows = TableWriter(group["annotations"], ANNOTATION_COLUMNS, 0)
        for index, entry in enumerate(manifest.legacy["slides"]):
            rows = slice(int(starts[index]), int(starts[index + 1]))
            names = list(entry.get("annotation_names", ()))
            row = {name: values[index: index + 1] for name, values in slides.columns.items()}
            row.update(
                first_patch=np.array([rows.start]), n_patches=np.array([rows.stop - rows.start]),
                first_annotation=np.array([annotation_rows.rows]), n_annotations=np.array([len(names)]),
                plan_sha256=np.array([plan_sha256({k: v[rows] for k, v in arrays.items()})], dtype=object),
            )
            slide_rows.append(row)
            n = len(names)
            annotation_rows.append({  # schema 1 kept names only: ids in file order, no labels or shapes
                "slide": np.full(n, index, np.int32), "id": np.arange(n, dtype=np.int64),
                "name": np.array(names, dtype=object), "label": np.full(n, -1, np.int32),
                "type": np.full(n, "", dtype=object), "exclusion": np.zeros(n, bool),
                "bbox": np.full((n, 4), np.nan), "first_ring": np.zeros(n, np.int64),
                "n_rings": np.zeros(n, np.int32),
            })
        n_slides, n_annotations = slide_rows.close(), annotation_rows.close()
        migrated = Manifest(
            manifest.wsizarr_version, manifest.parameters, manifest.shard_size, manifest.codec,
            manifest.codec_lossless, manifest.requires, label_names=manifest.label_names,
            n_patches=manifest.n_patches, n_slides=n_slides, n_annotations=n_annotations, complete=True,
        )
        write_manifest(group, migrated)
        consolidate(group)
        return migrated
