"""Looking at a store: a contact sheet per label, patch boxes on the slide, an HTML report."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr
from PIL import Image, ImageDraw, ImageFont

from .._errors import ParameterError, option
from .._locations import Location, parse_location
from .._output import check_output_file, output_file
from .._text import count
from ..annotations._files import read_annotations
from ..slides._slide import open_slide
from ..store._manifest import Manifest, SlideTable
from ..store._manifest import read_annotations as read_stored_annotations
from ..store._reader import PatchReader
from ..store._store import open_store, read_manifest, slide_table, store_info

__all__ = ["LABEL_COLOURS", "overlay", "preview", "write_report"]

LABEL_COLOURS = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 0, 128), (170, 110, 40),
)
_UNLABELLED = (90, 90, 90)
_TILE_PX = 128
_CAPTION_PX = 14
_COLUMNS = 8
_PER_LABEL = 16  # patches per label on a contact sheet
_THUMBNAIL_PX = 1600  # the longer side of an overlay
_PANEL_HEIGHT_PX = 150  # of the histograms, which share the contact sheet's width
_BINS = 32


def _colour(code: int) -> tuple[int, int, int]:
    return _UNLABELLED if code < 0 else LABEL_COLOURS[code % len(LABEL_COLOURS)]


def _save_png(image: Image.Image, out: str | Path, overwrite: bool) -> Path:
    with output_file(out, overwrite=overwrite) as partial:
        image.save(partial, "PNG")
    return Path(out)


def preview(
    store: str | Path | Location, out: str | Path, *, per_label: int = _PER_LABEL, seed: int = 0,
    overwrite: bool = False, storage_options: Mapping[str, str] | None = None,
) -> Path:
    """Write a PNG contact sheet: a block of up to ``per_label`` random patches per label, each
    captioned ``s{slide} a{annotation} L{level} {x},{y}``, and below it a histogram per quality
    measure with a line per label (when the store has them). Returns the PNG's path.
    ``ParameterError`` when ``out`` exists (unless ``overwrite``) or its folder does not."""
    if per_label < 1:
        raise ParameterError(f"patches per label must be at least 1, got {per_label}")
    location = parse_location(store, storage_options)
    sheet = _contact_sheet(location, per_label, seed)
    histograms = _quality_histograms(open_store(location))
    if histograms is not None:
        combined = Image.new("RGB", (sheet.width, sheet.height + histograms.height), "white")
        combined.paste(sheet, (0, 0))
        combined.paste(histograms, (0, sheet.height))
        sheet = combined
    return _save_png(sheet, out, overwrite)


def _quality_histograms(group: zarr.Group) -> Image.Image | None:
    """A histogram per quality measure, one line per label in its colour (each label's share of
    its patches per bin); sharpness on a log10 axis. None for a store without quality arrays."""
    manifest = read_manifest(group)
    if not manifest.quality:
        return None
    labels = np.asarray(group["label"][:])
    codes = sorted(set(labels.tolist()))
    width, height = _COLUMNS * _TILE_PX // len(manifest.quality), _PANEL_HEIGHT_PX
    image = Image.new("RGB", (_COLUMNS * _TILE_PX, height + 20 + 16 * len(codes)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for column, name in enumerate(manifest.quality):
        values = np.asarray(group[name][:], np.float64)
        log = name == "sharpness"
        if log:
            values = np.log10(np.maximum(values, 1))
        low, high = (0.0, max(5.0, float(np.nanmax(values, initial=0)))) if log else (0.0, 1.0)
        left, bottom = column * width, height - 14
        draw.rectangle((left + 4, 16, left + width - 4, bottom), outline="black")
        draw.text((left + 6, 2), f"{name}{' (log10)' if log else ''}", fill="black", font=font)
        draw.text((left + 4, bottom + 1), f"{low:g}", fill="black", font=font)
        draw.text((left + width - 30, bottom + 1), f"{high:g}", fill="black", font=font)
        for code in codes:
            mine = values[(labels == code) & ~np.isnan(values)]
            if not mine.size:
                continue
            counts, _ = np.histogram(mine, bins=_BINS, range=(low, high))
            shares = counts / mine.size
            xs = left + 5 + (np.arange(_BINS + 1) * (width - 10) / _BINS)
            points = []
            for k, share in enumerate(shares.tolist()):
                y = bottom - 1 - share * (bottom - 18)
                points += [(float(xs[k]), y), (float(xs[k + 1]), y)]
            draw.line(points, fill=_colour(code), width=2)
    for row, code in enumerate(codes):
        name = manifest.label_names[code] if code >= 0 else "(unlabelled)"
        top = height + 4 + 16 * row
        draw.rectangle((6, top, 16, top + 10), fill=_colour(code))
        draw.text((22, top - 1), f"{name} ({count(int((labels == code).sum()), 'patch')})", fill="black", font=font)
    return image


def _contact_sheet(location: Location, per_label: int, seed: int) -> Image.Image:
    group = open_store(location)
    label_names = read_manifest(group).label_names
    reader = PatchReader(location, group=group)
    labels = np.asarray(group["label"][:])
    rng = np.random.default_rng(seed)
    blocks = []
    for code in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == code)
        blocks.append((code, np.sort(rng.choice(members, size=min(per_label, members.size), replace=False))))
    cell = _TILE_PX + _CAPTION_PX
    height = sum(20 + cell * -(-len(picks) // _COLUMNS) for _, picks in blocks)
    sheet = Image.new("RGB", (_COLUMNS * _TILE_PX, max(height, 1)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    top = 0
    coords = {name: np.asarray(group[name][:]) for name in ("x", "y", "level", "annotation_id", "slide")}
    for code, picks in blocks:
        name = label_names[code] if code >= 0 else "(unlabelled)"
        draw.rectangle((0, top, sheet.width, top + 19), fill=_colour(code))
        draw.text((4, top + 4), f"{name}: {count(int((labels == code).sum()), 'patch')}", fill="white", font=font)
        top += 20
        for k, (i, patch) in enumerate(zip(picks.tolist(), reader.read_patches(picks))):
            left, row_top = (k % _COLUMNS) * _TILE_PX, top + (k // _COLUMNS) * cell
            tile = Image.fromarray(patch).resize((_TILE_PX, _TILE_PX))
            sheet.paste(tile, (left, row_top))
            caption = (f"s{coords['slide'][i]} a{coords['annotation_id'][i]} L{coords['level'][i]} "
                       f"{coords['x'][i]},{coords['y'][i]}")
            draw.text((left + 2, row_top + _TILE_PX + 1), caption, fill="black", font=font)
        top += cell * -(-len(picks) // _COLUMNS)
    return sheet


def overlay(
    store: str | Path | Location, out: str | Path, *, slide: str | int | None = None,
    max_px: int = _THUMBNAIL_PX, overwrite: bool = False, storage_options: Mapping[str, str] | None = None,
) -> Path:
    """Write the slide's thumbnail with its annotation outlines (holes too; a tiled slide's
    tissue outline among them) and the patch boxes in each label's colour, and a legend. ``slide`` is an index or a file name or stem (default: the
    only slide). Returns the PNG's path. ``ParameterError`` when ``out`` exists (unless
    ``overwrite``) or its folder does not."""
    if max_px < 1:
        raise ParameterError(f"the thumbnail size must be at least 1 px, got {max_px}")
    return _save_png(_overlay_image(parse_location(store, storage_options), slide, max_px), out, overwrite)


def _overlay_image(location: Location, slide: str | int | None, max_px: int) -> Image.Image:
    group = open_store(location)
    manifest = read_manifest(group)
    slides = slide_table(group)
    index = _slide_index(slides.paths, slide)
    info = slides.info(index)
    with open_slide(info.path) as handle:
        thumbnail = handle.get_thumbnail((max_px, max_px)).convert("RGB")
    scale = thumbnail.width / info.dimensions[0]
    draw = ImageDraw.Draw(thumbnail)
    outlined = set()
    for code, rings in _outlines(group, manifest, slides, index):
        outlined.add(code)
        for ring in rings:
            points = [(float(x) * scale, float(y) * scale) for x, y in ring]
            if len(points) >= 3:
                draw.polygon(points, outline=_colour(code), width=2)
    mine = np.flatnonzero(np.asarray(group["slide"][:]) == index)
    xs, ys = np.asarray(group["x"][:])[mine], np.asarray(group["y"][:])[mine]
    labels, levels = np.asarray(group["label"][:])[mine], np.asarray(group["level"][:])[mine]
    read_size = slides.resolution(index).read_size_px
    for x, y, code, level in zip(xs.tolist(), ys.tolist(), labels.tolist(), levels.tolist()):
        extent = read_size * info.level_downsamples[level] * scale
        draw.rectangle((x * scale, y * scale, x * scale + extent, y * scale + extent), outline=_colour(code))
    font = ImageFont.load_default()
    patched = set(labels.tolist())
    names = sorted(patched | outlined)  # with the labels only outlines have (a tiled slide's tissue)
    draw.rectangle((4, 4, 170, 10 + 16 * len(names)), fill="white", outline="black")
    for row, code in enumerate(names):
        name = manifest.label_names[code] if code >= 0 else "(unlabelled)"
        what = int((labels == code).sum()) if code in patched else "outline"
        draw.rectangle((10, 9 + 16 * row, 20, 19 + 16 * row), fill=_colour(code))
        draw.text((26, 8 + 16 * row), f"{name} ({what})", fill="black", font=font)
    return thumbnail


def _outlines(
    group: zarr.Group, manifest: Manifest, slides: SlideTable, index: int,
) -> list[tuple[int, tuple[np.ndarray, ...]]]:
    """The label code and rings (exterior, then holes) of each annotation of slide ``index``:
    from the store's annotation table (schema 1 stores: read again from the recorded annotation
    file)."""
    if manifest.legacy is None:
        first = int(slides.columns["first_annotation"][index])
        rows = slice(first, first + int(slides.columns["n_annotations"][index]))
        return [(a.label, a.rings) for a in read_stored_annotations(group["annotations"], rows) if not a.exclusion]
    source = slides.annotations(index)
    if source is None:
        return []
    codes = {name: code for code, name in enumerate(manifest.label_names)}
    return [(codes.get(a.label, -1), (a.vertices, *a.holes)) for a in read_annotations(source)]


def _slide_index(paths: list[str], slide: str | int | None) -> int:
    if slide is None:
        if len(paths) != 1:
            raise ParameterError(f"the store holds {len(paths)} slides; choose one ({option('slide')})")
        return 0
    if isinstance(slide, int) or str(slide).isdigit():
        if 0 <= int(slide) < len(paths):
            return int(slide)
    for index, path in enumerate(paths):
        if slide in (Path(path).name, Path(path).stem):
            return index
    shown = ", ".join(Path(p).name for p in paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    raise ParameterError(f"no slide {slide!r} in the store; its slides are {shown}")


_READ_COLUMNS = ("reader", "level", "downsample", "read_size_px", "effective_mpp", "color")


def _slides_read(slides: list[dict[str, object]]) -> str:
    """One row per slide: the reader, level (and its downsample), level pixels read per patch,
    microns per pixel of the patches and the colour option's effect."""
    header = "".join(f"<th>{name}</th>" for name in ("slide", *_READ_COLUMNS))
    rows = "".join(
        f"<tr><td>{html.escape(Path(str(slide['path'])).name)}</td>"
        + "".join(f"<td>{html.escape(_cell(slide[name]))}</td>" for name in _READ_COLUMNS) + "</tr>"
        for slide in slides
    )
    return f"<table><tr>{header}</tr>{rows}</table>"


