"""``wsizarr migrate``: a schema 1 store rewritten as schema 2, in place."""

from __future__ import annotations

import argparse
from typing import Any

from .._text import count
from ._common import add_storage_option, say, storage_options_of


def register(commands: Any) -> None:
    migrate = commands.add_parser(
        "migrate", help="rewrite a store made by an older wsizarr (schema 1) as schema 2, in place",
    )
    migrate.add_argument("store", help="a directory or s3://bucket/prefix.zarr")
    add_storage_option(migrate)
    migrate.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..store._migrate import migrate

    manifest = migrate(args.store, storage_options=storage_options_of(args))
    say(f"{args.store}: schema {manifest.schema_version}, {count(manifest.n_slides, 'slide')}, "
        f"{count(manifest.n_annotations, 'annotation')}, {count(manifest.n_patches, 'patch')}")
