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
  wsizarr extract slides/*.svs --annotations annotations/ --out cohort.zarr \\
      --mpp 0.5 --sampler grid --min-tissue 0.5 --label-map 'glomerulus=Normal,sclerotic=Abnormal'
  wsizarr extract slide.svs --annotations slide.xml --out patches.zarr \\
      --level 1 --patch-size 256 --per-annotation 30 --seed 0 --resume
      (after Ctrl-C: the same command with --resume writes only the missing shards)
"""


def register(commands: Any) -> None:
    from ..extraction._options import ExecutionOptions, LabelOptions

    extract = commands.add_parser(
        "extract", help="extract patches around annotations into a store",
        description="Extract patches around the annotations of whole-slide images into one Zarr v3 store.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
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
    inputs.add_argument(
        "--label-map", default=None,
        help="rename or merge labels: 'glomerulus=Normal,sclerotic=Abnormal' or a JSON file",
    )
    add_option(inputs, LabelOptions, "keep_only", "keep only the labels the map names")
    add_option(inputs, LabelOptions, "label_order",
               "comma-separated label names fixing the label codes (stable across stores)", type=comma_list)
    add_annotation_options(inputs)
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
