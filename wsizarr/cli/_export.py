"""``wsizarr export``: the patches as image files plus metadata.csv, or an added array's
features per slide as the HDF5 files of CLAM and TRIDENT."""

from __future__ import annotations

import argparse
from typing import Any

from .._text import count
from ._common import add_storage_option, say, storage_options_of


def register(commands: Any) -> None:
    from ..inspect._export import FORMATS

    export = commands.add_parser(
        "export", help="write the patches as image files plus metadata.csv, or features as per-slide h5 files",
        description="Write the patches of STORE as image files plus metadata.csv (png, jpg), or with "
        "--format trident-h5 --features NAME, per slide, SLIDE_STEM.h5 holding the added array NAME "
        "as 'features' (float32) and the patches' level-0 x, y as 'coords', as CLAM and TRIDENT "
        "write and read them (needs h5py).",
    )
    export.add_argument("store")
    export.add_argument("dir", help="output folder")
    export.add_argument("--format", default="png", choices=FORMATS)
    export.add_argument("--features", default=None, metavar="NAME",
                        help="trident-h5: the added array to export, e.g. features (wsizarr embed)")
    export.add_argument("--label", default=None, help="only the patches of this label")
    export.add_argument("--overwrite", action="store_true", help="replace files of the same names in the folder")
    add_storage_option(export)
    export.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..inspect._export import export

    written = export(args.store, args.dir, format=args.format, label=args.label, features=args.features,
                     overwrite=args.overwrite, storage_options=storage_options_of(args))
    if args.features is None:
        say(f"wrote {count(written, args.format + ' file')} and metadata.csv to {args.dir}")
    else:
        say(f"wrote {count(written, 'h5 file')}, one a slide, of {args.features!r} to {args.dir}")
