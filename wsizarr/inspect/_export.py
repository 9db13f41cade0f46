"""Exporting a store: back to loose image files and a CSV of their metadata, or its features
(an added array) per slide as the HDF5 files CLAM and TRIDENT read (``trident-h5``)."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .._errors import ParameterError, option
from .._locations import Location, parse_location
from .._output import output_file
from ..loaders._bags import slide_bags
from ..store._manifest import SlideTable
from ..store._reader import PatchReader
from ..store._store import open_store, read_manifest, slide_table

if TYPE_CHECKING:
    import zarr

__all__ = ["FORMATS", "export"]

_FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 95})}
FORMATS = (*_FORMATS, "trident-h5")
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
    label: str | None = None, features: str | None = None, overwrite: bool = False,
    storage_options: Mapping[str, str] | None = None,
) -> int:
    """Write every patch (or those of ``label``) as ``{slide}_{annotation}_{label}_L{level}_{x}_{y}``
    image files in ``folder``, plus ``metadata.csv``; returns the number of files written.
    Reads whole shards at a time, every checksum checked (``CorruptStoreError`` names a damaged
    shard); every file is written under a temporary name and renamed into place.

    ``format="trident-h5"`` writes instead, per slide with patches (of ``label``), the rows of
    the added array ``features`` as ``{slide stem}.h5`` in the layout CLAM's and TRIDENT's
    feature extraction write and their MIL training reads: ``features`` float32 ``(n, D)`` and
    ``coords`` int64 ``(n, 2)`` (level-0 x, y) with the patching attributes both read (needs
    h5py). ``ParameterError`` for an unknown format or label, features without that format (or
    that format without features), and, unless ``overwrite``, when ``folder`` already holds a
    file of those names."""
    if format not in FORMATS:
        raise ParameterError(f"unknown export format {format!r}; choose {', '.join(FORMATS)}")
    if (format == "trident-h5") != (features is not None):
        raise ParameterError(
            f"{option('format', 'trident-h5')} and {option('features')} go together: the features (an added "
            "array, e.g. from wsizarr embed) are what that format exports"
        )
    location = parse_location(store, storage_options)
    group = open_store(location)
    manifest = read_manifest(group)
    names = manifest.label_names
    if label is not None and label not in names:
        raise ParameterError(f"label {label!r} is not in the store; its labels are {', '.join(names)}")
    if features is not None:
        code = None if label is None else names.index(label)
        return _export_h5(location, group, Path(folder), features, code, overwrite)
    reader = PatchReader(location, group=group)
    paths = slide_table(group).paths
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


def _export_h5(location: Location, group: zarr.Group, folder: Path, features: str, label: int | None, overwrite: bool) -> int:
    """Per slide with patches (of label code ``label``), ``{stem}.h5``: its rows of
    ``features`` and their positions in CLAM's and TRIDENT's layout; the number of files."""
    try:
        import h5py
    except ImportError:
        raise ParameterError("the trident-h5 export needs h5py: pip install 'wsizarr[h5]'") from None
    bags = slide_bags(location, group, features)
    slides = slide_table(group)
    stems = [Path(path).stem for path in slides.paths]
    chosen: dict[int, np.ndarray | None] = {}  # slide -> which of its rows (None: all)
    for slide, rows in enumerate(bags.rows):
        keep = None if label is None else bags.table.label[rows.start: rows.stop] == label
        if len(rows) and (keep is None or keep.any()):
            chosen[slide] = keep
    files = [f"{stems[slide]}.h5" for slide in chosen]
    if len(set(files)) < len(files):
        twice = next(name for name in files if files.count(name) > 1)
        raise ParameterError(
            f"{location}: two slides would both be written as {twice}; export each from a store of its own "
            "(wsizarr subset --slide)"
        )
    _claim(folder, set(files), overwrite)
    patch_size = int(group["patches"].shape[1])
    encoder = bags.table.added[features].fn
    for (slide, rows), name in zip(chosen.items(), files):
        values, coords = bags.bag(slide)
        if rows is not None:
            values, coords = values[rows], coords[rows]
        with output_file(folder / name, overwrite=True) as partial, h5py.File(partial, "w") as h5:
            dataset = h5.create_dataset("features", data=values.astype(np.float32), maxshape=(None, *values.shape[1:]))
            dataset.attrs.update({"name": stems[slide], "savetodir": str(folder), "encoder": encoder})
            positions = h5.create_dataset("coords", data=coords.astype(np.int64), maxshape=(None, 2))
            positions.attrs.update(_patching_attributes(slides, slide, stems[slide], patch_size, folder))
    return len(files)


def _patching_attributes(slides: SlideTable, slide: int, name: str, patch_size: int, folder: Path) -> dict[str, Any]:
    """What CLAM's ``create_patches_fp.py`` (``patch_level``, ``patch_size``, ``downsample``,
    ``level_dim``, ...) and TRIDENT (``patch_size_level0``, ``level0_magnification``,
    ``target_magnification``, ...) record beside the coordinates of a slide's patches; the
    magnifications only where the slide records its objective power (TRIDENT then reads the
    others, as it reads CLAM's files)."""
    info, resolution = slides.info(slide), slides.resolution(slide)
    downsample = info.level_downsamples[resolution.level]
    resized = resolution.read_size_px / patch_size  # 1 unless a --mpp or --magnification read was resized
    attributes: dict[str, Any] = {
        "patch_size": patch_size, "patch_level": resolution.level,
        "downsample": np.array([downsample, downsample]), "custom_downsample": resized,
        "level_dim": np.array(info.level_dimensions[resolution.level]),
        "downsampled_level_dim": np.array(info.level_dimensions[resolution.level]),
        "patch_size_level0": round(resolution.read_size_px * downsample),
        "level0_width": info.dimensions[0], "level0_height": info.dimensions[1],
        "name": name, "save_path": str(folder), "savetodir": str(folder),
    }
    if info.objective_power is not None:
        attributes["level0_magnification"] = info.objective_power
        attributes["target_magnification"] = info.objective_power / (downsample * resized)
    return attributes
