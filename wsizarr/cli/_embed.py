"""``wsizarr embed``: features from an encoder, added to a store along ``patch``."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    ProgressBar,
    add_dask_option,
    add_option,
    add_storage_option,
    dask_client,
    say,
    storage_options_of,
)

_EXAMPLES = """\
examples:
  wsizarr embed patches.zarr --model model.pt --name features_a --normalize imagenet
  wsizarr embed patches.zarr --model encoders.py:small_vit --checkpoint vit.pth --name features_b \\
      --precision bf16 --batch-size 64
  wsizarr embed patches.zarr --model my_package.encoders:resnet --name features_c --device cuda
  wsizarr embed patches.zarr --model timm:vit_large_patch16_224 --checkpoint uni.bin --name features_uni \
      --model-args img_size=224 init_values=1e-5 dynamic_img_size=True --normalize imagenet --precision bf16
  (interrupted? the same command again computes only the missing shards)
"""


def register(commands: Any) -> None:
    from ..curate._embed import DEVICES, NORMALIZATIONS, PRECISIONS
    from ..extraction._options import EXECUTORS, ExecutionOptions

    embed = commands.add_parser(
        "embed", help="features from an encoder, added to a store as an array along patch",
        description="Run an encoder over every patch of STORE and add its output as the float16 "
        "array NAME, (N, ...) along patch (one chunk per shard); several encoders go into one store "
        "under several names. The model gets float32 (B, 3, H, W) pixels in [0, 1] (with "
        "--normalize imagenet: minus ImageNet's mean, over its standard deviation) and returns "
        "(B, D). Interrupted? Run the same command again: only the missing shards are computed.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    embed.add_argument("store", help="a directory, a .zip file, or s3://bucket/prefix.zarr")
    embed.add_argument(
        "--model", required=True, metavar="SPEC",
        help="a TorchScript file (torch.jit.save); timm:ARCHITECTURE (made by timm.create_model with "
        "pretrained=False, num_classes=0: give its weights with --checkpoint); or FILE.py:FUNCTION or "
        "MODULE:FUNCTION: a function that returns a torch module or a function of the (B, 3, H, W) tensor",
    )
    embed.add_argument("--model-args", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                       help="keyword arguments of timm.create_model or of the function, each VALUE a Python "
                       "literal or text, e.g. img_size=224 init_values=1e-5 dynamic_img_size=True")
    embed.add_argument("--checkpoint", default=None, metavar="PATH",
                       help="weights loaded into the module: a state dict (torch.save(module.state_dict(), "
                       "PATH)) or a .safetensors file; nothing is ever downloaded")
    embed.add_argument("--name", required=True, help="the array's name, e.g. features_a")
    embed.add_argument("--batch-size", type=int, default=None, help="patches per model call (default: a shard's)")
    embed.add_argument("--device", default="auto", choices=DEVICES,
                       help="auto (default: CUDA where there is one), cpu or cuda")
    embed.add_argument("--precision", default="fp32", choices=PRECISIONS,
                       help="fp32 (default), or fp16/bf16 under torch.autocast where the device supports it")
    embed.add_argument("--normalize", default=None, choices=tuple(NORMALIZATIONS), help="normalise the [0, 1] pixels")
    add_option(embed, ExecutionOptions, "workers", "shards computed at once (default: cores)", type=int)
    add_option(embed, ExecutionOptions, "executor", "run shards on threads (default) or processes", choices=EXECUTORS)
    add_dask_option(embed)
    embed.add_argument("--overwrite", action="store_true", help="replace an added array of that name")
    add_storage_option(embed)
    embed.set_defaults(run=run, on_interrupt="run the same command again")


def run(args: argparse.Namespace) -> None:
    from ..curate._embed import embed, parse_model_args

    say(embed(
        args.store, args.name, args.model, checkpoint=args.checkpoint,
        model_args=parse_model_args(args.model_args), device=args.device,
        precision=args.precision, normalize=args.normalize, batch_size=args.batch_size,
        workers=args.workers, executor=args.executor, client=dask_client(args.dask_scheduler),
        storage_options=storage_options_of(args), overwrite=args.overwrite, progress=ProgressBar(),
    ))
