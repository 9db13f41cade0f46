"""``wsizarr pack``: a finished store copied into one uncompressed .zip file."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_storage_option, storage_options_of


def register(commands: Any) -> None:
    pack = commands.add_parser("pack", help="copy a finished store into one uncompressed .zip file")
    pack.add_argument("store", help="a directory or s3://bucket/prefix.zarr")
    pack.add_argument("zip", help="the .zip file to write")
    add_storage_option(pack)
    pack.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from .._locations import parse_location
    from ..store._lock import writer_lock
    from ..store._store import open_store

    source = parse_location(args.store, storage_options_of(args))
    open_store(source)  # only a finished store is packed
    target = parse_location(args.zip)
    with writer_lock(target):
        target.pack(source)  # refuses anything but a new .zip file
    print(f"packed {source} into {target}")
