"""Slides: geometry from OpenSlide and RGB region reads composited onto white."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openslide
from PIL import Image

from .._errors import ParameterError, SlideError, option

__all__ = [
    "Resolution", "ResolutionOptions", "SlideInfo", "composite_on_white", "level0_from_level_px",
    "open_slide", "read_rgb", "resize_patch", "resolve_resolution", "slide_info",
]


def _positive_finite(name: str, value: float | None, unit: str = "") -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ParameterError(f"{option(name)} must be a positive number{unit}, got {value}")


@dataclass(frozen=True)
class ResolutionOptions:
    """Which pixels a patch holds: ``level`` (default 0), or ``mpp`` microns per pixel, or
    ``magnification`` (e.g. 20 for 20x); ``patch_size`` pixels of that resolution per side."""

    level: int | None = None
    mpp: float | None = None
    magnification: float | None = None
    patch_size: int = 256

    def __post_init__(self) -> None:
        given = [name for name in ("level", "mpp", "magnification") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ParameterError(
                f"give only one of {option('level')}, {option('mpp')} and {option('magnification')}"
            )
        if self.level is not None and self.level < 0:
            raise ParameterError(f"{option('level')} must be 0 or more, got {self.level}")
        _positive_finite("mpp", self.mpp, " of microns per pixel")
        _positive_finite("magnification", self.magnification)
        if self.patch_size < 1:
            raise ParameterError(f"{option('patch_size')} must be at least 1 pixel, got {self.patch_size}")

    @property
    def recorded_level(self) -> int | None:
        """The level as recorded: 0 when no resolution was asked for, None with mpp/magnification."""
        return 0 if self.level is None and self.mpp is None and self.magnification is None else self.level


@dataclass(frozen=True)
class SlideInfo:
    """Geometry and provenance of one slide, as OpenSlide reports it.

    ``level_downsamples`` are the slide's real factors (Aperio levels are ~4, e.g. 4.00009,
    never assumed to be ``2**level``); ``mpp`` is level-0 microns per pixel ``(x, y)`` or None;
    ``icc_profile`` the bytes of the ICC colour profile the slide embeds, or None.
    """

    path: str
    vendor: str | None
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    objective_power: float | None
    icc_profile: bytes | None = field(default=None, repr=False)

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def check_level(self, level: int) -> None:
        """Raise ``ParameterError`` unless ``level`` is one of the slide's levels."""
        if not 0 <= level < self.level_count:
            raise ParameterError(
                f"{self.path}: level {level} does not exist; this slide has levels "
                f"0..{self.level_count - 1} (downsamples "
                f"{', '.join(f'{d:g}' for d in self.level_downsamples)})"
            )

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> SlideInfo:
        """The record of a slide table entry (``to_attrs``; extra keys are ignored)."""
        mpp = attrs.get("mpp")
        return cls(
            path=attrs["path"], vendor=attrs.get("vendor"), dimensions=tuple(attrs["dimensions"]),
            level_dimensions=tuple(tuple(d) for d in attrs["level_dimensions"]),
            level_downsamples=tuple(float(d) for d in attrs["level_downsamples"]),
            mpp=None if mpp is None else (float(mpp[0]), float(mpp[1])),
            objective_power=attrs.get("objective_power"),
        )

    def to_attrs(self) -> dict[str, Any]:
        """A JSON-ready dict of this record (without the profile: schema 1 had none)."""
        attrs = asdict(self)
        del attrs["icc_profile"]
        attrs["dimensions"] = list(self.dimensions)
        attrs["level_dimensions"] = [list(d) for d in self.level_dimensions]
        attrs["level_downsamples"] = list(self.level_downsamples)
        attrs["mpp"] = None if self.mpp is None else list(self.mpp)
        return attrs


@dataclass(frozen=True)
class Resolution:
    """How patches are read: ``read_size_px`` pixels of ``level`` per side, resized to the patch.

    ``mpp`` is the effective microns per pixel of the stored patches (None when the slide has
    no mpp metadata).
    """

    level: int
    read_size_px: int
    mpp: float | None


