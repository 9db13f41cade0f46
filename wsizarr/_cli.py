"""The ``wsizarr`` command line: ``extract``, ``annotations``, ``info``, ``unlock``, ``demo`` and the rest."""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import WsizarrError

if TYPE_CHECKING:
    from ._extract import ExtractionSummary

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


def _add_extract_options(parser: argparse.ArgumentParser) -> None:
    resolution = parser.add_mutually_exclusive_group()
    resolution.add_argument("--level", type=int, default=None, help="pyramid level to read (default 0)")
    resolution.add_argument("--mpp", type=float, default=None, help="patch resolution in microns per pixel")
    resolution.add_argument("--magnification", type=float, default=None, help="patch magnification, e.g. 20")
    parser.add_argument("--patch-size", type=int, default=256, help="patch side in pixels (default 256)")
    parser.add_argument(
        "--sampler", default="jitter",
        help="jitter (default), centroid, grid, random-in-polygon or background",
    )
    parser.add_argument("--per-annotation", type=int, default=30, help="patches per annotation (default 30)")
    parser.add_argument("--stride", type=int, default=None, help="grid stride in pixels (default: patch size)")
    parser.add_argument(
        "--min-overlap", type=float, default=0.5,
        help="grid: least fraction of a patch inside the polygon (default 0.5)",
    )
    parser.add_argument(
        "--background", type=int, default=0,
        help="add N patches from tissue outside every annotation, labelled 'background'",
    )
    parser.add_argument("--masks", action="store_true", help="store per-patch annotation masks")
    parser.add_argument("--drop-partial", action="store_true", help="leave out patches crossing the slide edge")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the plan (default 0)")
    parser.add_argument("--shard-size", type=int, default=256, help="patches per shard file (default 256)")
    parser.add_argument(
        "--codec", default="zstd",
        help="patch codec: zstd (default, lossless), blosc-lz4 (lossless, fastest), none, "
        "jpegxl (lossless, smallest), jpeg (lossy q90)",
    )
    parser.add_argument("--workers", type=int, default=None, help="parallel workers (default: cores)")
    parser.add_argument(
        "--executor", default="threads", choices=("threads", "processes"),
        help="run shard tasks on threads (default) or processes",
    )
    parser.add_argument(
        "--reader", default="auto", choices=("auto", "tiles", "openslide"),
        help="read the slide's TIFF tiles (the level's own pixels; also from S3) or OpenSlide's "
        "read_region; auto (default): tiles where tifffile reads the pyramid",
    )
    parser.add_argument(
        "--dask-scheduler", default=None, metavar="ADDRESS",
        help="run shard tasks on a dask.distributed cluster (pip install 'wsizarr[dask]')",
    )


def _add_annotation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label-from", default="name", choices=("name", "attribute"),
        help="ImageScope: label a layer by its name (default) or by its attribute first",
    )
    parser.add_argument("--exclude-detections", action="store_true", help="GeoJSON: leave out QuPath detections")
    parser.add_argument(
        "--exclude-labels", default=None, metavar="LABELS",
        help="comma-separated labels whose annotations are areas to leave out, e.g. _2,Background",
    )
    parser.add_argument(
        "--strict-annotations", action="store_true",
        help="refuse a file with degenerate objects (too few points, no area, lines) instead of skipping them",
    )


def _annotation_kwargs(args: argparse.Namespace) -> dict:
    return {
        "label_from": args.label_from, "exclude_detections": args.exclude_detections,
        "exclude_labels": () if args.exclude_labels is None else tuple(args.exclude_labels.split(",")),
        "strict": args.strict_annotations,
    }


def _add_storage_option(parser: argparse.ArgumentParser) -> None:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsizarr", description="Annotation-driven patch extraction from whole-slide images into Zarr v3."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    extract = commands.add_parser("extract", help="extract patches around annotations into a store")
    extract.add_argument(
        "slides", nargs="+",
        help="whole-slide images (any format OpenSlide reads; s3://bucket/key.svs or an s3:// prefix ending in /)",
    )
    extract.add_argument(
        "--annotations", required=True,
        help="annotation file, or a folder (or s3:// prefix ending in /) of files named like the slides "
        "(slide.svs -> slide.xml)",
    )
    extract.add_argument(
        "--out", required=True,
        help="output store: a directory, a .zip file, or s3://bucket/prefix.zarr",
    )
    _add_extract_options(extract)
    extract.add_argument(
        "--label-map", default=None,
        help="rename or merge labels: 'glomerulus=Normal,sclerotic=Abnormal' or a JSON file",
    )
    extract.add_argument("--keep-only", action="store_true", help="keep only the labels the map names")
    extract.add_argument(
        "--label-order", default=None,
        help="comma-separated label names fixing the label codes (stable across stores)",
    )
    _add_annotation_options(extract)
    extract.add_argument("--strict", action="store_true", help="fail on the first unreadable slide")
    extract.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing wsizarr store (and --report's file); the old store stays until the new one is complete",
    )
    extract.add_argument("--resume", action="store_true", help="finish an interrupted extraction")
    extract.add_argument("--append", action="store_true", help="add the slides to an existing store")
    extract.add_argument("--report", default=None, metavar="HTML", help="also write an HTML report of the store")
    _add_storage_option(extract)
    annotations = commands.add_parser(
        "annotations", help="what an annotation file holds, before anything is extracted"
    )
    annotations.add_argument("file", help="ASAP or ImageScope XML, QuPath GeoJSON or DSA JSON")
    annotations.add_argument("--slide", default=None, help="count the annotations outside this slide")
    annotations.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_annotation_options(annotations)
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
    demo = commands.add_parser("demo", help="generate a synthetic slide with annotations and extract it")
    demo.add_argument("dir", nargs="?", default="wsizarr-demo", help="output folder (default ./wsizarr-demo)")
    _add_extract_options(demo)
    return parser


