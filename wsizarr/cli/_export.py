"""``wsizarr export``: the patches as image files plus metadata.csv."""

from __future__ import annotations

import argparse
from typing import Any

from .._text import count
from ._common import add_storage_option, say, storage_options_of


def register(commands: Any) -> None:
    export = commands.add_parser("export", help="write the patches as image files plus metadata.csv")
    export.add_argument("store")
    export.add_argument("dir", help="output folder")
    export.add_argument("--format", default="png", choices=("png", "jpg"))
    export.add_argument("--label", default=None, help="only the patches of this label")
    export.add_argument("--overwrite", action="store_true", help="replace files of the same names in the folder")
    add_storage_option(export)
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..inspect._export import export

    written = export(args.store, args.dir, format=args.format, label=args.label,
                     overwrite=args.overwrite, storage_options=storage_options_of(args))
    say(f"wrote {count(written, args.format + ' file')} and metadata.csv to {args.dir}")
