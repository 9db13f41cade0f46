"""Checking a store: every checksum of every shard, the metadata, and patches re-read from their
slides."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from .._errors import CorruptStoreError, ParameterError, SlideError, option
from .._locations import Location, parse_store_location
from .._text import count
from ..extraction._quality import measure_patches
from ..slides._color import to_srgb
from ..slides._slide import SlideInfo, resize_patch
from ..slides._tiles import (
    OpenSlideReader,
    SlideReader,
    TileReader,
    interpolate_like_openslide,
    open_reader,
)
from ..store._codecs import encode_lossy
from ..store._manifest import Manifest, SlideTable, plan_sha256
from ..store._reader import PatchReader
from ..store._shards import n_shards, shard_key
from ..store._store import (
    COORDINATE_ARRAYS,
    done_shards,
    open_store,
    read_manifest,
    slide_table,
)

__all__ = ["VerifyReport", "verify"]

# A lossy codec's patch against the slide's pixels encoded and decoded again with it: the encoder
# is deterministic, so with the same codec build the two are equal; 1 level allows for a decoder
# built differently (another libjpeg's rounding of the inverse DCT or of the chroma upsampling).
# A change that survives the codec's quantisation shows (a PSNR bound of JPEG's loss let through
# any change smaller than that loss: tests/test_verify_export.py alters a patch by 4 levels).
_LOSSY_TOLERANCE = 1
_NAMED = 5  # patches named in one problem line
# OpenSlide at a fractional level against the level's pixels interpolated at the sub-pixel
# offset: cairo's fixed-point weights stay within 2 levels (measured); a pixel's slip is ~50.
_INTERPOLATION_TOLERANCE = 3
# A slide with alpha: OpenSlide composites onto white through cairo's premultiplied pixels, the
# tiles reader from the straight ones, rounding to nearest: 1 level apart at most (README);
# compositing is linear in the premultiplied values, so interpolation adds nothing to it.
_ALPHA_TOLERANCE = 1


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: ``problems`` (one line each) is empty for a good store."""

    store: str
    n_patches: int
    shards: int
    patches_checked: int  # patches whose bytes (and masks) matched their checksums
    patches_compared: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (
            f"{self.store}: {count(self.n_patches, 'patch')} in {count(self.shards, 'shard')}, "
            f"{self.patches_checked} checked, {self.patches_compared} re-read from their slides: "
        )
        return head + ("OK" if self.ok else f"{count(len(self.problems), 'problem')}\n  " + "\n  ".join(self.problems))


