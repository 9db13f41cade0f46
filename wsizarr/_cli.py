"""The ``wsizarr`` command line: ``extract``, ``annotations``, ``info``, ``unlock``, ``demo`` and the rest."""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ParameterError, WsizarrError, as_flag
from ._text import count

if TYPE_CHECKING:
    from ._extract import ExtractionSummary
    from ._options import ExtractOptions

__all__ = ["main"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: ESC, CR, BEL, CSI, ...


def _printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters as ``\\x1b``-style escapes."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _say(text: object) -> None:
    """Print ``text`` line by line, each line's control characters escaped."""
    print("\n".join(_printable(line) for line in str(text).split("\n")))


def _print_json(data: object) -> None:
    """Print ``data`` as JSON; json escapes every control character but DEL."""
    print(json.dumps(data, indent=2).replace("\x7f", "\\u007f"))


class _ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} patches")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _option(parser: Any, record: type, name: str, help: str, **kwargs: Any) -> None:
    """Add the flag of option ``name`` of ``record`` (an ``_options`` dataclass): its dest is
    the field's name and its default the field's default, so the two cannot drift apart."""
    default = next(f.default for f in fields(record) if f.name == name)
    if default is False:
        kwargs["action"] = "store_true"
    elif default is True:
        kwargs["action"] = argparse.BooleanOptionalAction  # --name and --no-name
    flag = "--" + name.replace("_", "-")
    parser.add_argument(flag, dest=name, default=default, help=help.format(default=default), **kwargs)


def _add_filter_options(parser: Any) -> None:
    from ._options import FilterOptions

    _option(parser, FilterOptions, "min_tissue", "keep patches with at least this tissue_fraction (0-1)", type=float)
    _option(parser, FilterOptions, "min_sharpness", "keep patches at least this sharp (variance of the Laplacian)", type=float)
    _option(parser, FilterOptions, "max_pen", "keep patches with at most this pen_fraction (0-1)", type=float)


def _add_extract_options(parser: argparse.ArgumentParser) -> Any:
    """The options of an extraction, in groups (resolution and sampling, store layout, quality
    filters, execution); returns the execution group, for a command's own options of that kind."""
    from ._color import COLORS
    from ._options import (
        EXECUTORS, READERS, ExecutionOptions, LayoutOptions, ResolutionOptions, SamplingOptions,
    )

    sampling = parser.add_argument_group("resolution and sampling")
    resolution = sampling.add_mutually_exclusive_group()
    _option(resolution, ResolutionOptions, "level", "pyramid level to read (default 0)", type=int)
    _option(resolution, ResolutionOptions, "mpp", "patch resolution in microns per pixel", type=float)
    _option(resolution, ResolutionOptions, "magnification", "patch magnification, e.g. 20", type=float)
    _option(sampling, ResolutionOptions, "patch_size", "patch side in pixels (default {default})", type=int)
    _option(sampling, SamplingOptions, "sampler", "jitter (default), centroid, grid, random-in-polygon or background")
    _option(sampling, SamplingOptions, "per_annotation", "patches per annotation (default {default})", type=int)
    _option(sampling, SamplingOptions, "stride", "grid stride in pixels (default: patch size)", type=int)
    _option(sampling, SamplingOptions, "min_overlap",
            "grid: least fraction of a patch inside the polygon (default {default})", type=float)
    _option(sampling, SamplingOptions, "background",
            "add N patches from tissue outside every annotation, labelled 'background'", type=int)
    _option(sampling, SamplingOptions, "drop_partial", "leave out patches crossing the slide edge")
    _option(sampling, SamplingOptions, "seed", "random seed of the plan (default {default})", type=int)
    store = parser.add_argument_group("store layout")
    _option(store, LayoutOptions, "masks", "store per-patch annotation masks")
    _option(store, LayoutOptions, "quality",
            "store per-patch quality measures (tissue_fraction, sharpness, pen_fraction, brightness, "
            "saturation; default on)")
    _option(store, LayoutOptions, "shard_size", "patches per shard file (default {default})", type=int)
    _option(store, LayoutOptions, "codec",
            "patch codec: zstd (default, lossless), blosc-lz4 (lossless, fastest), none, "
            "jpegxl (lossless, smallest), jpeg (lossy q90)")
    _option(store, LayoutOptions, "color",
            "unchanged (default): the slide's own pixels; srgb: converted from the slide's ICC "
            "profile to sRGB (slides without one stay unchanged)", choices=COLORS)
    filters = parser.add_argument_group(
        "quality filters", "the whole plan is extracted beside the store, then the patches that pass written into it",
    )
    _add_filter_options(filters)
    execution = parser.add_argument_group("execution")
    _option(execution, ExecutionOptions, "workers", "parallel workers (default: cores)", type=int)
    _option(execution, ExecutionOptions, "executor", "run tasks on threads (default) or processes", choices=EXECUTORS)
    _option(execution, ExecutionOptions, "reader",
            "read the slide's TIFF tiles (the level's own pixels; also from S3) or OpenSlide's "
            "read_region; auto (default): tiles where tifffile reads the pyramid", choices=READERS)
    execution.add_argument(
        "--dask-scheduler", default=None, metavar="ADDRESS",
        help="run the tasks on a dask.distributed cluster (pip install 'wsizarr[dask]')",
    )
    return execution