def resolve_resolution(
    info: SlideInfo,
    patch_size: int,
    *,
    level: int | None = None,
    mpp: float | None = None,
    magnification: float | None = None,
    tolerance: float = 0.05,
) -> Resolution:
    """The level (and read size) that gives patches at ``mpp`` microns per pixel or at
    ``magnification`` (e.g. 20 for 20x), or simply ``level``.

    A level within ``tolerance`` (relative) of the target is read as is; otherwise the next
    finer level is read over a larger footprint and resized with an anti-aliasing filter.
    Raises ``ParameterError`` for conflicting options, a target finer than level 0, or a
    slide without the metadata the target needs.
    """
    ResolutionOptions(level=level, mpp=mpp, magnification=magnification, patch_size=patch_size)  # checks them
    base_mpp = None if info.mpp is None else (info.mpp[0] + info.mpp[1]) / 2
    if mpp is None and magnification is None:
        level = 0 if level is None else level
        info.check_level(level)
        return _fitting(info, Resolution(
            level, patch_size, None if base_mpp is None else base_mpp * info.level_downsamples[level]
        ), patch_size)
    if mpp is not None:
        if base_mpp is None:
            raise ParameterError(
                f"{info.path}: the slide records no microns per pixel, so {option('mpp')} cannot be "
                f"resolved; choose a {option('level')} instead"
            )
        target = mpp / base_mpp
    else:
        if info.objective_power is None:
            raise ParameterError(
                f"{info.path}: the slide records no objective power, so {option('magnification')} "
                f"cannot be resolved; choose a {option('level')} instead"
            )
        target = info.objective_power / magnification
    if target < 1 - tolerance:
        # level 0 as the slide records it (what it does not record left out), and the fix in the
        # units asked for
        finest = ", ".join(
            ([] if info.objective_power is None else [f"{info.objective_power:g}x"])
            + ([] if base_mpp is None else [f"{base_mpp:.3g} mpp"])
        )
        if mpp is not None and base_mpp is not None:  # base_mpp: checked above
            asked, fix = option("mpp", _shown(mpp)), f"{option('mpp', _shown(base_mpp))} or coarser"
        else:  # magnification, with the objective power checked above
            asked = option("magnification", _shown(magnification or 0))
            fix = f"{option('magnification', _shown(info.objective_power or 0))} or less"
        raise ParameterError(
            f"{info.path}: {asked} is finer than level 0 ({finest}); ask for {fix}, or choose a "
            f"{option('level')} (wsizarr does not upsample)"
        )
    downsamples = np.asarray(info.level_downsamples)
    close = np.flatnonzero(np.abs(downsamples / target - 1) <= tolerance)
    if close.size:
        chosen = int(close[np.argmin(np.abs(downsamples[close] / target - 1))])
        read_size = patch_size
    else:
        chosen = int(np.flatnonzero(downsamples <= target).max())
        read_size = int(round(patch_size * target / downsamples[chosen]))
    effective = None
    if base_mpp is not None:
        effective = base_mpp * downsamples[chosen] * read_size / patch_size
    return _fitting(info, Resolution(chosen, read_size, effective), patch_size)


def _shown(value: float) -> float | int:
    """``value`` as an error message shows it: 40 rather than 40.0, 0.252 rather than 0.25193."""
    rounded = float(f"{value:.3g}")
    return int(rounded) if rounded.is_integer() else rounded


def _fitting(info: SlideInfo, resolution: Resolution, patch_size: int) -> Resolution:
    """``resolution``, unless one patch would cover more than the whole level."""
    width, height = info.level_dimensions[resolution.level]
    if resolution.read_size_px > max(width, height):
        raise ParameterError(
            f"{info.path}: a {patch_size}-px patch covers {resolution.read_size_px} px of level "
            f"{resolution.level}, more than the whole level ({width}x{height}); choose a smaller "
            "patch size or a finer resolution"
        )
    return resolution


def resize_patch(rgb: np.ndarray, patch_size: int) -> np.ndarray:
    """Resize a square RGB region to ``patch_size`` with an anti-aliasing (Lanczos) filter."""
    if rgb.shape[0] == patch_size:
        return rgb
    image = Image.fromarray(rgb).resize((patch_size, patch_size), Image.Resampling.LANCZOS)
    return np.asarray(image)