def verify(
    store: str | Path | Location, *, sample: int = 64, seed: int = 0,
    storage_options: Mapping[str, str] | None = None,
) -> VerifyReport:
    """Check a store: every shard of ``patches`` (and ``masks``) present, whole and matching
    every checksum (its index's and each patch's), no stray files (such as a killed writer's
    ``*.partial``), the quality arrays whole and matching ``sample`` patches' pixels, the 1-D arrays consistent with the plan digest and the slide and label
    tables, and ``sample`` random patches equal to their slide read with the reader that wrote
    them (and converted to sRGB where the slide table says so; pixel for pixel, for a lossy codec
    after passing them through it, within 1 level; 0 skips the slides), cross-checked
    with the other reader where it applies. ``storage_options`` serve the store and slides on S3."""
    if sample < 0:
        raise ParameterError(f"{option('sample', sample)}: give the number of patches to re-read from the slides, 0 or more")
    location = parse_store_location(store, storage_options)
    group = open_store(location, require_complete=False)
    manifest = read_manifest(group)
    slides = slide_table(group)
    problems: list[str] = []
    n = manifest.n_patches
    shard_size = manifest.shard_size
    shards = manifest.n_shards
    if not manifest.complete:
        problems.append(f"incomplete: {int(done_shards(group).sum())} of {count(shards, 'shard')} marked done; resume it")
    keys = set(location.keys())
    stray = sorted(keys - set(_expected_keys(group)))
    if stray:
        problems.append(
            f"{len(stray)} stray files in the store (first: {stray[0]}), e.g. left by a killed "
            "writer; delete them"
        )
    reader = PatchReader(location, group=group)
    checked = 0
    for name in reader.arrays:
        present = [shard for shard in range(shards) if reader.shard_key(shard, name) in keys]
        missing = sorted(set(range(shards)) - set(present))
        if missing:
            problems.append(
                f"{len(missing)} shard files of '{name}' missing (first: shard {missing[0]}, "
                f"patches {missing[0] * shard_size}..)"
            )
        for shard in present:
            try:
                damaged = reader.check_shard(shard, name)
            except CorruptStoreError as exc:
                problems.append(exc.detail)
                continue
            if name == "patches":
                start, stop = reader.shard_bounds(shard)
                checked += stop - start - len(damaged)
            if damaged:
                problems.append(_damaged(damaged))
    arrays = {name: np.asarray(group[name][:]) for name in COORDINATE_ARRAYS}
    for name, values in arrays.items():
        if len(values) != n:
            problems.append(f"array {name} has {count(len(values), 'entry', 'entries')}, the store {count(n, 'patch')}")
    if group["patches"].shape[0] != n:
        problems.append(f"patches has {count(group['patches'].shape[0], 'entry', 'entries')}, the store {n}")
    problems += _plan_problems(manifest, slides.columns, arrays)
    problems += _added_problems(group, manifest)
    damaged_quality, quality = _quality_problems(group, manifest)
    problems += damaged_quality
    if arrays["label"].size and arrays["label"].max() >= len(manifest.label_names):
        problems.append("label codes beyond the label names")
    if arrays["slide"].size and arrays["slide"].max() >= len(slides):
        problems.append("slide indices beyond the slide table")
    compared = 0
    if not problems and sample:
        compared = _compare_sample(
            reader, group, manifest, slides, arrays, sample, seed, problems, storage_options
        )
        problems += _measured_problems(reader, quality, sample, seed)
    return VerifyReport(str(location), n, shards, checked, compared, tuple(problems))


def _damaged(errors: list[CorruptStoreError]) -> str:
    """One line for the damaged patches of one shard: the first's detail, the others' numbers."""
    others = [str(error.patch) for error in errors[1:]]
    more = f" and {len(others) - _NAMED} more" if len(others) > _NAMED else ""
    also = f"; so are patches {', '.join(others[:_NAMED])}{more}" if others else ""
    return f"{errors[0].detail}{also}; re-extract the store"


def _expected_keys(group: zarr.Group) -> Iterator[str]:
    """Every key the store may hold: metadata documents and the chunk (or shard) keys of its
    arrays' grids, which step along the ``patch`` dimension only (a chunk of fill values may be
    absent)."""
    yield "zarr.json"
    for name, member in group.members(max_depth=None):
        yield f"{name}/zarr.json"
        if not isinstance(member, zarr.Array):
            continue
        for shard in range(n_shards(member.shape[0], (member.shards or member.chunks)[0])):
            yield shard_key(name, shard, member.ndim)


def _added_problems(group: zarr.Group, manifest: Manifest) -> list[str]:
    """The arrays added after extraction: finished, one row per patch, every chunk's crc32c."""
    problems = []
    for name, added in manifest.added.items():
        if not added.complete:
            problems.append(f"the added array '{name}' is not finished; run the same add_array again")
            continue
        if name not in group or group[name].shape != tuple(added.shape) or added.shape[0] != manifest.n_patches:
            problems.append(f"the added array '{name}' is missing or not {tuple(added.shape)}; add it again (overwrite)")
            continue
        problems += _read_rows(group[name], f"the added array '{name}'", "add it again (overwrite)")[1]
    return problems