def _add_annotation_options(parser: Any) -> None:
    from ._options import LABEL_SOURCES, LabelOptions

    _option(parser, LabelOptions, "label_from",
            "ImageScope: label a layer by its name (default) or by its attribute first", choices=LABEL_SOURCES)
    _option(parser, LabelOptions, "exclude_detections", "GeoJSON: leave out QuPath detections")
    _option(parser, LabelOptions, "exclude_labels",
            "comma-separated labels whose annotations are areas to leave out, e.g. _2,Background",
            metavar="LABELS", type=_comma_list)
    _option(parser, LabelOptions, "strict_annotations",
            "refuse a file with degenerate objects (too few points, no area, lines) instead of skipping them")


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def _annotation_kwargs(args: argparse.Namespace) -> dict:
    return {
        "label_from": args.label_from, "exclude_detections": args.exclude_detections,
        "exclude_labels": args.exclude_labels, "strict": args.strict_annotations,
    }


def _record(record: type, args: argparse.Namespace, **values: Any) -> Any:
    """An ``_options`` record from the parsed flags of its fields (and ``values``)."""
    return record(**{f.name: getattr(args, f.name) for f in fields(record) if hasattr(args, f.name)} | values)


def _extract_options(args: argparse.Namespace, mode: str) -> ExtractOptions:
    """The run's options from the flags: each record from its own fields."""
    from ._annotations import parse_label_map
    from ._options import (
        ExecutionOptions, ExtractOptions, FilterOptions, LabelOptions, LayoutOptions, ResolutionOptions,
        SamplingOptions,
    )

    label_map = getattr(args, "label_map", None)
    labels = {"label_map": None if label_map is None else parse_label_map(label_map)}
    if not hasattr(args, "label_from"):  # demo: no annotation options
        labels = {}
    return ExtractOptions(
        resolution=_record(ResolutionOptions, args), sampling=_record(SamplingOptions, args),
        labels=_record(LabelOptions, args, **labels), layout=_record(LayoutOptions, args),
        execution=_record(
            ExecutionOptions, args, client=_dask_client(args.dask_scheduler), progress=_ProgressBar(),
            on_note=print,
        ),
        mode=mode, filters=_record(FilterOptions, args),
    )


def _add_storage_option(parser: Any) -> None:
    parser.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="S3 option (endpoint_url, access_key_id, secret_access_key, session_token, region, "
        "timeout: seconds per request, default 30); default: the AWS_* environment variables",
    )