def _cell(value: object) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _png_data_uri(image: Image.Image) -> str:
    data = io.BytesIO()
    image.save(data, "PNG")
    return "data:image/png;base64," + base64.b64encode(data.getvalue()).decode()


def write_report(
    store: str | Path | Location, out: str | Path, *, overwrite: bool = False,
    storage_options: Mapping[str, str] | None = None,
) -> Path:
    """Write a self-contained HTML report (parameters, counts per label and slide, the contact
    sheet and every slide's overlay, images embedded) viewable offline. ``ParameterError`` when
    ``out`` exists (unless ``overwrite``) or its folder does not."""
    check_output_file(out, overwrite=overwrite)  # before the slow part
    location = parse_location(store, storage_options)
    info = store_info(location)
    paths = slide_table(open_store(location)).paths
    images = [("Patches per label", _contact_sheet(location, _PER_LABEL, 0))]
    histograms = _quality_histograms(open_store(location))
    if histograms is not None:
        images.append(("Quality measures per label (share of each label's patches)", histograms))
    for index, path in enumerate(paths):
        images.append((f"Slide {index}: {Path(path).name}", _overlay_image(location, index, _THUMBNAIL_PX)))

    def table(rows: Mapping[str, object]) -> str:
        return "<table>" + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items()
        ) + "</table>"

    body = [
        f"<h1>wsizarr store {html.escape(info['store'])}</h1>",
        f"<p>{count(info['n_patches'], 'patch')} of {'×'.join(map(str, info['patch_shape']))}, "
        f"{info['bytes_on_disk'] / 1e6:.1f} MB in {count(info['files'], 'file')}, codec {html.escape(str(info['codec']))}, "
        f"schema {info['schema_version']}, wsizarr {html.escape(str(info['wsizarr_version']))}</p>",
        "<h2>Patches per label</h2>", table(info["per_label"]),
        "<h2>Patches per slide</h2>", table(info["per_slide"]),
        "<h2>How each slide was read</h2>", _slides_read(info["slides"]),
        "<h2>Parameters</h2>", table(info["parameters"]),
    ]
    if info["quality"]:
        body += ["<h2>Quality measures: median [5th-95th percentile] per label</h2>", table({
            name: "; ".join(f"{label}: {p50:.3g} [{p5:.3g}-{p95:.3g}]" for label, (p5, p50, p95) in per_label.items())
            for name, per_label in info["quality"].items()
        })]
    for title, image in images:
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='{_png_data_uri(image)}'>")
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}"
    with output_file(out, overwrite=overwrite) as partial:
        partial.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>wsizarr report</title>"
                           f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return Path(out)
