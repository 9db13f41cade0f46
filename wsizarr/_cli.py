"""The ``wsizarr`` command line: ``extract``, ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import WsizarrError

if TYPE_CHECKING:
    from ._extract import ExtractionSummary

__all__ = ["main"]


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


def _add_storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="S3 option (endpoint_url, access_key_id, secret_access_key, session_token, region); "
        "default: the AWS_* environment variables",
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
    extract.add_argument(
        "--label-from", default="name", choices=("name", "attribute"),
        help="ImageScope: label from the layer name (default) or its first attribute",
    )
    extract.add_argument("--exclude-detections", action="store_true", help="GeoJSON: leave out QuPath detections")
    extract.add_argument("--strict", action="store_true", help="fail on the first unreadable slide")
    extract.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing wsizarr store (and --report's file); the old store stays until the new one is complete",
    )
    extract.add_argument("--resume", action="store_true", help="finish an interrupted extraction")
    extract.add_argument("--append", action="store_true", help="add the slides to an existing store")
    extract.add_argument("--report", default=None, metavar="HTML", help="also write an HTML report of the store")
    _add_storage_option(extract)
    info = commands.add_parser("info", help="describe a store")
    info.add_argument("store", help="a directory, a .zip file, or s3://bucket/prefix.zarr")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_storage_option(info)
    pack = commands.add_parser("pack", help="copy a finished store into one uncompressed .zip file")
    pack.add_argument("store", help="a directory or s3://bucket/prefix.zarr")
    pack.add_argument("zip", help="the .zip file to write")
    _add_storage_option(pack)
    verify = commands.add_parser("verify", help="check a store against its plan and its slides")
    verify.add_argument("store")
    verify.add_argument("--sample", type=int, default=64, help="patches re-read from the slides (default 64)")
    verify.add_argument("--seed", type=int, default=0)
    _add_storage_option(verify)
    export = commands.add_parser("export", help="write the patches as image files plus metadata.csv")
    export.add_argument("store")
    export.add_argument("dir", help="output folder")
    export.add_argument("--format", default="png", choices=("png", "jpg"))
    export.add_argument("--label", default=None, help="only the patches of this label")
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
        print(json.dumps(info, indent=2))
        return
    state = "complete" if info["complete"] else f"INCOMPLETE ({info['shards_done']}/{info['n_shards']} shards; resume it)"
    print(f"store       {info['store']}  [{state}]")
    print(f"patches     {info['n_patches']} x {'x'.join(map(str, info['patch_shape']))} uint8")
    print(f"chunks      {info['chunks']}  shards {info['shards']}  codec {info['codec']}")
    print(f"on disk     {info['bytes_on_disk'] / 1e6:.1f} MB in {info['files']} files")
    print("per label   " + ", ".join(f"{k}: {v}" for k, v in info["per_label"].items()))
    print("per slide   " + ", ".join(f"{k}: {v}" for k, v in info["per_slide"].items()))
    print("parameters  " + ", ".join(f"{k}={v}" for k, v in info["parameters"].items()))
    print(f"schema      {info['schema_version']} (wsizarr {info['wsizarr_version']})")


def _report_cohort(summary: ExtractionSummary) -> None:
    for failure in summary.failed_slides:
        print(f"wsizarr: skipped {failure.reason}", file=sys.stderr)
    for slide in summary.slides_without_annotations:
        print(f"wsizarr: no annotations for {slide}", file=sys.stderr)
    for orphan in summary.annotations_without_slides:
        print(f"wsizarr: no slide for {orphan}", file=sys.stderr)


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
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "extract":
            from ._annotations import parse_label_map
            from ._extract import extract

            slides = args.slides[0] if len(args.slides) == 1 else args.slides
            if args.report:
                from ._output import check_output_file

                check_output_file(args.report, overwrite=args.overwrite)  # not after an hour's work
            summary = extract(
                slides, args.annotations, args.out, overwrite=args.overwrite,
                resume=args.resume, append=args.append, strict=args.strict,
                label_order=None if args.label_order is None else args.label_order.split(","),
                label_map=None if args.label_map is None else parse_label_map(args.label_map),
                keep_only=args.keep_only, label_from=args.label_from,
                exclude_detections=args.exclude_detections, storage_options=_storage_options(args), **_extract_kwargs(args),
            )
            _report_cohort(summary)
            print(summary)
            if args.report:
                from ._preview import write_report

                print(f"report: {write_report(summary.store, args.report, overwrite=args.overwrite, storage_options=_storage_options(args))}")
        elif args.command == "info":
            _print_info(args.store, args.json, _storage_options(args))
        elif args.command == "verify":
            from ._verify import verify

            report = verify(args.store, sample=args.sample, seed=args.seed,
                            storage_options=_storage_options(args))
            print(report)
            return 0 if report.ok else 1
        elif args.command == "export":
            from ._export import export

            count = export(args.store, args.dir, format=args.format, label=args.label,
                           storage_options=_storage_options(args))
            print(f"wrote {count} {args.format} files and metadata.csv to {args.dir}")
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
            from ._locations import pack_zip, parse_location
            from ._store import open_store

            source = parse_location(args.store, _storage_options(args))
            open_store(source)  # only a finished store is packed
            print(f"packed {source} into {pack_zip(source, args.zip)}")
        else:
            _demo(args)
    except WsizarrError as exc:
        print(f"wsizarr: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        print("\nwsizarr: interrupted; finish the store with --resume", file=sys.stderr)
        return 143 if isinstance(interrupt, _Terminated) else 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
    return 0