def _add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def _storage_options(args: argparse.Namespace) -> dict[str, str] | None:
    options = {}
    for item in args.storage_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise WsizarrError(f"--storage-option {item!r}: write KEY=VALUE, e.g. endpoint_url=http://host:9000")
        options[key] = value
    return options or None


_EXTRACT_EXAMPLES = """\
examples:
  wsizarr extract slide.svs --annotations slide.xml --out patches.zarr \\
      --level 1 --patch-size 256 --per-annotation 30 --seed 0
  wsizarr extract slides/*.svs --annotations annotations/ --out cohort.zarr \\
      --mpp 0.5 --sampler grid --min-tissue 0.5 --label-map 'glomerulus=Normal,sclerotic=Abnormal'
  wsizarr extract slide.svs --annotations slide.xml --out patches.zarr \\
      --level 1 --patch-size 256 --per-annotation 30 --seed 0 --resume
      (after Ctrl-C: the same command with --resume writes only the missing shards)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsizarr", description="Annotation-driven patch extraction from whole-slide images into Zarr v3."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    extract = commands.add_parser(
        "extract", help="extract patches around annotations into a store",
        description="Extract patches around the annotations of whole-slide images into one Zarr v3 store.",
        epilog=_EXTRACT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = extract.add_argument_group("input: slides and annotations")
    inputs.add_argument(
        "slides", nargs="+",
        help="whole-slide images (any format OpenSlide reads; s3://bucket/key.svs or an s3:// prefix ending in /)",
    )
    inputs.add_argument(
        "--annotations", required=True,
        help="annotation file, or a folder (or s3:// prefix ending in /) of files named like the slides "
        "(slide.svs -> slide.xml)",
    )
    from ._options import ExecutionOptions, LabelOptions

    inputs.add_argument(
        "--label-map", default=None,
        help="rename or merge labels: 'glomerulus=Normal,sclerotic=Abnormal' or a JSON file",
    )
    _option(inputs, LabelOptions, "keep_only", "keep only the labels the map names")
    _option(inputs, LabelOptions, "label_order",
            "comma-separated label names fixing the label codes (stable across stores)", type=_comma_list)
    _add_annotation_options(inputs)
    store = extract.add_argument_group("output")
    store.add_argument(
        "--out", required=True,
        help="output store: a directory, a .zip file, or s3://bucket/prefix.zarr",
    )
    store.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing wsizarr store (and --report's file); the old store stays until the new one is complete",
    )
    store.add_argument("--resume", action="store_true", help="finish an interrupted extraction")
    store.add_argument("--append", action="store_true", help="add the slides to an existing store")
    store.add_argument("--report", default=None, metavar="HTML", help="also write an HTML report of the store")
    _add_storage_option(store)
    execution = _add_extract_options(extract)
    _option(execution, ExecutionOptions, "strict", "fail on the first unreadable slide")
    annotations = commands.add_parser(
        "annotations", help="what an annotation file holds, before anything is extracted"
    )
    annotations.add_argument("file", help="ASAP or ImageScope XML, QuPath GeoJSON or DSA JSON")
    annotations.add_argument("--slide", default=None, help="count the annotations outside this slide")
    annotations.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_annotation_options(annotations)
    slide = commands.add_parser(
        "slide", help="a slide's levels, downsamples, mpp and vendor, and the reader auto picks for it"
    )
    slide.add_argument("slide", help="a slide file, or s3://bucket/key of an SVS/TIFF")
    slide.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_storage_option(slide)
    info = commands.add_parser("info", help="describe a store")
    info.add_argument("store", help="a directory, a .zip file, or s3://bucket/prefix.zarr")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_storage_option(info)
    pack = commands.add_parser("pack", help="copy a finished store into one uncompressed .zip file")
    pack.add_argument("store", help="a directory or s3://bucket/prefix.zarr")
    pack.add_argument("zip", help="the .zip file to write")
    _add_storage_option(pack)
    unlock = commands.add_parser(
        "unlock", help="remove a store's writer lock left by a writer that is gone",
        description="Remove the writer lock of STORE (<store>.lock beside it, or the S3 object "
        "<prefix>.lock) and print whom it named. Only for a writer that is gone: a running "
        "writer keeps its lock on a local disk, and loses it on S3 (it then stops unfinished).",
    )
    unlock.add_argument("store", help="the --out of the extraction: a directory, a .zip file or s3://bucket/prefix.zarr")
    _add_storage_option(unlock)
    migrate = commands.add_parser(
        "migrate", help="rewrite a store made by an older wsizarr (schema 1) as schema 2, in place",
    )
    migrate.add_argument("store", help="a directory or s3://bucket/prefix.zarr")
    _add_storage_option(migrate)
    verify = commands.add_parser("verify", help="check a store against its plan and its slides")
    verify.add_argument("store")
    verify.add_argument(
        "--sample", type=int, default=64,
        help="patches re-read from the slides after every checksum is checked (default 64; 0: none)",
    )
    verify.add_argument("--seed", type=int, default=0)
    _add_storage_option(verify)
    export = commands.add_parser("export", help="write the patches as image files plus metadata.csv")
    export.add_argument("store")
    export.add_argument("dir", help="output folder")
    export.add_argument("--format", default="png", choices=("png", "jpg"))
    export.add_argument("--label", default=None, help="only the patches of this label")
    export.add_argument("--overwrite", action="store_true", help="replace files of the same names in the folder")
    _add_storage_option(export)
    preview = commands.add_parser("preview", help="a PNG contact sheet of patches per label")
    preview.add_argument("store")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--per-label", type=int, default=16)
    preview.add_argument("--seed", type=int, default=0)
    _add_overwrite_option(preview)
    _add_storage_option(preview)
    overlay = commands.add_parser("overlay", help="the slide thumbnail with annotations and patch boxes")
    overlay.add_argument("store")
    overlay.add_argument("--slide", default=None, help="slide index, file name or stem (default: the only one)")
    overlay.add_argument("--out", required=True, help="PNG file to write")
    _add_overwrite_option(overlay)
    _add_storage_option(overlay)
    report = commands.add_parser("report", help="a self-contained HTML report of a store")
    report.add_argument("store")
    report.add_argument("--out", required=True, help="HTML file to write")
    _add_overwrite_option(report)
    _add_storage_option(report)
    embed = commands.add_parser(
        "embed", help="features from a TorchScript model, added to a store as an array along patch",
        description="Run a TorchScript model over every patch of STORE and add its output as the "
        "float16 array NAME, (N, ...) along patch (one chunk per shard). The model gets float32 "
        "(B, 3, H, W) pixels in [0, 1] (with --normalize imagenet: minus ImageNet's mean, over its "
        "standard deviation) and returns (B, D). Interrupted? Run the same command again: only "
        "the missing shards are computed.",
    )
    embed.add_argument("store", help="a directory, a .zip file, or s3://bucket/prefix.zarr")
    embed.add_argument("--model", required=True, help="a TorchScript file (torch.jit.save)")
    embed.add_argument("--name", required=True, help="the array's name, e.g. features")
    embed.add_argument("--batch-size", type=int, default=None, help="patches per model call (default: a shard's)")
    embed.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    embed.add_argument("--normalize", default=None, choices=("imagenet",), help="normalise the [0, 1] pixels")
    embed.add_argument("--workers", type=int, default=None, help="shards computed at once (default: cores)")
    embed.add_argument("--overwrite", action="store_true", help="replace an added array of that name")
    _add_storage_option(embed)
    subset = commands.add_parser(
        "subset", help="a new store of the patches that match every filter, in store order",
        description="Write the patches of STORE that match every filter into the new store OUT "
        "(patches copied without decoding; slides renumbered, tables cut to the slides kept).",
    )
    subset.add_argument("store", help="the source: a directory, a .zip file or s3://bucket/prefix.zarr")
    subset.add_argument("out", help="the new store: a directory, a .zip file or s3://bucket/prefix.zarr")
    subset.add_argument("--label", dest="labels", action="append", default=None, metavar="LABEL",
                        help="keep this label (repeat for more; '' for unlabelled)")
    subset.add_argument("--slide", dest="slides", action="append", default=None, metavar="SLIDE",
                        help="keep this slide: file name, stem or index (repeat for more)")
    subset.add_argument("--annotation", dest="annotations", action="append", type=int, default=None,
                        metavar="ID", help="keep this annotation id (repeat for more)")
    _add_filter_options(subset)
    subset.add_argument("--exclude-padded", action="store_true", help="leave out patches crossing the slide edge")
    subset.add_argument("--indices", default=None, metavar="FILE",
                        help="keep only these patches: a .npy file or a text file of one index a line")
    subset.add_argument("--workers", type=int, default=None, help="shards written at once (default: cores)")
    subset.add_argument("--overwrite", action="store_true", help="replace OUT if it is a wsizarr store")
    _add_storage_option(subset)
    demo = commands.add_parser("demo", help="generate a synthetic slide with annotations and extract it")
    demo.add_argument("dir", nargs="?", default="wsizarr-demo", help="output folder (default ./wsizarr-demo)")
    _add_extract_options(demo)
    return parser


def _dask_client(address: str | None) -> object:
    if address is None:
        return None
    try:
        from distributed import Client
    except ImportError:
        raise WsizarrError("--dask-scheduler needs dask.distributed: pip install 'wsizarr[dask]'") from None
    try:
        return Client(address, timeout=20)
    except (OSError, TimeoutError) as exc:
        raise WsizarrError(f"cannot reach the dask scheduler at {address} ({exc}); check the address") from None


def _read_indices(path: str | None) -> object:
    """Patch indices from a ``.npy`` file or a text file of one index a line (None: none)."""
    if path is None:
        return None
    import numpy as np

    try:
        return np.load(path) if path.endswith(".npy") else np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as exc:
        raise ParameterError(f"--indices {path}: cannot read patch indices ({exc}); give a .npy file or one integer a line") from None


_SHOWN = 10  # slides listed by `info` (all of them with --json)


def _print_info(store: str, as_json: bool, storage_options: dict[str, str] | None) -> None:
    from ._locations import parse_location
    from ._store import store_info

    info = store_info(parse_location(store, storage_options))
    if as_json:
        _print_json(info)
        return
    state = "complete" if info["complete"] else f"INCOMPLETE ({info['shards_done']}/{count(info['n_shards'], 'shard')}; resume it)"
    _say(f"store       {info['store']}  [{state}]")
    _say(f"patches     {info['n_patches']} x {'x'.join(map(str, info['patch_shape']))} uint8")
    _say(f"chunks      {info['chunks']}  shards {info['shards']}  codec {info['codec']}")
    _say(f"on disk     {info['bytes_on_disk'] / 1e6:.1f} MB in {count(info['files'], 'file')}")
    _say("per label   " + ", ".join(f"{_printable(k)}: {v}" for k, v in info["per_label"].items()))
    per_slide = list(info["per_slide"].items())
    more = f", ... and {count(len(per_slide) - _SHOWN, 'more slide')}" if len(per_slide) > _SHOWN else ""
    _say("per slide   " + ", ".join(f"{_printable(k)}: {v}" for k, v in per_slide[:_SHOWN]) + more)
    for slide in info["slides"][:_SHOWN]:
        _say(f"read        {_printable(Path(slide['path']).name)}: {_how_read(slide)}")
    if len(info["slides"]) > _SHOWN:
        _say(f"read        ... and {count(len(info['slides']) - _SHOWN, 'more slide')}")
    _say("parameters  " + ", ".join(f"{k}={v}" for k, v in info["parameters"].items()))
    legacy = " (read-only: `wsizarr migrate` rewrites it as schema 2)" if info["schema_version"] == 1 else ""
    _say(f"schema      {info['schema_version']}{legacy} (wsizarr {info['wsizarr_version']})")
    _say(f"tables      {count(info['n_slides'], 'slide')}, {count(info['n_annotations'], 'annotation')}")
    for name, per_label in info["quality"].items():
        spread = ", ".join(f"{_printable(k)}: {p50:.3g} [{p5:.3g}-{p95:.3g}]" for k, (p5, p50, p95) in per_label.items())
        _say(f"quality     {name} median [5-95 %]  {spread}")
    if info["subset"] is not None:
        origin = info["subset"]
        chosen = ", ".join(f"{k}={v}" for k, v in origin["selection"].items()) or "every patch"
        _say(f"subset of   {origin['source']} ({count(origin['source_patches'], 'patch')}): {chosen}")
    for name, added in info["added"].items():
        state = "complete" if added["complete"] else "UNFINISHED: run the same command again"
        shape = "x".join(map(str, added["shape"]))
        _say(f"added       {name}  {shape} {added['dtype']}  by {added['fn']}  [{state}]")


def _how_read(slide: dict[str, Any]) -> str:
    """How a store read one slide, in words: reader, level, pixels read per patch, mpp."""
    mpp, downsample = slide["effective_mpp"], slide["downsample"]
    return (
        f"reader {slide['reader'] or 'unknown'}, level {slide['level']}"
        + ("" if downsample is None else f" (downsample {downsample:.6g})") + ", "
        f"{slide['read_size_px']} px read per patch, "
        + ("mpp not recorded" if mpp is None else f"{mpp:.4g} mpp")
    )


def _print_slide(slide: str, as_json: bool, storage_options: dict[str, str] | None) -> None:
    from ._planning import describe_slide

    described = describe_slide(slide, storage_options)
    if as_json:
        _print_json(described)
        return
    width, height = described["dimensions"]
    power = described["objective_power"]
    mpp = described["mpp"]
    _say(f"slide       {_printable(described['path'])}")
    _say(f"vendor      {described['vendor'] or 'unknown'}")
    _say(f"size        {width} x {height} px at level 0, "
         + (f"{power:g}x" if power is not None else "objective power not recorded") + ", "
         + (f"{mpp[0]:.4g} x {mpp[1]:.4g} mpp" if mpp is not None else "mpp not recorded"))
    _say(f"colour      {'an ICC profile (--color srgb converts it)' if described['icc_profile'] else 'no ICC profile'}")
    _say(f"levels      {count(len(described['levels']), 'level')}")
    for level in described["levels"]:
        level_mpp = level["mpp"]
        shown = "" if level_mpp is None else f"  {level_mpp[0]:.4g} mpp"
        _say(f"  {level['level']:>2}  {level['dimensions'][0]:>7} x {level['dimensions'][1]:<7} "
             f"downsample {level['downsample']:.6g}{shown}")
    _say(f"reader      auto reads it with {described['auto_reader']}: {described['auto_reader_reason']}")


def _print_annotations(args: argparse.Namespace) -> None:
    from ._annotations import describe, format_description, read_annotation_file

    dimensions = None
    if args.slide is not None:
        from ._slide import open_slide, slide_info

        handle = open_slide(args.slide)
        try:
            dimensions = slide_info(handle, Path(args.slide)).dimensions
        finally:
            handle.close()
    description = describe(read_annotation_file(args.file, **_annotation_kwargs(args)), args.file, dimensions)
    if args.json:
        _print_json(description)
    else:
        _say(format_description(description))


def _report_cohort(summary: ExtractionSummary) -> None:
    for failure in summary.failed_slides:
        print(f"wsizarr: skipped {_printable(failure.reason)}", file=sys.stderr)
    for slide in summary.slides_without_annotations:
        print(f"wsizarr: no annotations for {_printable(str(slide))}", file=sys.stderr)
    for orphan in summary.annotations_without_slides:
        print(f"wsizarr: no slide for {_printable(str(orphan))}", file=sys.stderr)
    for slide in summary.slides_without_profile:
        print(f"wsizarr: no colour profile, colours left unchanged: {_printable(str(slide))}", file=sys.stderr)


def _demo(args: argparse.Namespace) -> None:
    from ._demo import write_demo_annotations, write_demo_slide
    from ._extract import run_extraction

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    _say(f"writing a synthetic Aperio-style slide and its annotations into {folder} ...")
    sys.stdout.flush()  # said before the seconds it takes, also into a pipe
    slide = write_demo_slide(folder / "demo.svs")
    annotations = write_demo_annotations(slide, folder / "demo.xml")
    store = folder / "demo.zarr"
    _say(f"wrote {slide.path} ({slide.dimensions[0]}x{slide.dimensions[1]}) and {annotations} "
         f"({count(len(slide.polygons), 'annotation')}); extracting them into {store} ...")
    sys.stdout.flush()
    summary = run_extraction(slide.path, annotations, store, _extract_options(args, "overwrite"))
    _say(summary)
    quoted = {name: shlex.quote(str(path)) for name, path in
              [("store", store), ("slide", slide.path), ("xml", annotations), ("png", folder / "preview.png")]}
    _say("next: what the store holds, its checksums and patches re-read from the slide, a contact "
         "sheet per label, an extraction of your own:\n"
         f"  wsizarr info {quoted['store']}\n"
         f"  wsizarr verify {quoted['store']}\n"
         f"  wsizarr preview {quoted['store']} --out {quoted['png']}\n"
         f"  wsizarr extract {quoted['slide']} --annotations {quoted['xml']} --out patches.zarr --level 1")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops where it is and can be resumed."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """wsizarr's own warnings (a stale lock taken over) as one line on stderr."""
    from ._lock import StaleLockWarning

    if issubclass(category, StaleLockWarning):
        print(f"wsizarr: warning: {message}", file=sys.stderr)
    else:
        _default_show_warning(message, category, *args, **kwargs)  # type: ignore[arg-type]


