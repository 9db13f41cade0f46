"""Patch readers: a level's own pixels from the slide's TIFF tiles, or OpenSlide's ``read_region``.

``tiles`` (tifffile + imagecodecs) decodes each tile of a level once per open reader (a bounded
cache, so the patches of one annotation share their tiles) and crops patches from the level's
own pixels: level ``L`` pixel ``floor(x / downsample)`` for level-0 ``x``, never resampled.
``openslide`` calls ``read_region``, which at a fractional downsample (Aperio's 4.0004...)
interpolates between the level's pixels by the sub-pixel offset ``x / downsample - floor(...)``
(from a negative ``x`` it shifts by whole pixels, truncated toward zero: ``openslide_origin``);
``interpolate_like_openslide`` states that relation. Slides on S3 (``s3://bucket/key``) are read
through ranged GETs of a block cache: the TIFF header, then only the tiles that patches touch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, ClassVar

import numpy as np
import tifffile
from PIL import Image

from .._errors import ParameterError, SlideError, StoreError, option
from .._locations import parse_location
from ._slide import SlideInfo, composite_on_white, open_slide, read_rgb

__all__ = [
    "READERS", "OpenSlideReader", "RangedFile", "SlideReader", "TileReader", "TiledTiff",
    "choose_reader", "content_digest", "equal_runs", "interpolate_like_openslide", "is_remote",
    "level_px", "open_reader", "openslide_origin", "tiff_slide_info",
]

READERS = ("auto", "tiles", "openslide")
_TILE_VENDORS = ("aperio", "generic-tiff")  # what auto reads by tiles: tested pixel for pixel
_INTER_COLOR_PROFILE = 34675  # the TIFF tag of the ICC profile, where OpenSlide reads it
_TILE_CACHE_BYTES = 64 << 20  # decoded tiles kept per open reader (~330 RGB tiles of 256 px)
_BLOCK_BYTES = 16 << 10  # S3: the unit of ranged reads and of the block cache
_BLOCK_CACHE = 4096  # S3: blocks kept per process (64 MiB), shared by its threads
# A neighbourhood read by OpenSlide covers at most this many pixels (64 MiB of RGBA); larger
# unions fall back to one read per patch, so memory stays bounded whatever the annotation size.
_MAX_REGION_PX = 4096 * 4096
_LEVEL_STRIP_BYTES = 64 << 20  # a whole level read reduced comes in strips of about this many bytes


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an object on S3 (``s3://bucket/key``)."""
    return os.fspath(path).startswith("s3://")


def level_px(level0: int, downsample: float) -> int:
    """The level pixel a level-0 coordinate falls in: ``floor(level0 / downsample)``,
    OpenSlide's rounding; the sampler's ``level0_from_level_px`` is its smallest preimage."""
    return math.floor(level0 / downsample)


class _BlockCache:
    """Blocks of S3 objects shared by every open file of the process (the threads of a run
    read the same header and neighbouring tiles), least recently used dropped first."""

    def __init__(self, capacity: int) -> None:
        self._blocks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            block = self._blocks.get(key)
            if block is not None:
                self._blocks.move_to_end(key)
            return block

    def put(self, key: tuple[str, int], block: bytes) -> None:
        with self._lock:
            self._blocks[key] = block
            while len(self._blocks) > self._capacity:
                self._blocks.popitem(last=False)


_BLOCKS = _BlockCache(_BLOCK_CACHE)


