"""``wsizarr embed``: features from a TorchScript model, added to a store along ``patch``."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import ProgressBar, add_storage_option, say, storage_options_of


def register(commands: Any) -> None:
    embed = commands.add_parser(
        "embed", help="features from a TorchScript model, added to a store as an array along patch",
        description="Run a TorchScript model over every patch of STORE and add its output as the "
        "float16 array NAME, (N, ...) along patch (one chunk per shard). The model gets float32 "
        "(B, 3, H, W) pixels in [0, 1] (with --normalize imagenet: minus ImageNet's mean, over its "
        "standard deviation) and returns (B, D). Interrupted? Run the same command again: only "
        "the missing shards are computed.",
    )
    embed.add_argument("store", help="a directory, a .zip file, or s3://bucket/prefix.zarr")
    embed.add_argument("--model", required=True, help="a TorchScript file (torch.jit.save)")
    embed.add_argument("--name", required=True, help="the array's name, e.g. features")
    embed.add_argument("--batch-size", type=int, default=None, help="patches per model call (default: a shard's)")
    embed.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    embed.add_argument("--normalize", default=None, choices=("imagenet",), help="normalise the [0, 1] pixels")
    embed.add_argument("--workers", type=int, default=None, help="shards computed at once (default: cores)")
    embed.add_argument("--overwrite", action="store_true", help="replace an added array of that name")
    add_storage_option(embed)
    embed.set_defaults(run=run, on_interrupt="run the same command again")


def run(args: argparse.Namespace) -> None:
    from ..curate._added import add_array
    from ..curate._embed import TorchScriptFeatures

    features = TorchScriptFeatures(args.model, device=args.device, normalize=args.normalize)
    say(add_array(
        args.store, args.name, features, batch_size=args.batch_size, workers=args.workers,
        storage_options=storage_options_of(args), overwrite=args.overwrite, progress=ProgressBar(),
    ))
