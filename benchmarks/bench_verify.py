"""How long ``wsizarr verify`` takes to check every checksum of a store (no slide reads).

Extracts (once, cached in ``benchmarks/out/``) about ``--patches`` patches of ``--patch-size``
px from the demo slide with ``--codec``, then times ``verify(store, sample=0)``, which reads
every shard whole and checks its index and every patch's crc32c: the median of ``--repeats``
runs (the files are in the page cache after the first), in seconds, patches/s and MB/s.

Run: python benchmarks/bench_verify.py [--patches 10000] [--patch-size 256] [--codec zstd]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from wsizarr import extract, verify
from wsizarr.slides._demo import write_demo_annotations, write_demo_slide
from wsizarr._locations import parse_location

OUT = Path(__file__).resolve().parent / "out"
GLOMERULI = 24  # the demo slide's annotations


def demo_store(patches: int, patch_size: int, codec: str = "zstd") -> Path:
    """A store of about ``patches`` patches of the demo slide, extracted once into
    ``benchmarks/out/`` (``bench_add_array.py`` uses it too)."""
    OUT.mkdir(parents=True, exist_ok=True)
    slide = OUT / "verify-demo.svs"
    if not slide.exists():
        write_demo_annotations(write_demo_slide(slide, n_glomeruli=GLOMERULI), slide.with_suffix(".xml"))
    per_annotation = -(-patches // GLOMERULI)
    store = OUT / f"verify-{GLOMERULI * per_annotation}-{patch_size}px-{codec}.zarr"
    if not store.exists():
        extract(slide, slide.with_suffix(".xml"), store, level=0, patch_size=patch_size,
                per_annotation=per_annotation, codec=codec)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=10_000)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--codec", default="zstd")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    store = demo_store(args.patches, args.patch_size, args.codec)
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        report = verify(store, sample=0)
        times.append(time.perf_counter() - started)
        assert report.ok, report
    seconds = statistics.median(times)
    megabytes = parse_location(store).usage()[0] / 1e6
    print(f"{store.name}: {report.n_patches} patches in {report.shards} shards, {megabytes:.0f} MB")
    print(f"verify --sample 0: {seconds:.2f} s (median of {args.repeats}), "
          f"{report.patches_checked / seconds:,.0f} patches/s, {megabytes / seconds:,.0f} MB/s")


if __name__ == "__main__":
    main()
