"""``wsizarr info``: what a store holds, how each slide was read, its quality and provenance."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._text import count
from ._common import add_storage_option, print_json, printable, say, storage_options_of

_SHOWN = 10  # slides listed (all of them with --json)


def register(commands: Any) -> None:
    info = commands.add_parser("info", help="describe a store")
    info.add_argument("store", help="a directory, a .zip file, or s3://bucket/prefix.zarr")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_storage_option(info)
    info.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from .._locations import parse_location
    from ..store._store import store_info

    info = store_info(parse_location(args.store, storage_options_of(args)))
    if args.json:
        print_json(info)
        return
    state = "complete" if info["complete"] else f"INCOMPLETE ({info['shards_done']}/{count(info['n_shards'], 'shard')}; resume it)"
    say(f"store       {info['store']}  [{state}]")
    say(f"patches     {info['n_patches']} x {'x'.join(map(str, info['patch_shape']))} uint8")
    say(f"chunks      {info['chunks']}  shards {info['shards']}  codec {info['codec']}")
    say(f"on disk     {info['bytes_on_disk'] / 1e6:.1f} MB in {count(info['files'], 'file')}")
    say("per label   " + ", ".join(f"{printable(k)}: {v}" for k, v in info["per_label"].items()))
    per_slide = list(info["per_slide"].items())
    more = f", ... and {count(len(per_slide) - _SHOWN, 'more slide')}" if len(per_slide) > _SHOWN else ""
    say("per slide   " + ", ".join(f"{printable(k)}: {v}" for k, v in per_slide[:_SHOWN]) + more)
    for slide in info["slides"][:_SHOWN]:
        say(f"read        {printable(Path(slide['path']).name)}: {_how_read(slide)}")
    if len(info["slides"]) > _SHOWN:
        say(f"read        ... and {count(len(info['slides']) - _SHOWN, 'more slide')}")
    say("parameters  " + ", ".join(f"{k}={v}" for k, v in info["parameters"].items()))
    legacy = " (read-only: `wsizarr migrate` rewrites it as schema 2)" if info["schema_version"] == 1 else ""
    say(f"schema      {info['schema_version']}{legacy} (wsizarr {info['wsizarr_version']})")
    say(f"tables      {count(info['n_slides'], 'slide')}, {count(info['n_annotations'], 'annotation')}")
    for name, per_label in info["quality"].items():
        spread = ", ".join(f"{printable(k)}: {p50:.3g} [{p5:.3g}-{p95:.3g}]" for k, (p5, p50, p95) in per_label.items())
        say(f"quality     {name} median [5-95 %]  {spread}")
    if info["subset"] is not None:
        origin = info["subset"]
        chosen = ", ".join(f"{k}={v}" for k, v in origin["selection"].items()) or "every patch"
        say(f"subset of   {origin['source']} ({count(origin['source_patches'], 'patch')}): {chosen}")
    for name, added in info["added"].items():
        state = "complete" if added["complete"] else "UNFINISHED: run the same command again"
        shape = "x".join(map(str, added["shape"]))
        say(f"added       {name}  {shape} {added['dtype']}  by {added['fn']}  [{state}]")


def _how_read(slide: dict[str, Any]) -> str:
    """How a store read one slide, in words: reader, level, pixels read per patch, mpp."""
    mpp, downsample = slide["effective_mpp"], slide["downsample"]
    return (
        f"reader {slide['reader'] or 'unknown'}, level {slide['level']}"
        + ("" if downsample is None else f" (downsample {downsample:.6g})") + ", "
        f"{slide['read_size_px']} px read per patch, "
        + ("mpp not recorded" if mpp is None else f"{mpp:.4g} mpp")
    )
