"""``wsizarr report``: a self-contained HTML report of a store."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_overwrite_option, add_storage_option, storage_options_of


def register(commands: Any) -> None:
    report = commands.add_parser("report", help="a self-contained HTML report of a store")
    report.add_argument("store")
    report.add_argument("--out", required=True, help="HTML file to write")
    add_overwrite_option(report)
    add_storage_option(report)
    report.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..inspect._preview import write_report

    path = write_report(args.store, args.out, overwrite=args.overwrite, storage_options=storage_options_of(args))
    print(f"wrote {path}")
