"""``wsizarr demo``: a synthetic Aperio-style slide and its annotations, extracted."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from .._text import count
from ._common import add_extract_options, extract_options, say


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="generate a synthetic slide with annotations and extract it")
    demo.add_argument("dir", nargs="?", default="wsizarr-demo", help="output folder (default ./wsizarr-demo)")
    add_extract_options(demo)
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from .._pipeline import run_extraction
    from ..slides._demo import write_demo_annotations, write_demo_slide

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    say(f"writing a synthetic Aperio-style slide and its annotations into {folder} ...")
    sys.stdout.flush()  # said before the seconds it takes, also into a pipe
    slide = write_demo_slide(folder / "demo.svs")
    annotations = write_demo_annotations(slide, folder / "demo.xml")
    store = folder / "demo.zarr"
    say(f"wrote {slide.path} ({slide.dimensions[0]}x{slide.dimensions[1]}) and {annotations} "
        f"({count(len(slide.polygons), 'annotation')}); extracting them into {store} ...")
    sys.stdout.flush()
    summary = run_extraction(slide.path, annotations, store, extract_options(args, "overwrite"))
    say(summary)
    quoted = {name: shlex.quote(str(path)) for name, path in
              [("store", store), ("slide", slide.path), ("xml", annotations), ("png", folder / "preview.png")]}
    say("next: what the store holds, its checksums and patches re-read from the slide, a contact "
        "sheet per label, an extraction of your own:\n"
        f"  wsizarr info {quoted['store']}\n"
        f"  wsizarr verify {quoted['store']}\n"
        f"  wsizarr preview {quoted['store']} --out {quoted['png']}\n"
        f"  wsizarr extract {quoted['slide']} --annotations {quoted['xml']} --out patches.zarr --level 1")