_default_show_warning = warnings.showwarning


def _keep_freed_memory() -> None:
    """Let glibc reuse freed blocks of up to 64 MiB instead of returning them to the system:
    every shard task allocates tens of MB afresh in ~200-KB pieces (decoded tiles, encoded
    chunks) and faulting fresh pages in cost as much CPU as compressing them (measured: an
    extraction's page faults fell from 340k to 130k, its wall time by 20-30 %). Nothing on
    other C libraries."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: larger blocks still come from mmap
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: free memory kept before trimming the heap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 1 a user error, 130 interrupted
    by Ctrl-C, 143 by SIGTERM)."""
    args = _parser().parse_args(argv)
    if args.command in ("extract", "demo"):
        _keep_freed_memory()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    previous_show_warning, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        return _run(args)
    finally:
        warnings.showwarning = previous_show_warning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "extract":
            from ._extract import run_extraction

            slides = args.slides[0] if len(args.slides) == 1 else args.slides
            if args.report:
                from ._output import check_output_file

                check_output_file(args.report, overwrite=args.overwrite)  # not after an hour's work
            if args.overwrite and (args.resume or args.append):
                raise ParameterError("--overwrite excludes --resume and --append; choose one")
            mode = "overwrite" if args.overwrite else "resume" if args.resume else "append" if args.append else "create"
            summary = run_extraction(
                slides, args.annotations, args.out, _extract_options(args, mode), _storage_options(args),
            )
            _report_cohort(summary)
            _say(summary)
            if args.report:
                from ._preview import write_report

                print(f"report: {write_report(summary.store, args.report, overwrite=args.overwrite, storage_options=_storage_options(args))}")
        elif args.command == "annotations":
            _print_annotations(args)
        elif args.command == "embed":
            from ._added import add_array
            from ._embed import TorchScriptFeatures

            features = TorchScriptFeatures(args.model, device=args.device, normalize=args.normalize)
            summary = add_array(
                args.store, args.name, features, batch_size=args.batch_size, workers=args.workers,
                storage_options=_storage_options(args), overwrite=args.overwrite, progress=_ProgressBar(),
            )
            _say(summary)
        elif args.command == "subset":
            from ._subset import subset

            _say(subset(
                args.store, args.out, labels=args.labels, slides=args.slides, annotations=args.annotations,
                min_tissue=args.min_tissue, min_sharpness=args.min_sharpness, max_pen=args.max_pen,
                include_padded=not args.exclude_padded, indices=_read_indices(args.indices),
                overwrite=args.overwrite, storage_options=_storage_options(args), workers=args.workers,
                progress=_ProgressBar(),
            ))
        elif args.command == "info":
            _print_info(args.store, args.json, _storage_options(args))
        elif args.command == "slide":
            _print_slide(args.slide, args.json, _storage_options(args))
        elif args.command == "migrate":
            from ._migrate import migrate

            manifest = migrate(args.store, storage_options=_storage_options(args))
            _say(f"{args.store}: schema {manifest.schema_version}, {count(manifest.n_slides, 'slide')}, "
                 f"{count(manifest.n_annotations, 'annotation')}, {count(manifest.n_patches, 'patch')}")
        elif args.command == "verify":
            from ._verify import verify

            report = verify(args.store, sample=args.sample, seed=args.seed,
                            storage_options=_storage_options(args))
            _say(report)
            return 0 if report.ok else 1
        elif args.command == "export":
            from ._export import export

            written = export(args.store, args.dir, format=args.format, label=args.label,
                           overwrite=args.overwrite, storage_options=_storage_options(args))
            _say(f"wrote {count(written, args.format + ' file')} and metadata.csv to {args.dir}")
        elif args.command in ("preview", "overlay", "report"):
            from . import _preview

            options = _storage_options(args)
            common = {"overwrite": args.overwrite, "storage_options": options}
            if args.command == "preview":
                path = _preview.preview(args.store, args.out, per_label=args.per_label, seed=args.seed, **common)
            elif args.command == "overlay":
                path = _preview.overlay(args.store, args.out, slide=args.slide, **common)
            else:
                path = _preview.write_report(args.store, args.out, **common)
            print(f"wrote {path}")
        elif args.command == "pack":
            from ._locations import parse_location
            from ._store import open_store

            from ._lock import writer_lock

            source = parse_location(args.store, _storage_options(args))
            open_store(source)  # only a finished store is packed
            target = parse_location(args.zip)
            with writer_lock(target):
                target.pack(source)  # refuses anything but a new .zip file
            print(f"packed {source} into {target}")
        elif args.command == "unlock":
            from ._locations import parse_location
            from ._lock import break_lock, lock_name

            location = parse_location(args.store, _storage_options(args))
            holder = break_lock(location)
            if holder is None:
                print(f"{location}: no writer lock ({lock_name(location)} does not exist)")
            else:
                print(f"{location}: removed the writer lock {lock_name(location)} ({holder})")
        else:
            _demo(args)
    except WsizarrError as exc:
        # one line, whatever it quotes; options named as flags
        print(f"wsizarr: error: {_printable(exc.render(as_flag))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        fix = "run the same command again" if args.command == "embed" else "finish the store with --resume"
        print(f"\nwsizarr: interrupted; {fix}", file=sys.stderr)
        return 143 if isinstance(interrupt, _Terminated) else 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
    return 0
