"""``wsizarr extract``: patches around the annotations of slides into one store."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .._errors import ParameterError
from ._common import (
    add_annotation_options,
    add_extract_options,
    add_option,
    add_storage_option,
    comma_list,
    extract_options,
    printable,
    say,
    storage_options_of,
)

if TYPE_CHECKING:
    from ..extraction._run import ExtractionSummary

_EXAMPLES = """\
examples:
  wsizarr extract slide.svs --annotations slide.xml --out patches.zarr \\
      --level 1 --patch-size 256 --per-annotation 30 --seed 0
  wsizarr extract slides/*.svs --tiles --out tiles.zarr --mpp 0.5 --patch-size 256
      (every 256-px tile at 0.5 um/px that is at least half tissue in its slide's tissue mask)
  wsizarr extract slides/*.svs --annotations annotations/ --out cohort.zarr \\
      --mpp 0.5 --sampler grid --min-tissue 0.5 --label-map 'glomerulus=Normal,sclerotic=Abnormal'
  wsizarr extract slide.svs --annotations slide.xml --out patches.zarr \\
      --level 1 --patch-size 256 --per-annotation 30 --seed 0 --resume
      (after Ctrl-C: the same command with --resume writes only the missing shards)
"""


def register(commands: Any) -> None:
    from ..extraction._options import ExecutionOptions, LabelOptions, TilingOptions

    extract = commands.add_parser(
        "extract", help="extract patches around annotations, or tile whole slides, into a store",
        description="Extract patches around the annotations of whole-slide images, or tile the whole slides "
        "(--tiles), into one Zarr v3 store.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = extract.add_argument_group("input: slides and annotations")
    inputs.add_argument(
        "slides", nargs="+",
        help="whole-slide images (any format OpenSlide reads; s3://bucket/key.svs), or a folder of them (or an "
        "s3:// prefix ending in /)",
    )
    inputs.add_argument(
        "--annotations", default=None,
        help="annotation file, or a folder (or s3:// prefix ending in /) of files named like the slides "
        "(slide.svs -> slide.xml); needed unless --tiles",
    )
    inputs.add_argument(
        "--label-map", default=None,
        help="rename or merge labels: 'glomerulus=Normal,sclerotic=Abnormal' or a JSON file",
    )
    add_option(inputs, LabelOptions, "keep_only", "keep only the labels the map names")
    add_option(inputs, LabelOptions, "label_order",
               "comma-separated label names fixing the label codes (stable across stores)", type=comma_list)
    add_annotation_options(inputs)
    tiling = extract.add_argument_group(
        "whole-slide tiling", "a grid of tiles over each slide (at --level, --mpp or --magnification, --stride apart), "
        "kept where the slide's tissue mask holds enough tissue; decided on the mask, before any pixel is read",
    )
    add_option(tiling, TilingOptions, "tiles", "tile the whole slides instead of sampling around annotations")
    add_option(tiling, TilingOptions, "tile_min_tissue",
               "least share of a tile that is tissue in the mask (default {default}; --min-tissue filters on "
               "the pixels extracted instead)", type=float)
    add_option(tiling, TilingOptions, "tissue_mask",
               "tissue mask image (PNG, TIFF; non-zero = tissue, any size, stretched over the slide), or a folder "
               "of them named like the slides (default: Otsu on the saturation of the slide's coarsest level)",
               metavar="IMAGE")
    add_option(tiling, TilingOptions, "min_tissue_area",
               "drop pieces of tissue smaller than this, in level-0 pixels^2 (default {default:g})", type=float)
    add_option(tiling, TilingOptions, "max_hole_area",
               "fill holes in the tissue smaller than this, in level-0 pixels^2 (default {default:g})", type=float)
    add_option(tiling, TilingOptions, "within_annotations",
               "keep only the tiles centred in an annotation (the others are labelled background)")
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
    add_storage_option(store)
    execution = add_extract_options(extract)
    add_option(execution, ExecutionOptions, "strict", "fail on the first unreadable slide")
    extract.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from .._pipeline import run_extraction

    slides = args.slides[0] if len(args.slides) == 1 else args.slides
    if args.report:
        from .._output import check_output_file

        check_output_file(args.report, overwrite=args.overwrite)  # not after an hour's work
    if args.overwrite and (args.resume or args.append):
        raise ParameterError("--overwrite excludes --resume and --append; choose one")
    mode = "overwrite" if args.overwrite else "resume" if args.resume else "append" if args.append else "create"
    summary = run_extraction(
        slides, args.annotations, args.out, extract_options(args, mode), storage_options_of(args),
    )
    report_cohort(summary)
    say(summary)
    if args.report:
        from ..inspect._preview import write_report

        print(f"report: {write_report(summary.store, args.report, overwrite=args.overwrite, storage_options=storage_options_of(args))}")


def report_cohort(summary: ExtractionSummary) -> None:
    """The slides a cohort run skipped or left unchanged, a line each on stderr."""
    for failure in summary.failed_slides:
        print(f"wsizarr: skipped {printable(failure.reason)}", file=sys.stderr)
    for slide in summary.slides_without_annotations:
        print(f"wsizarr: no annotations for {printable(str(slide))}", file=sys.stderr)
    for orphan in summary.annotations_without_slides:
        print(f"wsizarr: no slide for {printable(str(orphan))}", file=sys.stderr)
    for slide in summary.slides_without_profile:
        print(f"wsizarr: no colour profile, colours left unchanged: {printable(str(slide))}", file=sys.stderr)
