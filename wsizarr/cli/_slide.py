"""``wsizarr slide``: a slide's levels, downsamples, mpp and vendor, and the reader auto picks."""

from __future__ import annotations

import argparse
from typing import Any

from .._text import count
from ._common import add_storage_option, print_json, printable, say, storage_options_of


def register(commands: Any) -> None:
    slide = commands.add_parser(
        "slide", help="a slide's levels, downsamples, mpp and vendor, and the reader auto picks for it"
    )
    slide.add_argument("slide", help="a slide file, or s3://bucket/key of an SVS/TIFF")
    slide.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_storage_option(slide)
    slide.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..extraction._planning import describe_slide

    described = describe_slide(args.slide, storage_options_of(args))
    if args.json:
        print_json(described)
        return
    width, height = described["dimensions"]
    power = described["objective_power"]
    mpp = described["mpp"]
    say(f"slide       {printable(described['path'])}")
    say(f"vendor      {described['vendor'] or 'unknown'}")
    say(f"size        {width} x {height} px at level 0, "
        + (f"{power:g}x" if power is not None else "objective power not recorded") + ", "
        + (f"{mpp[0]:.4g} x {mpp[1]:.4g} mpp" if mpp is not None else "mpp not recorded"))
    say(f"colour      {'an ICC profile (--color srgb converts it)' if described['icc_profile'] else 'no ICC profile'}")
    say(f"levels      {count(len(described['levels']), 'level')}")
    for level in described["levels"]:
        level_mpp = level["mpp"]
        shown = "" if level_mpp is None else f"  {level_mpp[0]:.4g} mpp"
        say(f"  {level['level']:>2}  {level['dimensions'][0]:>7} x {level['dimensions'][1]:<7} "
            f"downsample {level['downsample']:.6g}{shown}")
    say(f"reader      auto reads it with {described['auto_reader']}: {described['auto_reader_reason']}")
