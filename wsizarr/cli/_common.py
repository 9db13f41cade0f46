"""What the commands share: printing for a person (control characters escaped), the progress
bar, and the flags built from the option records (dest = field name, default = field default)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from .._errors import WsizarrError

if TYPE_CHECKING:
    from ..extraction._options import ExtractOptions

__all__ = [
    "ProgressBar", "add_annotation_options", "add_dask_option", "add_extract_options", "add_filter_options", "add_option",
    "add_overwrite_option", "add_storage_option", "annotation_kwargs", "comma_list", "dask_client",
    "extract_options", "print_json", "printable", "record_from", "say", "storage_options_of",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: ESC, CR, BEL, CSI, ...


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters as ``\\x1b``-style escapes."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def say(text: object) -> None:
    """Print ``text`` line by line, each line's control characters escaped."""
    print("\n".join(printable(line) for line in str(text).split("\n")))


def print_json(data: object) -> None:
    """Print ``data`` as JSON; json escapes every control character but DEL."""
    print(json.dumps(data, indent=2).replace("\x7f", "\\u007f"))


class ProgressBar:
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


def add_option(parser: Any, record: type, name: str, help: str, **kwargs: Any) -> None:
    """Add the flag of option ``name`` of ``record`` (an ``extraction._options`` dataclass): its dest is
    the field's name and its default the field's default, so the two cannot drift apart."""
    default = next(f.default for f in fields(record) if f.name == name)
    if default is False:
        kwargs["action"] = "store_true"
    elif default is True:
        kwargs["action"] = argparse.BooleanOptionalAction  # --name and --no-name
    flag = "--" + name.replace("_", "-")
    parser.add_argument(flag, dest=name, default=default, help=help.format(default=default), **kwargs)


def add_filter_options(parser: Any) -> None:
    from ..extraction._options import FilterOptions

    add_option(parser, FilterOptions, "min_tissue", "keep patches with at least this tissue_fraction (0-1)", type=float)
    add_option(parser, FilterOptions, "min_sharpness", "keep patches at least this sharp (variance of the Laplacian)", type=float)
    add_option(parser, FilterOptions, "max_pen", "keep patches with at most this pen_fraction (0-1)", type=float)


def add_extract_options(parser: argparse.ArgumentParser) -> Any:
    """The options of an extraction, in groups (resolution and sampling, store layout, quality
    filters, execution); returns the execution group, for a command's own options of that kind."""
    from ..extraction._options import (
        EXECUTORS,
        READERS,
        ExecutionOptions,
        LayoutOptions,
        ResolutionOptions,
        SamplingOptions,
    )
    from ..slides._color import COLORS

    sampling = parser.add_argument_group("resolution and sampling")
    resolution = sampling.add_mutually_exclusive_group()
    add_option(resolution, ResolutionOptions, "level", "pyramid level to read (default 0)", type=int)
    add_option(resolution, ResolutionOptions, "mpp", "patch resolution in microns per pixel", type=float)
    add_option(resolution, ResolutionOptions, "magnification", "patch magnification, e.g. 20", type=float)
    add_option(sampling, ResolutionOptions, "patch_size", "patch side in pixels (default {default})", type=int)
    add_option(sampling, SamplingOptions, "sampler", "jitter (default), centroid, grid, random-in-polygon or background")
    add_option(sampling, SamplingOptions, "per_annotation", "patches per annotation (default {default})", type=int)
    add_option(sampling, SamplingOptions, "stride",
               "grid and --tiles stride in pixels of the level read (default: the patch's footprint)", type=int)
    add_option(sampling, SamplingOptions, "min_overlap",
            "grid: least fraction of a patch inside the polygon (default {default})", type=float)
    add_option(sampling, SamplingOptions, "background",
            "add N patches from tissue outside every annotation, labelled 'background'", type=int)
    add_option(sampling, SamplingOptions, "drop_partial", "leave out patches crossing the slide edge")
    add_option(sampling, SamplingOptions, "seed", "random seed of the plan (default {default})", type=int)
    store = parser.add_argument_group("store layout")
    add_option(store, LayoutOptions, "masks", "store per-patch annotation masks")
    add_option(store, LayoutOptions, "quality",
            "store per-patch quality measures (tissue_fraction, sharpness, pen_fraction, brightness, "
            "saturation; default on)")
    add_option(store, LayoutOptions, "shard_size", "patches per shard file (default {default})", type=int)
    add_option(store, LayoutOptions, "codec",
            "patch codec: zstd (default, lossless), blosc-lz4 (lossless, fastest), none, "
            "jpegxl (lossless, smallest), jpeg (lossy q90)")
    add_option(store, LayoutOptions, "color",
            "unchanged (default): the slide's own pixels; srgb: converted from the slide's ICC "
            "profile to sRGB (slides without one stay unchanged)", choices=COLORS)
    filters = parser.add_argument_group(
        "quality filters", "the whole plan is extracted beside the store, then the patches that pass written into it",
    )
    add_filter_options(filters)
    execution = parser.add_argument_group("execution")
    add_option(execution, ExecutionOptions, "workers", "parallel workers (default: cores)", type=int)
    add_option(execution, ExecutionOptions, "executor", "run tasks on threads (default) or processes", choices=EXECUTORS)
    add_option(execution, ExecutionOptions, "reader",
            "read the slide's TIFF tiles (the level's own pixels; also from S3) or OpenSlide's "
            "read_region; auto (default): tiles where tifffile reads the pyramid", choices=READERS)
    add_dask_option(execution)
    return execution