def _extract_kwargs(args: argparse.Namespace) -> dict:
    return {
        "level": args.level, "mpp": args.mpp, "magnification": args.magnification,
        "patch_size": args.patch_size, "sampler": args.sampler,
        "per_annotation": args.per_annotation, "stride": args.stride,
        "min_overlap": args.min_overlap, "background": args.background, "masks": args.masks,
        "drop_partial": args.drop_partial, "seed": args.seed, "shard_size": args.shard_size,
        "codec": args.codec, "workers": args.workers, "executor": args.executor,
        "reader": args.reader, "client": _dask_client(args.dask_scheduler), "progress": _ProgressBar(),
    }


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


def _print_info(store: str, as_json: bool, storage_options: dict[str, str] | None) -> None:
    from ._locations import parse_location
    from ._store import store_info

    info = store_info(parse_location(store, storage_options))
    if as_json:
        _print_json(info)
        return
    state = "complete" if info["complete"] else f"INCOMPLETE ({info['shards_done']}/{info['n_shards']} shards; resume it)"
    _say(f"store       {info['store']}  [{state}]")
    _say(f"patches     {info['n_patches']} x {'x'.join(map(str, info['patch_shape']))} uint8")
    _say(f"chunks      {info['chunks']}  shards {info['shards']}  codec {info['codec']}")
    _say(f"on disk     {info['bytes_on_disk'] / 1e6:.1f} MB in {info['files']} files")
    _say("per label   " + ", ".join(f"{_printable(k)}: {v}" for k, v in info["per_label"].items()))
    _say("per slide   " + ", ".join(f"{_printable(k)}: {v}" for k, v in info["per_slide"].items()))
    _say("parameters  " + ", ".join(f"{k}={v}" for k, v in info["parameters"].items()))
    _say(f"schema      {info['schema_version']} (wsizarr {info['wsizarr_version']})")


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


def _demo(args: argparse.Namespace) -> None:
    from ._demo import write_demo_annotations, write_demo_slide
    from ._extract import extract

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    slide = write_demo_slide(folder / "demo.svs")
    annotations = write_demo_annotations(slide, folder / "demo.xml")
    print(f"wrote {slide.path} ({slide.dimensions[0]}x{slide.dimensions[1]}) and {annotations}")
    summary = extract(slide.path, annotations, folder / "demo.zarr", overwrite=True, **_extract_kwargs(args))
    print(summary)


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
            from ._annotations import annotation_notes, parse_label_map
            from ._extract import extract

            reading = _annotation_kwargs(args)
            for note in annotation_notes(args.annotations, **reading):
                print(note)

            slides = args.slides[0] if len(args.slides) == 1 else args.slides
            if args.report:
                from ._output import check_output_file

                check_output_file(args.report, overwrite=args.overwrite)  # not after an hour's work
            summary = extract(
                slides, args.annotations, args.out, overwrite=args.overwrite,
                resume=args.resume, append=args.append, strict=args.strict,
                label_order=None if args.label_order is None else args.label_order.split(","),
                label_map=None if args.label_map is None else parse_label_map(args.label_map),
                keep_only=args.keep_only, label_from=reading["label_from"],
                exclude_detections=reading["exclude_detections"], exclude_labels=reading["exclude_labels"],
                strict_annotations=reading["strict"], storage_options=_storage_options(args), **_extract_kwargs(args),
            )
            _report_cohort(summary)
            _say(summary)
            if args.report:
                from ._preview import write_report

                print(f"report: {write_report(summary.store, args.report, overwrite=args.overwrite, storage_options=_storage_options(args))}")
        elif args.command == "annotations":
            _print_annotations(args)
        elif args.command == "info":
            _print_info(args.store, args.json, _storage_options(args))
        elif args.command == "verify":
            from ._verify import verify

            report = verify(args.store, sample=args.sample, seed=args.seed,
                            storage_options=_storage_options(args))
            _say(report)
            return 0 if report.ok else 1
        elif args.command == "export":
            from ._export import export

            count = export(args.store, args.dir, format=args.format, label=args.label,
                           overwrite=args.overwrite, storage_options=_storage_options(args))
            _say(f"wrote {count} {args.format} files and metadata.csv to {args.dir}")
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
        print(f"wsizarr: error: {_printable(str(exc))}", file=sys.stderr)  # one line, whatever it quotes
        return 1
    except KeyboardInterrupt as interrupt:
        print("\nwsizarr: interrupted; finish the store with --resume", file=sys.stderr)
        return 143 if isinstance(interrupt, _Terminated) else 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
    return 0