def _quality_problems(group: zarr.Group, manifest: Manifest) -> tuple[list[str], dict[str, np.ndarray]]:
    """The quality arrays: one value per patch, every chunk's crc32c, none missing (NaN: a
    chunk never written); and their values, for ``_measured_problems``."""
    problems: list[str] = []
    stored: dict[str, np.ndarray] = {}
    for name in manifest.quality:
        if name not in group or group[name].shape != (manifest.n_patches,):
            problems.append(f"the quality array '{name}' is missing or not one value per patch; re-extract the store")
            continue
        values, damaged = _read_rows(group[name], f"the quality array '{name}'", "re-extract the store")
        unset = [] if values is None else np.flatnonzero(np.isnan(values))
        if len(unset):
            damaged.append(f"the quality array '{name}' has no value for {count(len(unset), 'patch')} (first: {unset[0]}); re-extract the store")
        problems += damaged
        if values is not None:
            stored[name] = values
    return problems, stored


def _measured_problems(reader: PatchReader, stored: Mapping[str, np.ndarray], sample: int, seed: int) -> list[str]:
    """``sample`` random patches' quality measures recomputed from their stored pixels, against
    the ``stored`` ones (float32 arithmetic on the same pixels: equal within rounding)."""
    if not stored or not sample:
        return []
    n = len(next(iter(stored.values())))
    problems = []
    picks = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    measured = measure_patches(reader.read_patches(picks))
    for name, values in stored.items():
        wrong = np.flatnonzero(~np.isclose(values[picks], measured[name], rtol=1e-4, atol=1e-6))
        if len(wrong):
            problems.append(
                f"the quality array '{name}' does not match patch {picks[wrong[0]]}'s pixels ({values[picks[wrong[0]]]:g}, "
                f"measured {measured[name][wrong[0]]:g}; {len(wrong)} of {len(picks)} sampled differ); re-extract the store"
            )
    return problems


def _read_rows(array: zarr.Array, what: str, fix: str) -> tuple[np.ndarray | None, list[str]]:
    """A 1-D-chunked array's values, read a chunk at a time, or None and a line for the first
    chunk whose bytes are damaged or missing."""
    rows = array.chunks[0]
    chunks = []
    for start in range(0, array.shape[0], rows):
        try:
            chunks.append(array[start: start + rows])
        except Exception as exc:  # a damaged or missing chunk: zarr's crc32c check, or no bytes
            return None, [f"{what}, rows {start}..: unreadable ({type(exc).__name__}: {exc}); {fix}"]
    return (np.concatenate(chunks) if chunks else np.asarray(array[:])), []


