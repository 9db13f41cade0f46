"""``wsizarr annotations``: what an annotation file holds, before anything is extracted."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_annotation_options, annotation_kwargs, print_json, say


def register(commands: Any) -> None:
    annotations = commands.add_parser(
        "annotations", help="what an annotation file holds, before anything is extracted"
    )
    annotations.add_argument("file", help="ASAP or ImageScope XML, QuPath GeoJSON or DSA JSON")
    annotations.add_argument("--slide", default=None, help="count the annotations outside this slide")
    annotations.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_annotation_options(annotations)
    annotations.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..annotations._files import describe, format_description, read_annotation_file

    dimensions = None
    if args.slide is not None:
        from ..slides._slide import open_slide, slide_info

        handle = open_slide(args.slide)
        try:
            dimensions = slide_info(handle, Path(args.slide)).dimensions
        finally:
            handle.close()
    description = describe(read_annotation_file(args.file, **annotation_kwargs(args)), args.file, dimensions)
    if args.json:
        print_json(description)
    else:
        say(format_description(description))
