"""Reading a finished store back: an ``xarray.Dataset`` with labels decoded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._locations import Location, open_zarr_store, parse_location
from ._store import open_store, store_metadata

if TYPE_CHECKING:
    import xarray

__all__ = ["open_dataset"]


def open_dataset(
    store: str | Path | Location, *, storage_options: Mapping[str, str] | None = None
) -> xarray.Dataset:
    """Open a complete store (directory, ``.zip`` or ``s3://`` URL) as a lazy ``xarray.Dataset``.

    ``patches`` has dims ``(patch, row, column, channel)``; ``x``, ``y``, ``level``,
    ``annotation_id``, ``slide``, ``padded`` and ``label`` are coordinates along ``patch``.
    ``label`` holds the label names ("" for unlabelled) and ``label_code`` the stored codes.
    Raises ``IncompleteStoreError`` for a store whose extraction did not finish.
    """
    import xarray as xr

    location = parse_location(store, storage_options)
    group = open_store(location)
    label_names = np.array([*store_metadata(group)["label_names"], ""], dtype=str)
    dataset = xr.open_zarr(
        open_zarr_store(location, "r"), consolidated=True, chunks=None, zarr_format=3
    )
    codes = dataset["label"].values
    return dataset.assign_coords(
        label=("patch", label_names[codes]),  # code -1 picks the trailing ""
        label_code=("patch", codes),
    )
