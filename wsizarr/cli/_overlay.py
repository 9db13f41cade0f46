"""``wsizarr overlay``: the slide thumbnail with its annotations and patch boxes."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_overwrite_option, add_storage_option, storage_options_of


def register(commands: Any) -> None:
    overlay = commands.add_parser("overlay", help="the slide thumbnail with annotations and patch boxes")
    overlay.add_argument("store")
    overlay.add_argument("--slide", default=None, help="slide index, file name or stem (default: the only one)")
    overlay.add_argument("--out", required=True, help="PNG file to write")
    add_overwrite_option(overlay)
    add_storage_option(overlay)
    overlay.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..inspect._preview import overlay

    path = overlay(args.store, args.out, slide=args.slide, overwrite=args.overwrite,
                   storage_options=storage_options_of(args))
    print(f"wrote {path}")
