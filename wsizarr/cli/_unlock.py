"""``wsizarr unlock``: a store's writer lock, left by a writer that is gone, removed."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_storage_option, storage_options_of


def register(commands: Any) -> None:
    unlock = commands.add_parser(
        "unlock", help="remove a store's writer lock left by a writer that is gone",
        description="Remove the writer lock of STORE (<store>.lock beside it, or the S3 object "
        "<prefix>.lock) and print whom it named. Only for a writer that is gone: a running "
        "writer keeps its lock on a local disk, and loses it on S3 (it then stops unfinished).",
    )
    unlock.add_argument("store", help="the --out of the extraction: a directory, a .zip file or s3://bucket/prefix.zarr")
    add_storage_option(unlock)
    unlock.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from .._locations import parse_location
    from ..store._lock import break_lock, lock_name

    location = parse_location(args.store, storage_options_of(args))
    holder = break_lock(location)
    if holder is None:
        print(f"{location}: no writer lock ({lock_name(location)} does not exist)")
    else:
        print(f"{location}: removed the writer lock {lock_name(location)} ({holder})")
