"""``wsizarr verify``: a store checked against its checksums, its plan and its slides."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_storage_option, say, storage_options_of


def register(commands: Any) -> None:
    verify = commands.add_parser("verify", help="check a store against its plan and its slides")
    verify.add_argument("store")
    verify.add_argument(
        "--sample", type=int, default=64,
        help="patches re-read from the slides after every checksum is checked (default 64; 0: none)",
    )
    verify.add_argument("--seed", type=int, default=0)
    add_storage_option(verify)
    verify.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..inspect._verify import verify

    report = verify(args.store, sample=args.sample, seed=args.seed, storage_options=storage_options_of(args))
    say(report)
    return 0 if report.ok else 1
