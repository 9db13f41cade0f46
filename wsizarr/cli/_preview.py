"""``wsizarr preview``: a PNG contact sheet of patches per label."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_overwrite_option, add_storage_option, storage_options_of


def register(commands: Any) -> None:
    preview = commands.add_parser("preview", help="a PNG contact sheet of patches per label")
    preview.add_argument("store")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--per-label", type=int, default=16)
    preview.add_argument("--seed", type=int, default=0)
    add_overwrite_option(preview)
    add_storage_option(preview)
    preview.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..inspect._preview import preview

    path = preview(args.store, args.out, per_label=args.per_label, seed=args.seed, overwrite=args.overwrite,
                   storage_options=storage_options_of(args))
    print(f"wrote {path}")