def add_dask_option(parser: Any) -> None:
    """``--dask-scheduler``: the address of the cluster to run the tasks on (see ``dask_client``)."""
    parser.add_argument(
        "--dask-scheduler", default=None, metavar="ADDRESS",
        help="run the tasks on a dask.distributed cluster (pip install 'wsizarr[dask]')",
    )


def add_annotation_options(parser: Any) -> None:
    from ..extraction._options import LABEL_SOURCES, LabelOptions

    add_option(parser, LabelOptions, "label_from",
            "ImageScope: label a layer by its name (default) or by its attribute first", choices=LABEL_SOURCES)
    add_option(parser, LabelOptions, "exclude_detections", "GeoJSON: leave out QuPath detections")
    add_option(parser, LabelOptions, "exclude_labels",
            "comma-separated labels whose annotations are areas to leave out, e.g. _2,Background",
            metavar="LABELS", type=comma_list)
    add_option(parser, LabelOptions, "strict_annotations",
            "refuse a file with degenerate objects (too few points, no area, lines) instead of skipping them")


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def annotation_kwargs(args: argparse.Namespace) -> dict:
    return {
        "label_from": args.label_from, "exclude_detections": args.exclude_detections,
        "exclude_labels": args.exclude_labels, "strict": args.strict_annotations,
    }


def record_from(record: type, args: argparse.Namespace, **values: Any) -> Any:
    """An ``extraction._options`` record from the parsed flags of its fields (and ``values``)."""
    return record(**{f.name: getattr(args, f.name) for f in fields(record) if hasattr(args, f.name)} | values)


def extract_options(args: argparse.Namespace, mode: str) -> ExtractOptions:
    """The run's options from the flags: each record from its own fields."""
    from ..annotations._labels import parse_label_map
    from ..extraction._options import (
        ExecutionOptions,
        ExtractOptions,
        FilterOptions,
        LabelOptions,
        LayoutOptions,
        ResolutionOptions,
        SamplingOptions,
        TilingOptions,
    )

    label_map = getattr(args, "label_map", None)
    labels = {"label_map": None if label_map is None else parse_label_map(label_map)}
    if not hasattr(args, "label_from"):  # demo: no annotation options
        labels = {}
    return ExtractOptions(
        resolution=record_from(ResolutionOptions, args), sampling=record_from(SamplingOptions, args),
        labels=record_from(LabelOptions, args, **labels), layout=record_from(LayoutOptions, args),
        execution=record_from(
            ExecutionOptions, args, client=dask_client(args.dask_scheduler), progress=ProgressBar(),
            on_note=print,
        ),
        mode=mode, filters=record_from(FilterOptions, args), tiling=record_from(TilingOptions, args),
    )


def add_storage_option(parser: Any) -> None:
    parser.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="S3 option (endpoint_url, access_key_id, secret_access_key, session_token, region, "
        "timeout: seconds per request, default 30); default: the AWS_* environment variables",
    )


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")


def storage_options_of(args: argparse.Namespace) -> dict[str, str] | None:
    options = {}
    for item in args.storage_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise WsizarrError(f"--storage-option {item!r}: write KEY=VALUE, e.g. endpoint_url=http://host:9000")
        options[key] = value
    return options or None


def dask_client(address: str | None) -> object:
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
