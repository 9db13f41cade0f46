"""Exporting a store back to loose image files and a CSV of their metadata."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from ._errors import ParameterError
from ._locations import Location, parse_location
from ._store import open_store, store_metadata

__all__ = ["export"]

_FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 95})}


def _safe(text: str) -> str:
    """A file-name part that cannot leave its folder: letters, digits, ``.-_`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"
    return cleaned[:80]


def export(
    store: str | Path | Location, folder: str | Path, *, format: str = "png",
    label: str | None = None, storage_options: Mapping[str, str] | None = None,
) -> int:
    """Write every patch (or those of ``label``) as ``{slide}_{annotation}_{label}_L{level}_{x}_{y}``
    image files in ``folder``, plus ``metadata.csv``; returns the number of files written.
    Reads whole shards at a time. ``ParameterError`` for an unknown format or label."""
    if format not in _FORMATS:
        raise ParameterError(f"unknown export format {format!r}; choose png or jpg")
    group = open_store(parse_location(store, storage_options))
    metadata = store_metadata(group)
    names = metadata["label_names"]
    if label is not None and label not in names:
        raise ParameterError(f"label {label!r} is not in the store; its labels are {', '.join(names)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    arrays = {name: np.asarray(group[name][:]) for name in ("x", "y", "level", "annotation_id", "label", "slide")}
    slides = [_safe(Path(s["path"]).stem) for s in metadata["slides"]]
    pil_format, options = _FORMATS[format]
    shard_size, n = metadata["shard_size"], metadata["n_patches"]
    written = 0
    with (folder / "metadata.csv").open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["file", "index", "slide", "annotation_id", "label", "level", "x", "y"])
        for start in range(0, n, shard_size):
            stop = min(start + shard_size, n)
            codes = arrays["label"][start:stop]
            wanted = np.flatnonzero(codes == names.index(label)) if label is not None else np.arange(stop - start)
            if wanted.size == 0:
                continue
            shard = np.asarray(group["patches"][start:stop])  # one request for the whole shard
            for k in wanted.tolist():
                i = start + k
                code = int(arrays["label"][i])
                label_name = names[code] if code >= 0 else "unlabelled"
                name = (
                    f"{slides[int(arrays['slide'][i])]}_{int(arrays['annotation_id'][i])}_{_safe(label_name)}"
                    f"_L{int(arrays['level'][i])}_{int(arrays['x'][i])}_{int(arrays['y'][i])}.{format}"
                )
                path = (folder / name).resolve()
                if path.parent != root:  # _safe makes this impossible; checked all the same
                    raise ParameterError(f"{name}: would be written outside {folder}")
                Image.fromarray(shard[k]).save(path, pil_format, **options)
                writer.writerow([name, i, metadata["slides"][int(arrays["slide"][i])]["path"],
                                 int(arrays["annotation_id"][i]), label_name, int(arrays["level"][i]),
                                 int(arrays["x"][i]), int(arrays["y"][i])])
                written += 1
    return written