class RangedFile:
    """A read-only, seekable file over one S3 object, read through the process's block cache:
    a read fetches the blocks it lacks, each run of adjacent missing blocks with one ranged GET.
    ``bytes_fetched`` counts what this file brought over the network."""

    def __init__(self, url: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.name = url
        self._location = parse_location(url, storage_options)
        try:
            self.size = self._location.size()
        except StoreError as exc:  # a slide, not a store, is missing or unreachable
            raise SlideError(str(exc)) from None
        self._key = f"{url}#{self.size}"
        self._position = 0
        self.bytes_fetched = 0

    def _blocks(self, first: int, last: int) -> list[bytes]:
        blocks = [_BLOCKS.get((self._key, i)) for i in range(first, last + 1)]
        missing = [first + k for k, block in enumerate(blocks) if block is None]
        for run_start, run_stop in equal_runs(np.asarray(missing) - np.arange(len(missing))):
            lo, hi = missing[run_start], missing[run_stop - 1]
            start, stop = lo * _BLOCK_BYTES, min((hi + 1) * _BLOCK_BYTES, self.size)
            data = self._location.read_range(start, stop - start)
            self.bytes_fetched += len(data)
            for i in range(lo, hi + 1):
                blocks[i - first] = data[(i - lo) * _BLOCK_BYTES : (i - lo + 1) * _BLOCK_BYTES]
                _BLOCKS.put((self._key, i), blocks[i - first])
        return blocks

    def read(self, size: int = -1) -> bytes:
        start = self._position
        stop = self.size if size is None or size < 0 else min(self.size, start + size)
        if stop <= start:
            return b""
        self._position = stop
        first, last = start // _BLOCK_BYTES, (stop - 1) // _BLOCK_BYTES
        data = b"".join(self._blocks(first, last))
        offset = first * _BLOCK_BYTES
        return data[start - offset : stop - offset]

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self.size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release: the blocks stay cached for the process's other readers."""


class _Level:
    """One pyramid level: a tiled TIFF page and where its tiles are."""

    def __init__(self, page: tifffile.TiffPage) -> None:
        self.page = page
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_width, self.tile_height = int(page.tilewidth), int(page.tilelength)
        self.columns = -(-self.width // self.tile_width)
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        self.decode = page.decode
        self.jpegtables = page.jpegtables


def _usable(page: tifffile.TiffPage) -> bool:
    return (
        page.is_tiled and page.dtype == np.uint8 and page.samplesperpixel in (3, 4)
        and page.planarconfig == 1 and page.imagedepth == 1
    )


def _pyramids(tif: tifffile.TiffFile) -> Iterator[list[tifffile.TiffPage]]:
    """Candidate level lists, made as they are asked for: the tiled pages of the main IFD chain
    by width (Aperio, generic pyramidal TIFF: what OpenSlide calls levels), then tifffile's
    first series (SubIFDs, OME-TIFF and other layouts; parsing series costs most of opening a
    slide, so only when the main chain does not fit)."""
    tiled = [p for p in tif.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled]
    candidates = (
        lambda: sorted(tiled, key=lambda p: -p.imagewidth),
        lambda: [level.keyframe for level in tif.series[0].levels] if tif.series else [],
    )
    for candidate in candidates:
        pages = candidate()
        if pages and all(_usable(p) for p in pages):
            yield pages


class TiledTiff:
    """A pyramidal TIFF read tile by tile; ``region`` gives a level's own RGB pixels.

    ``level_dimensions``, when given (OpenSlide's), picks the pages with exactly those sizes;
    ``SlideError`` when there are none or a tile cannot be decoded. Decoded tiles are kept up
    to ``cache_bytes``, least recently used dropped first.
    """

    def __init__(
        self, source: str | os.PathLike[str] | BinaryIO, name: str,
        level_dimensions: Sequence[tuple[int, int]] | None = None,
        cache_bytes: int = _TILE_CACHE_BYTES,
    ) -> None:
        self.name = name
        try:
            self._tif = tifffile.TiffFile(source)
        except (tifffile.TiffFileError, ValueError, OSError) as exc:
            raise SlideError(f"{name}: not a TIFF tifffile can read ({exc})") from None
        try:
            wanted = None if level_dimensions is None else [tuple(d) for d in level_dimensions]
            for pages in _pyramids(self._tif):
                if wanted is None or [(p.imagewidth, p.imagelength) for p in pages] == wanted:
                    self.levels = [_Level(p) for p in pages]
                    break
            else:
                raise SlideError(
                    f"{name}: tifffile finds no tiled 8-bit RGB pyramid with the slide's level sizes; "
                    f"read it with {option('reader', 'openslide')} (or convert it to a tiled pyramidal TIFF)"
                )
        except BaseException:
            self._tif.close()
            raise
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cache_bytes, self._cached = cache_bytes, 0

    def check_codecs(self) -> None:
        """Decode one tile of every level: ``SlideError`` unless imagecodecs has their codecs."""
        for level, lv in enumerate(self.levels):
            self._decoded(level, int(np.argmax(lv.counts > 0)))

    def has_alpha(self, level: int) -> bool:
        """Whether ``level`` has an alpha channel (its pixels are composited onto white)."""
        return int(self.levels[level].page.samplesperpixel) == 4

    @property
    def description(self) -> str:
        return self._tif.pages.first.description

    @property
    def tiff(self) -> tifffile.TiffFile:
        return self._tif

    def close(self) -> None:
        self._tif.close()

    def _decoded(self, level: int, index: int, data: bytes | None = None) -> np.ndarray | None:
        """Tile ``index`` of ``level`` as RGB (transparency composited onto white), from its
        bytes ``data`` or read from the file; None for a tile the file does not hold (sparse
        slides: white)."""
        lv = self.levels[level]
        if index >= len(lv.offsets) or lv.counts[index] == 0:
            return None
        try:
            if data is None:
                self._tif.filehandle.seek(int(lv.offsets[index]))
                data = self._tif.filehandle.read(int(lv.counts[index]))
            tile = lv.decode(data, index, jpegtables=lv.jpegtables)[0]
        except Exception as exc:  # codecs raise their own types
            raise SlideError(f"{self.name}: tile {index} of level {level} cannot be decoded ({exc}); the file may be corrupt") from None
        if tile is None:
            return None
        tile = tile.reshape(tile.shape[-3:])
        return tile if tile.shape[2] == 3 else composite_on_white(tile)

    def _fetch_row(self, level: int, first: int, last: int) -> None:
        """Decode the uncached tiles ``first..last`` of one tile row; where they lie back to back
        in the file (as scanners write them) their bytes come from one read (one ranged GET)."""
        lv = self.levels[level]
        wanted = [i for i in range(first, last + 1) if (level, i) not in self._cache and lv.counts[i] > 0]
        if len(wanted) < 2:
            return
        offsets, counts = lv.offsets[wanted], lv.counts[wanted]
        if not (offsets[1:] == offsets[:-1] + counts[:-1]).all():
            return  # not contiguous: tile by tile
        handle = self._tif.filehandle
        handle.seek(int(offsets[0]))
        span = handle.read(int(offsets[-1] + counts[-1] - offsets[0]))
        for index, offset, count in zip(wanted, (offsets - offsets[0]).tolist(), counts.tolist()):
            self._remember((level, index), self._decoded(level, index, span[offset : offset + count]))

    def _tile(self, level: int, index: int) -> np.ndarray | None:
        key = (level, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        return self._remember(key, self._decoded(level, index))

    def _remember(self, key: tuple[int, int], tile: np.ndarray | None) -> np.ndarray | None:
        self._cache[key] = tile
        self._cached += 0 if tile is None else tile.nbytes
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            dropped = self._cache.popitem(last=False)[1]
            self._cached -= 0 if dropped is None else dropped.nbytes
        return tile

    def region(self, level: int, x: int, y: int, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
        """Level pixels ``[y, y + height) x [x, x + width)`` (level coordinates) as
        ``(height, width, 3)`` uint8; outside the level or in missing tiles white."""
        lv = self.levels[level]
        if out is None:
            out = np.empty((height, width, 3), np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, lv.width), min(y + height, lv.height)
        if x0 != x or y0 != y or x1 != x + width or y1 != y + height:
            out.fill(255)
        tw, th = lv.tile_width, lv.tile_height
        columns = range(x0 // tw, (x1 - 1) // tw + 1 if x1 > x0 else 0)
        for row in range(y0 // th, (y1 - 1) // th + 1 if y1 > y0 else 0):
            top, bottom = max(y0, row * th), min(y1, (row + 1) * th)
            if len(columns) > 1:
                self._fetch_row(level, row * lv.columns + columns[0], row * lv.columns + columns[-1])
            for column in columns:
                left, right = max(x0, column * tw), min(x1, (column + 1) * tw)
                tile = self._tile(level, row * lv.columns + column)
                target = out[top - y : bottom - y, left - x : right - x]
                if tile is None:
                    target.fill(255)
                else:
                    target[...] = tile[top - row * th : bottom - row * th, left - column * tw : right - column * tw]
        return out


def _tiff_source(path: str, storage_options: Mapping[str, str] | None) -> str | RangedFile:
    return RangedFile(path, storage_options) if is_remote(path) else path


def _aperio_properties(description: str) -> dict[str, str]:
    return {
        key.strip(): value.strip()
        for key, sep, value in (part.partition("=") for part in description.split("|")[1:]) if sep
    }


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def tiff_slide_info(path: str, storage_options: Mapping[str, str] | None = None) -> tuple[SlideInfo, str]:
    """A TIFF slide's ``SlideInfo`` (ICC profile included) from its header alone, as OpenSlide
    reports it for Aperio SVS and generic tiled TIFF (OpenSlide reads local files only, so this
    is how slides on S3 are planned), and a content hash: SHA-256 of the size and the first and last MiB.

    ``SlideError`` for other formats: they must be copied locally and read with OpenSlide.
    """
    source = _tiff_source(path, storage_options)
    try:
        tiff = TiledTiff(source, path)
    except SlideError as exc:
        if not is_remote(path):
            raise
        raise SlideError(
            f"{path}: cannot be read tile by tile from S3 ({str(exc).removeprefix(path + ': ')}); copy "
            "it to a local disk and extract it from there with OpenSlide"
        ) from None
    try:
        tif = tiff.tiff
        if tif.is_ndpi or tif.is_philips or tif.is_scn or tif.is_ome or tif.is_bif or tif.is_qpi:
            raise SlideError(
                f"{path}: only Aperio SVS and generic tiled TIFF slides are read from S3; copy this "
                "slide to a local disk and extract it from there"
            )
        sizes = [(lv.width, lv.height) for lv in tiff.levels]
        description = tiff.description
        if description.startswith("Aperio"):
            vendor = "aperio"
            properties = _aperio_properties(description)
            value = _positive(properties.get("MPP"))
            mpp = None if value is None else (value, value)
            power = _positive(properties.get("AppMag"))
        else:
            vendor, mpp, power = "generic-tiff", _resolution_mpp(tiff.levels[0].page), None
        profile = tiff.levels[0].page.tags.valueof(_INTER_COLOR_PROFILE)
        digest = content_digest(tif.filehandle, tif.filehandle.size)
    finally:
        tiff.close()
    (w0, h0) = sizes[0]
    info = SlideInfo(
        path=path if is_remote(path) else str(Path(path).resolve()), vendor=vendor,
        dimensions=(w0, h0), level_dimensions=tuple(sizes),
        level_downsamples=tuple((w0 / w + h0 / h) / 2 for w, h in sizes),  # OpenSlide's formula
        mpp=mpp, objective_power=power, icc_profile=None if profile is None else bytes(profile),
    )
    return info, digest


def with_subifd_levels(info: SlideInfo) -> SlideInfo | None:
    """``info`` with the reduced levels of a SubIFD pyramid (OME-TIFF as bioformats writes it,
    pyvips ``subifd=True``), where OpenSlide sees level 0 only; None for any other slide. The
    levels must be tiled 8-bit RGB pages, level 0 OpenSlide's, each smaller than the last;
    downsamples by OpenSlide's formula. Only the tiles reader reads them."""
    if info.level_count != 1 or is_remote(info.path):
        return None
    try:
        with tifffile.TiffFile(info.path) as tif:
            series = tif.series
            pages = [level.keyframe for level in series[0].levels] if series else []
            if len(pages) < 2 or not all(_usable(p) for p in pages):
                return None
            sizes = [(int(p.imagewidth), int(p.imagelength)) for p in pages]
    except (tifffile.TiffFileError, ValueError, OSError):
        return None
    if sizes[0] != tuple(info.dimensions) or any(
        w >= previous_w or h >= previous_h for (previous_w, previous_h), (w, h) in zip(sizes, sizes[1:])
    ):
        return None
    w0, h0 = sizes[0]
    return dataclasses.replace(
        info, level_dimensions=tuple(sizes), level_downsamples=tuple((w0 / w + h0 / h) / 2 for w, h in sizes),
    )


def content_digest(file: Any, size: int) -> str:
    """SHA-256 of a slide file's size, first MiB and last MiB: its content hash where
    OpenSlide's ``quickhash-1`` is not available (reads 2 MiB at most)."""
    digest = hashlib.sha256(str(size).encode())
    file.seek(0)
    digest.update(file.read(1 << 20))
    file.seek(max(0, size - (1 << 20)))
    digest.update(file.read(1 << 20))
    return digest.hexdigest()


def _resolution_mpp(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """Microns per pixel from the resolution tags (centimetre or inch units), as OpenSlide."""
    unit = {2: 25400.0, 3: 10000.0}.get(int(page.tags.valueof("ResolutionUnit", 1)))
    resolutions = [page.tags.valueof(name) for name in ("XResolution", "YResolution")]
    if not unit or not all(resolutions):
        return None
    values = [_positive(unit * r[1] / r[0]) if r[0] else None for r in resolutions]
    return None if None in values else (values[0], values[1])


class SlideReader(ABC):
    """Square patches of one slide at level-0 positions; a context manager."""

    name: ClassVar[str]

    def __init__(self, info: SlideInfo) -> None:
        self.info = info

    @abstractmethod
    def read(self, level: int, x: int, y: int, size: int, out: np.ndarray | None = None) -> np.ndarray:
        """The ``(size, size, 3)`` uint8 patch of ``level`` whose top-left is level-0 ``x, y``."""

    @abstractmethod
    def read_rows(self, level: int, top: int, height: int) -> np.ndarray:
        """Level rows ``[top, top + height)`` of ``level``, all its width: ``(height, width, 3)`` uint8."""

    def read_level(self, level: int, reduce_by: int = 1) -> np.ndarray:
        """The whole of ``level``, ``(height, width, 3)`` uint8; with ``reduce_by`` > 1 reduced by
        that whole factor (each pixel the mean of the pixels it covers, the size rounded up),
        read in strips of about 64 MiB, so that a level of any size (a slide without a pyramid)
        needs no more memory than the strip and the result."""
        width, height = self.info.level_dimensions[level]
        if reduce_by <= 1:
            return self.read_rows(level, 0, height)
        rows = max(1, _LEVEL_STRIP_BYTES // (3 * width * reduce_by)) * reduce_by  # whole boxes per strip
        return np.concatenate([
            np.asarray(Image.fromarray(self.read_rows(level, top, min(rows, height - top))).reduce(reduce_by))
            for top in range(0, height, rows)
        ])

    def read_patches(
        self, level: int, xs: np.ndarray, ys: np.ndarray, groups: np.ndarray, size: int, out: np.ndarray
    ) -> None:
        """Patches at ``xs, ys`` into ``out``; ``groups`` (the annotation of each) marks
        patches that lie close together."""
        for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist())):
            self.read(level, x, y, size, out[i])

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


class TileReader(SlideReader):
    """The level's own pixels, cropped from tiles decoded once while the reader is open."""

    name = "tiles"

    def __init__(self, info: SlideInfo, storage_options: Mapping[str, str] | None = None) -> None:
        super().__init__(info)
        self.source = _tiff_source(info.path, storage_options)
        self.tiff = TiledTiff(self.source, info.path, info.level_dimensions)

    def read(self, level: int, x: int, y: int, size: int, out: np.ndarray | None = None) -> np.ndarray:
        downsample = self.info.level_downsamples[level]
        return self.tiff.region(level, level_px(x, downsample), level_px(y, downsample), size, size, out)

    def read_rows(self, level: int, top: int, height: int) -> np.ndarray:
        return self.tiff.region(level, 0, top, self.info.level_dimensions[level][0], height)

    def close(self) -> None:
        self.tiff.close()


def equal_runs(keys: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of equal consecutive values."""
    edges = np.flatnonzero(np.diff(keys)) + 1
    bounds = np.concatenate([[0], edges, [len(keys)]]).tolist()
    return list(zip(bounds[:-1], bounds[1:])) if len(keys) else []


class OpenSlideReader(SlideReader):
    """OpenSlide's ``read_region``, composited onto white (interpolated at fractional levels)."""

    name = "openslide"

    def __init__(self, info: SlideInfo, storage_options: Mapping[str, str] | None = None) -> None:
        super().__init__(info)
        if is_remote(info.path):
            raise SlideError(
                f"{info.path}: OpenSlide reads local files only; copy the slide to a local disk, or "
                f"use {option('reader', 'tiles')} (Aperio SVS and generic tiled TIFF)"
            )
        self.slide = open_slide(info.path)

    def read(self, level: int, x: int, y: int, size: int, out: np.ndarray | None = None) -> np.ndarray:
        rgb = read_rgb(self.slide, (x, y), level, (size, size))
        if out is None:
            return rgb
        out[...] = rgb
        return out

    def read_rows(self, level: int, top: int, height: int) -> np.ndarray:
        # level-0 y whose level row is ``top`` (OpenSlide floors y / downsample); at a fractional
        # downsample it interpolates the strip by the remainder, under a pixel
        y0 = math.ceil(top * self.info.level_downsamples[level])
        return read_rgb(self.slide, (0, y0), level, (self.info.level_dimensions[level][0], height))

    def read_patches(
        self, level: int, xs: np.ndarray, ys: np.ndarray, groups: np.ndarray, size: int, out: np.ndarray
    ) -> None:
        """At a whole downsample, the patches of one group come from one read of their union
        (each tile decoded once), cropped: identical to per-patch reads since every ``x, y``
        sits on the level's grid. Elsewhere OpenSlide interpolates: one read per patch."""
        downsample = self.info.level_downsamples[level]
        step = int(downsample)
        for start, stop in equal_runs(groups):
            px, py = xs[start:stop] // step, ys[start:stop] // step
            x0, y0 = int(px.min()), int(py.min())
            width, height = int(px.max()) - x0 + size, int(py.max()) - y0 + size
            if float(downsample).is_integer() and stop - start > 1 and width * height <= _MAX_REGION_PX:
                region = read_rgb(self.slide, (x0 * step, y0 * step), level, (width, height))
                for i in range(start, stop):
                    dx, dy = int(px[i - start]) - x0, int(py[i - start]) - y0
                    out[i] = region[dy : dy + size, dx : dx + size]
            else:
                super().read_patches(level, xs[start:stop], ys[start:stop], groups[start:stop], size, out[start:stop])

    def close(self) -> None:
        self.slide.close()


_READER_CLASSES: dict[str, type[SlideReader]] = {"tiles": TileReader, "openslide": OpenSlideReader}


def choose_reader(info: SlideInfo, requested: str, storage_options: Mapping[str, str] | None = None) -> str:
    """The reader for a slide: ``auto`` gives ``tiles`` for Aperio SVS and generic tiled TIFF
    (OpenSlide's vendors ``aperio``, ``generic-tiff``) where tifffile reads the pyramid with
    OpenSlide's level sizes and every level's codec decodes, else ``openslide``; ``tiles``
    insists on tiles for any TIFF passing those checks; ``requested`` is one of ``READERS``.
    ``ParameterError`` for an unknown name, ``SlideError`` when the requested reader cannot
    read this slide (``auto`` on S3 needs ``tiles``)."""
    return reader_choice(info, requested, storage_options)[0]


def reader_choice(
    info: SlideInfo, requested: str, storage_options: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """``choose_reader``'s answer and, in words, why."""
    if requested not in READERS:
        raise ParameterError(f"unknown reader {requested!r}; choose one of {', '.join(READERS)}")
    if requested == "openslide":
        OpenSlideReader(info, storage_options).close()
        return "openslide", "asked for"
    if requested == "auto" and info.vendor not in _TILE_VENDORS:
        # e.g. Ventana's overlapping tiles: OpenSlide places them, tifffile does not
        return "openslide", (
            f"OpenSlide's vendor is {info.vendor or 'unknown'}; auto reads tiles only of "
            f"{' and '.join(_TILE_VENDORS)} slides (tested pixel for pixel against OpenSlide)"
        )
    try:
        with TileReader(info, storage_options) as tiles:
            tiles.tiff.check_codecs()
    except SlideError as exc:
        if requested == "tiles" or is_remote(info.path):
            raise
        return "openslide", f"its tiles cannot be read directly ({str(exc).removeprefix(f'{info.path}: ')})"
    return "tiles", (
        "tifffile finds a tiled 8-bit RGB pyramid with OpenSlide's level sizes and every "
        "level's tiles decode"
    )


def open_reader(info: SlideInfo, reader: str, storage_options: Mapping[str, str] | None = None) -> SlideReader:
    """An open ``SlideReader`` of kind ``reader`` (``tiles`` or ``openslide``) on the slide."""
    return _READER_CLASSES[reader](info, storage_options)


def openslide_origin(level0: int, downsample: float) -> tuple[int, float]:
    """Where OpenSlide's ``read_region`` from level-0 ``level0`` starts on a level: the level
    pixel under its first column (or row) and the sub-pixel fraction it interpolates by.

    From ``level0 >= 0`` it paints the level at ``level0 / downsample``: pixel
    ``floor(level0 / downsample)``, fraction the rest. From ``level0 < 0`` it paints the level
    from its column 0, shifted right by ``-level0 / downsample`` truncated to whole pixels
    (openslide.c ``read_region``): level pixel ``-trunc(-level0 / downsample)``, no fraction.
    So at a fractional downsample a region left of (or above) the slide starts one level pixel
    later than ``level_px`` (which floors) wherever the division is not whole.
    """
    if level0 < 0:
        return -int(-level0 / downsample), 0.0  # int() truncates, as C's conversion does
    pixel = level_px(level0, downsample)
    return pixel, level0 / downsample - pixel


def interpolate_like_openslide(tiles: TileReader, level: int, x: int, y: int, size: int) -> np.ndarray:
    """What OpenSlide's ``read_region`` gives at a fractional level, from the level's own pixels:
    bilinear interpolation at ``openslide_origin`` (per axis: the sub-pixel offset
    ``x / downsample - floor(x / downsample)`` from ``x >= 0``, whole pixels from ``x < 0``),
    as float. cairo's fixed-point weights put OpenSlide within a few levels of this; a
    one-pixel slip is tens of levels off."""
    downsample = tiles.info.level_downsamples[level]
    (px, fx), (py, fy) = openslide_origin(x, downsample), openslide_origin(y, downsample)
    own = tiles.tiff.region(level, px, py, size + 1, size + 1).astype(np.float32)
    rows = (1 - fy) * own[:-1] + fy * own[1:]
    return (1 - fx) * rows[:, :-1] + fx * rows[:, 1:]