def _plan_problems(manifest: Manifest, slides: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The 1-D arrays against the SHA-256 of each slide's plan (schema 1: of the whole plan)."""
    if manifest.legacy is not None:
        if plan_sha256(arrays) != manifest.legacy.get("plan_digest"):
            return ["the 1-D arrays do not match the plan digest: coordinates or labels were altered"]
        return []
    for index, (first, count, recorded) in enumerate(zip(slides["first_patch"], slides["n_patches"], slides["plan_sha256"])):
        rows = slice(int(first), int(first + count))
        if plan_sha256({name: values[rows] for name, values in arrays.items()}) != recorded:
            return [
                f"the 1-D arrays do not match the plan digest of slide {index} (patches "
                f"{rows.start}..{rows.stop - 1}): coordinates or labels were altered"
            ]
    return []


def _compare_sample(
    reader: PatchReader, group: zarr.Group, manifest: Manifest, slides: SlideTable,
    arrays: Mapping[str, np.ndarray], sample: int, seed: int, problems: list[str],
    storage_options: Mapping[str, str] | None,
) -> int:
    """Re-read ``sample`` random patches from their slides with the reader that wrote them;
    where the other reader also reads the slide, cross-check the two; a line per mismatch."""
    rng = np.random.default_rng(seed)
    n = manifest.n_patches
    picks = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    lossless = manifest.codec_lossless
    patch_size = group["patches"].shape[1]
    compared = 0
    for slide_index in np.unique(arrays["slide"][picks]).tolist():
        read_size = slides.resolution(slide_index).read_size_px
        try:
            readers = _open_readers(slides.info(slide_index), slides.reader(slide_index), storage_options)
        except SlideError as exc:
            problems.append(f"cannot re-read patches of slide {slide_index}: {exc}")
            continue
        try:
            of_slide = picks[arrays["slide"][picks] == slide_index]
            for i, stored in zip(of_slide.tolist(), reader.read_patches(of_slide)):
                x, y, level = int(arrays["x"][i]), int(arrays["y"][i]), int(arrays["level"][i])
                where = f"patch {i} (slide {slide_index}, level {level}, x {x}, y {y})"
                region = np.array(readers[0].read(level, x, y, read_size))  # a copy: converted in place
                if slides.color(slide_index) == "srgb":  # as the shard task did, before the resize
                    to_srgb(region, slides.icc_profile(slide_index), slides.paths[slide_index])
                expected = resize_patch(region, patch_size)
                if not lossless:  # what the writer stored: the same pixels through the same codec
                    expected = encode_lossy(manifest.codec, expected[None])[1][0]
                compared += 1
                diff = int(np.abs(stored.astype(int) - expected).max())
                if diff > (0 if lossless else _LOSSY_TOLERANCE):
                    codec = "" if lossless else f" through {manifest.codec}"
                    problems.append(f"{where} differs from its slide read with {readers[0].name}{codec} (max diff {diff})")
                if len(readers) == 2 and read_size == patch_size:
                    problems += [f"{where}: {p}" for p in _cross_check(readers, level, x, y, patch_size)]
        finally:
            for slide_reader in readers:
                slide_reader.close()
    return compared


def _open_readers(info: SlideInfo, written_by: str, storage_options: Mapping[str, str] | None) -> list[SlideReader]:
    """The reader that wrote the slide's patches, then the other one where it reads the slide."""
    readers = [open_reader(info, written_by, storage_options)]
    try:
        other = open_reader(info, "openslide" if written_by == "tiles" else "tiles", storage_options)
    except SlideError:
        return readers  # the other reader does not apply (a slide on S3, a format without tile access)
    if isinstance(other, OpenSlideReader) and other.slide.level_count != info.level_count:
        other.close()  # a SubIFD pyramid: OpenSlide sees level 0 only
        return readers
    return [*readers, other]


def _cross_check(readers: list[SlideReader], level: int, x: int, y: int, size: int) -> list[str]:
    """The tiles and openslide readers agree: equal at a whole downsample; elsewhere OpenSlide
    is the level's pixels interpolated as it interpolates (``interpolate_like_openslide``). A
    level with alpha allows ``_ALPHA_TOLERANCE`` more (OpenSlide composites through
    premultiplied alpha, the tiles reader from the straight values: the README's "within 1")."""
    tiles = next(r for r in readers if isinstance(r, TileReader))
    openslide_reader = next(r for r in readers if r is not tiles)
    alpha = _ALPHA_TOLERANCE if tiles.tiff.has_alpha(level) else 0
    through_openslide = openslide_reader.read(level, x, y, size).astype(np.float32)
    if float(tiles.info.level_downsamples[level]).is_integer():
        diff = np.abs(through_openslide - tiles.read(level, x, y, size)).max()
        return [] if diff <= alpha else [f"the tiles and openslide readers differ (max diff {diff:.0f}, <= {alpha} expected)"]
    diff = np.abs(through_openslide - interpolate_like_openslide(tiles, level, x, y, size)).max()
    if diff <= _INTERPOLATION_TOLERANCE + alpha:
        return []
    return [
        f"OpenSlide's read_region is {diff:.1f} levels from the level's pixels interpolated as "
        f"OpenSlide interpolates (<= {_INTERPOLATION_TOLERANCE + alpha} expected)"
    ]
