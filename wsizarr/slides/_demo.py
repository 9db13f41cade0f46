"""Synthetic H&E-like pyramidal slides and their ASAP annotations, for the demo and the tests."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lxml import etree
from PIL import Image, ImageDraw

__all__ = ["DemoSlide", "write_demo_annotations", "write_demo_slide"]

_TILE_PX = 256
_STROMA_RGB = (232, 172, 205)
_NUCLEUS_RGB = (95, 55, 150)
_GLOMERULUS_RGB = (214, 140, 190)
_BACKGROUND_RGB = (243, 243, 243)


@dataclass(frozen=True)
class DemoSlide:
    """A written synthetic slide: its path and the glomerulus outlines drawn on it."""

    path: Path
    dimensions: tuple[int, int]
    polygons: tuple[np.ndarray, ...]
    labels: tuple[str, ...]


def _glomerulus_polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radii = r * (1 + 0.12 * rng.standard_normal(angles.size)).clip(0.7, 1.3)
    return np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])


def _draw_level0(
    width: int, height: int, n_glomeruli: int, glomerulus_px: int, seed: int
) -> tuple[Image.Image, list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    # tissue: a large ellipse with a wobbly edge; the rest is glass
    mask = Image.new("L", (width, height), 0)
    edge = _glomerulus_polygon(rng, width / 2, height / 2, 1.0)
    edge[:, 0] = width / 2 + (edge[:, 0] - width / 2) * width * 0.46
    edge[:, 1] = height / 2 + (edge[:, 1] - height / 2) * height * 0.46
    ImageDraw.Draw(mask).polygon([tuple(p) for p in edge], fill=255)
    image = Image.new("RGB", (width, height), _BACKGROUND_RGB)
    image.paste(Image.new("RGB", (width, height), _STROMA_RGB), mask=mask)
    draw = ImageDraw.Draw(image)
    polygons: list[np.ndarray] = []
    labels: list[str] = []
    inside = np.asarray(mask) > 0
    while len(polygons) < n_glomeruli:
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        if not inside[int(cy), int(cx)]:
            continue
        polygon = _glomerulus_polygon(rng, cx, cy, glomerulus_px / 2)
        draw.polygon([tuple(p) for p in polygon], fill=_GLOMERULUS_RGB, outline=_NUCLEUS_RGB)
        for _ in range(glomerulus_px // 3):
            nx, ny = polygon.mean(axis=0) + rng.normal(0, glomerulus_px / 6, 2)
            draw.ellipse((nx - 3, ny - 3, nx + 3, ny + 3), fill=_NUCLEUS_RGB)
        polygons.append(polygon)
        labels.append("sclerotic" if rng.random() < 0.25 else "glomerulus")
    n_nuclei = width * height // 900
    xs, ys = rng.uniform(0, width, n_nuclei), rng.uniform(0, height, n_nuclei)
    for nx, ny in zip(xs[inside[ys.astype(int), xs.astype(int)]], ys[inside[ys.astype(int), xs.astype(int)]]):
        draw.ellipse((nx - 2.5, ny - 2, nx + 2.5, ny + 2), fill=_NUCLEUS_RGB)
    pixels = np.array(image)
    for top in range(0, height, 512):  # grain, in row blocks to keep memory small
        block = pixels[top : top + 512].astype(np.int16)
        block += rng.integers(-10, 11, size=(*block.shape[:2], 1), dtype=np.int16)
        pixels[top : top + 512] = block.clip(0, 255)
    return Image.fromarray(pixels), polygons, labels


def _jpeg_tiles(image: Image.Image, quality: int) -> Iterator[bytes]:
    width, height = image.size
    for top in range(0, height, _TILE_PX):
        for left in range(0, width, _TILE_PX):
            tile = Image.new("RGB", (_TILE_PX, _TILE_PX), _BACKGROUND_RGB)
            tile.paste(image.crop((left, top, min(left + _TILE_PX, width), min(top + _TILE_PX, height))))
            buffer = io.BytesIO()
            tile.save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
            yield buffer.getvalue()


def write_demo_slide(
    path: str | Path,
    *,
    width: int = 8000,
    height: int = 6000,
    levels: int = 3,
    downsample: int = 4,
    aperio: bool = True,
    mpp: float = 0.25,
    n_glomeruli: int = 24,
    glomerulus_px: int = 260,
    quality: int = 85,
    seed: int = 0,
    icc_profile: bytes | None = None,
) -> DemoSlide:
    """Write a tiled, JPEG-compressed pyramidal TIFF with H&E-like texture and glomeruli.

    ``aperio=True`` writes an Aperio-style SVS (``Aperio Image Library`` description with MPP and
    AppMag, levels reduced by ``downsample``, a stripped thumbnail page after level 0 as Aperio
    scanners write it); otherwise a generic tiled TIFF with the resolution
    in its tags. Level sizes are floored, so the slide's real downsamples are not exact integers
    unless the size divides evenly. ``icc_profile`` is embedded in level 0 (TIFF tag
    InterColorProfile, where Aperio scanners put theirs). Returns the outlines drawn, in level-0
    pixels.
    """
    path = Path(path)
    image, polygons, labels = _draw_level0(width, height, n_glomeruli, glomerulus_px, seed)
    write_pyramid(
        path, image, levels=levels, downsample=downsample, aperio=aperio, mpp=mpp, quality=quality,
        icc_profile=icc_profile,
    )
    return DemoSlide(path, (width, height), tuple(polygons), tuple(labels))


def write_pyramid(
    path: Path, image: Image.Image, *, levels: int = 3, downsample: int = 4, aperio: bool = True,
    mpp: float = 0.25, quality: int = 85, icc_profile: bytes | None = None,
) -> None:
    """Write ``image`` as level 0 of a tiled, JPEG-compressed pyramidal TIFF (see
    ``write_demo_slide`` for the layout)."""
    import tifffile

    width, height = image.size
    pixels_per_cm = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=width * height > 2**31) as tiff:
        for level in range(levels):
            if level:
                image = image.resize(
                    (max(1, image.width // downsample), max(1, image.height // downsample)),
                    Image.Resampling.BOX,
                )
            if aperio:
                size = f"{width}x{height}" if level == 0 else f"{width}x{height} -> {image.width}x{image.height}"
                description = (
                    f"Aperio Image Library v12.0.15\r\n{size} [0,0 {width}x{height}] "
                    f"({_TILE_PX}x{_TILE_PX}) JPEG/RGB Q={quality}|AppMag = {10 / mpp:g}|MPP = {mpp}"
                )
            else:
                description = f"wsizarr demo slide level {level}"
            tiff.write(
                _jpeg_tiles(image, quality),
                shape=(image.height, image.width, 3),
                dtype=np.uint8,
                tile=(_TILE_PX, _TILE_PX),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(2, 2),
                description=description,
                resolution=(pixels_per_cm / downsample**level,) * 2,
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                iccprofile=None if level else icc_profile,
                metadata=None,
            )
            if aperio and level == 0:
                thumbnail = image.copy()
                thumbnail.thumbnail((768, 768))
                tiff.write(
                    np.asarray(thumbnail), photometric="rgb", compression="jpeg", rowsperstrip=16,
                    description=f"Aperio Image Library v12.0.15\r\n{width}x{height} -> "
                    f"{thumbnail.width}x{thumbnail.height} - |AppMag = {10 / mpp:g}|MPP = {mpp}",
                    metadata=None,
                )


def write_demo_annotations(slide: DemoSlide, path: str | Path) -> Path:
    """Write the slide's glomeruli as an ASAP XML file (groups ``glomerulus``, ``sclerotic``)."""
    path = Path(path)
    root = etree.Element("ASAP_Annotations")
    annotations = etree.SubElement(root, "Annotations")
    for index, (polygon, label) in enumerate(zip(slide.polygons, slide.labels)):
        element = etree.SubElement(
            annotations, "Annotation",
            Name=f"Glomerulus {index}", Type="Polygon", PartOfGroup=label, Color="#F4FA58",
        )
        coordinates = etree.SubElement(element, "Coordinates")
        for order, (x, y) in enumerate(polygon):
            etree.SubElement(coordinates, "Coordinate", Order=str(order), X=f"{x:.3f}", Y=f"{y:.3f}")
    groups = etree.SubElement(root, "AnnotationGroups")
    for name in sorted(set(slide.labels)):
        etree.SubElement(groups, "Group", Name=name, PartOfGroup="None", Color="#64FE2E")
    etree.ElementTree(root).write(str(path), xml_declaration=True, encoding="utf-8", pretty_print=True)
    return path