def open_slide(path: str | Path) -> openslide.OpenSlide:
    """Open a slide with OpenSlide; ``SlideError`` names the file and the fix on failure."""
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: slide not found; check the path")
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(
            f"{path}: OpenSlide does not recognise this file as a whole-slide image; "
            "convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave IN OUT --tile --pyramid`)"
        ) from None
    except openslide.OpenSlideError as exc:
        raise SlideError(
            f"{path}: OpenSlide cannot read this slide ({exc}); the file may be corrupt or "
            "truncated, copy it again"
        ) from None


_ICC_SIZE = "openslide.icc-size"  # OpenSlide 4 sets it when the slide has a profile


def _float_property(slide: openslide.OpenSlide, key: str) -> float | None:
    try:
        value = float(slide.properties[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def slide_info(slide: openslide.OpenSlide, path: str | Path) -> SlideInfo:
    """The ``SlideInfo`` of an open slide."""
    mpp_x = _float_property(slide, openslide.PROPERTY_NAME_MPP_X)
    mpp_y = _float_property(slide, openslide.PROPERTY_NAME_MPP_Y)
    return SlideInfo(
        path=str(Path(path).resolve()),
        vendor=slide.properties.get(openslide.PROPERTY_NAME_VENDOR),
        dimensions=tuple(slide.dimensions),
        level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        mpp=None if mpp_x is None or mpp_y is None else (mpp_x, mpp_y),
        objective_power=_float_property(slide, openslide.PROPERTY_NAME_OBJECTIVE_POWER),
        icc_profile=_icc_profile(slide),
    )


def _icc_profile(slide: openslide.OpenSlide) -> bytes | None:
    """The slide's ICC profile as embedded (``color_profile`` would give LittleCMS's
    re-serialisation, not the same bytes): OpenSlide attaches it to every region it reads."""
    if _ICC_SIZE not in slide.properties:
        return None
    return _read_region(slide, (0, 0), 0, (1, 1)).info.get("icc_profile")


def level0_from_level_px(level_px: np.ndarray, downsample: float) -> np.ndarray:
    """Level-0 coordinates (int64) that OpenSlide maps onto the given level pixel positions.

    OpenSlide reads level ``L`` at ``floor(x0 / downsample)``; the smallest integer ``x0`` with
    that floor equal to ``level_px`` puts every read on the level's pixel grid, which makes crops
    of a large read identical to reads of the crops themselves.
    """
    level_px = np.asarray(level_px, dtype=np.int64)
    level0 = np.ceil(level_px * downsample - 1e-7).astype(np.int64)
    level0 += np.floor(level0 / downsample).astype(np.int64) < level_px
    return level0


def _read_region(
    slide: openslide.OpenSlide, level0_xy: tuple[int, int], level: int, size: tuple[int, int]
) -> Image.Image:
    try:
        return slide.read_region(level0_xy, level, size)
    except openslide.OpenSlideError as exc:
        raise SlideError(
            f"reading {size[0]}x{size[1]} px at level {level}, level-0 {level0_xy} failed "
            f"({exc}); the slide file may be corrupt"
        ) from None


def read_rgb(
    slide: openslide.OpenSlide, level0_xy: tuple[int, int], level: int, size: tuple[int, int]
) -> np.ndarray:
    """Read a ``(height, width, 3)`` uint8 region, transparent pixels composited onto white.

    ``level0_xy`` is the top-left corner in level-0 pixels and ``size`` is ``(width, height)``
    in pixels of ``level``. Pixels outside the slide or its scanned area come back white, never
    black. ``SlideError`` when OpenSlide cannot read the region.
    """
    image = _read_region(slide, level0_xy, level, size)
    if image.getextrema()[3] == (255, 255):  # the common case: fully inside the scanned area
        return np.asarray(image.convert("RGB"))
    return composite_on_white(np.asarray(image))


def composite_on_white(rgba: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """RGB of a straight-alpha RGBA array composited onto white, rounding to nearest.

    Writes into ``out`` (same height and width, 3 channels, uint8) when given, which saves a
    copy; returns the RGB array.
    """
    if out is None:
        out = np.empty((*rgba.shape[:-1], 3), np.uint8)
    alpha = rgba[..., 3]
    if alpha.min() == 255:  # the common case: fully inside the scanned area
        out[...] = rgba[..., :3]
        return out
    a = alpha[..., None].astype(np.uint32)
    out[...] = (rgba[..., :3].astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out
