"""Exporting a store back to loose image files and a CSV of their metadata."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from .._errors import ParameterError, option
from .._locations import Location, parse_location
from .._output import output_file
from ..store._reader import PatchReader
from ..store._store import open_store, read_manifest, slide_table

__all__ = ["export"]

_FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 95})}
_TABLE = "metadata.csv"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


def _safe(text: str) -> str:
    """A file-name part that cannot leave its folder nor pass for an option or a formula:
    letters, digits, ``.-_`` only, never first ``.``, ``-`` or ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._").lstrip("-") or "_"
    return cleaned[:80]


def _cell(text: str) -> str:
    """A CSV text cell (label, slide path, file) that a spreadsheet shows as text: control
    characters dropped, a leading formula character neutralised with ``'``."""
    cleaned = _CONTROL.sub("", text)
    return "'" + cleaned if text.startswith(_FORMULA) or cleaned.startswith(_FORMULA) else cleaned


def export(
    store: str | Path | Location, folder: str | Path, *, format: str = "png",
    label: str | None = None, overwrite: bool = False,
    storage_options: Mapping[str, str] | None = None,
) -> int:
    """Write every patch (or those of ``label``) as ``{slide}_{annotation}_{label}_L{level}_{x}_{y}``
    image files in ``folder``, plus ``metadata.csv``; returns the number of files written.
    Reads whole shards at a time, every checksum checked (``CorruptStoreError`` names a damaged
    shard); every file is written under a temporary name and renamed into place. ``ParameterError`` for an unknown format or label, and, unless ``overwrite``, when
    ``folder`` already holds a file of those names."""
    if format not in _FORMATS:
        raise ParameterError(f"unknown export format {format!r}; choose png or jpg")
    location = parse_location(store, storage_options)
    group = open_store(location)
    reader = PatchReader(location, group=group)
    manifest = read_manifest(group)
    paths = slide_table(group).paths
    names = manifest.label_names
    if label is not None and label not in names:
        raise ParameterError(f"label {label!r} is not in the store; its labels are {', '.join(names)}")
    arrays = {name: np.asarray(group[name][:]) for name in ("x", "y", "level", "annotation_id", "label", "slide")}
    wanted = np.arange(manifest.n_patches) if label is None else np.flatnonzero(arrays["label"] == names.index(label))
    slides = [_safe(Path(path).stem) for path in paths]
    label_names = [names[code] if code >= 0 else "unlabelled" for code in arrays["label"][wanted].tolist()]
    files = [
        f"{slides[int(arrays['slide'][i])]}_{int(arrays['annotation_id'][i])}_{_safe(label_name)}"
        f"_L{int(arrays['level'][i])}_{int(arrays['x'][i])}_{int(arrays['y'][i])}.{format}"
        for i, label_name in zip(wanted.tolist(), label_names)
    ]
    folder = Path(folder)
    _claim(folder, {_TABLE, *files}, overwrite)
    pil_format, options = _FORMATS[format]
    shards = wanted // reader.shard_size
    with output_file(folder / _TABLE, overwrite=True) as partial, partial.open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["file", "index", "slide", "annotation_id", "label", "level", "x", "y"])
        for shard in np.unique(shards).tolist():
            pixels = reader.read_shard(shard)  # one request for the whole shard
            first, _ = reader.shard_bounds(shard)
            for k in np.flatnonzero(shards == shard).tolist():
                i, name = int(wanted[k]), files[k]
                with output_file(folder / name, overwrite=True) as image:
                    Image.fromarray(pixels[i - first]).save(image, pil_format, **options)
                writer.writerow([_cell(name), i, _cell(paths[int(arrays["slide"][i])]),
                                 int(arrays["annotation_id"][i]), _cell(label_names[k]), int(arrays["level"][i]),
                                 int(arrays["x"][i]), int(arrays["y"][i])])
    return len(files)


def _claim(folder: Path, names: set[str], overwrite: bool) -> None:
    """Create ``folder``; ``ParameterError`` if it holds a file of ``names`` and not ``overwrite``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        taken = sorted(names & {entry.name for entry in folder.iterdir()})
    except OSError as exc:
        raise ParameterError(f"{folder}: cannot write there ({exc.strerror}); choose another folder") from None
    if taken and not overwrite:
        raise ParameterError(
            f"{folder}: already holds {len(taken)} of the files export writes (first: {taken[0]}); "
            f"pass {option('overwrite', True)} to replace them or choose an empty folder"
        )
