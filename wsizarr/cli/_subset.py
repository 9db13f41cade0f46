"""``wsizarr subset``: a new store of the patches that match every filter, in store order."""

from __future__ import annotations

import argparse
from typing import Any

from .._errors import ParameterError
from ._common import (
    ProgressBar,
    add_filter_options,
    add_storage_option,
    say,
    storage_options_of,
)


def register(commands: Any) -> None:
    subset = commands.add_parser(
        "subset", help="a new store of the patches that match every filter, in store order",
        description="Write the patches of STORE that match every filter into the new store OUT "
        "(patches copied without decoding; slides renumbered, tables cut to the slides kept).",
    )
    subset.add_argument("store", help="the source: a directory, a .zip file or s3://bucket/prefix.zarr")
    subset.add_argument("out", help="the new store: a directory, a .zip file or s3://bucket/prefix.zarr")
    subset.add_argument("--label", dest="labels", action="append", default=None, metavar="LABEL",
                        help="keep this label (repeat for more; '' for unlabelled)")
    subset.add_argument("--slide", dest="slides", action="append", default=None, metavar="SLIDE",
                        help="keep this slide: file name, stem or index (repeat for more)")
    subset.add_argument("--annotation", dest="annotations", action="append", type=int, default=None,
                        metavar="ID", help="keep this annotation id (repeat for more)")
    add_filter_options(subset)
    subset.add_argument("--exclude-padded", action="store_true", help="leave out patches crossing the slide edge")
    subset.add_argument("--indices", default=None, metavar="FILE",
                        help="keep only these patches: a .npy file or a text file of one index a line")
    subset.add_argument("--workers", type=int, default=None, help="shards written at once (default: cores)")
    subset.add_argument("--overwrite", action="store_true", help="replace OUT if it is a wsizarr store")
    add_storage_option(subset)
    subset.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..curate._subset import subset

    say(subset(
        args.store, args.out, labels=args.labels, slides=args.slides, annotations=args.annotations,
        min_tissue=args.min_tissue, min_sharpness=args.min_sharpness, max_pen=args.max_pen,
        include_padded=not args.exclude_padded, indices=_read_indices(args.indices),
        overwrite=args.overwrite, storage_options=storage_options_of(args), workers=args.workers,
        progress=ProgressBar(),
    ))


def _read_indices(path: str | None) -> object:
    """Patch indices from a ``.npy`` file or a text file of one index a line (None: none)."""
    if path is None:
        return None
    import numpy as np

    try:
        return np.load(path) if path.endswith(".npy") else np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as exc:
        raise ParameterError(f"--indices {path}: cannot read patch indices ({exc}); give a .npy file or one integer a line") from None
