"""Cost of the per-patch quality measures against the cost of extracting a patch.

Times ``measure_patches`` on real H&E patches (256 px, from the tissue of CMU-1-Small-Region)
and, in the same run, an estimate of extraction's own per-patch work: decoding one 256-px
JPEG tile (imagecodecs) and zstd-encoding one patch the way the store does (numcodecs,
level 1); and a fuller one: reading the patch through OpenSlide with its tile cache off
(``read_rgb``: JPEG decode of every tile it crosses, up to 4, and RGBA -> RGB; an upper
bound, as neighbouring patches share tiles) plus the same encoding. Prints the medians of
``--repeats`` rounds in ms per patch and patches/s, and the measures' cost as a share of
each estimate (the target is <= 10 % of the first). The works take turns in every round,
so the shared machine's load weighs on them alike.

Then the real thing, in the same run: whole extractions (``wsizarr.extract``, 2 workers) of 30
jittered 256-px patches around each of 120 glomeruli of the Aperio-style benchmark slide
(``bench_extract.make_slide``: real H&E tiles, fractional downsamples 4.00037 / 16.0015),
with the quality arrays and without, taking turns, per level and codec; medians and the
throughput ratio.

Run: python benchmarks/bench_quality.py [--patches 256] [--repeats 7] [--extract-repeats 5]
(``--quick``: a small slide, one level, 2 rounds.)
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numcodecs
import numpy as np
import openslide

import wsizarr
from wsizarr.extraction._quality import measure_patches
from wsizarr.slides._slide import read_rgb

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
PATCH = 256


def _slide() -> openslide.OpenSlide:
    return openslide.OpenSlide(CMU if CMU.exists() else "/work/shared/data/slides/CMU-1-Small-Region.svs")


def tissue_corners() -> list[tuple[int, int]]:
    """Top-left ``(x, y)`` of the 256-px windows of CMU-1-Small-Region, on a 128-px grid, that
    are at least half tissue."""
    with _slide() as slide:
        image = read_rgb(slide, (0, 0), 0, slide.dimensions)
    corners = [
        (c, r)
        for r in range(0, image.shape[0] - PATCH + 1, PATCH // 2)
        for c in range(0, image.shape[1] - PATCH + 1, PATCH // 2)
    ]
    tiles = np.stack([image[y:y + PATCH, x:x + PATCH] for x, y in corners])
    return [xy for xy, f in zip(corners, measure_patches(tiles)["tissue_fraction"]) if f >= 0.5]


def real_patches(n: int) -> np.ndarray:
    """``n`` 256-px patches of real H&E from CMU-1-Small-Region's tissue, repeated with flips
    when the slide has fewer."""
    corners = tissue_corners()
    with _slide() as slide:
        tiles = [read_rgb(slide, xy, 0, (PATCH, PATCH)) for xy in corners]
    return np.stack([tiles[i % len(tiles)][:: 1 - 2 * ((i // len(tiles)) % 2)] for i in range(n)])


def per_patch_ms(works: dict[str, Callable[[], object]], n: int, repeats: int) -> dict[str, float]:
    """Median over ``repeats`` rounds of each work's wall time, in ms per patch of ``n``. The
    works take turns within a round, so a shared machine's load weighs on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for round_ in range(repeats + 1):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            if round_:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) / n * 1e3 for name, values in times.items()}


def extraction_rates(quick: bool, repeats: int) -> None:
    """Extraction throughput with and without the quality arrays, interleaved, per level and
    codec: a table of medians (patches/s) and the ratio."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_extract import OUT, make_slide

    size, n_annotations, levels = ((4097, 3073), 12, (1,)) if quick else ((30001, 20003), 120, (0, 1))
    OUT.mkdir(exist_ok=True)
    slide = OUT / f"scanner-{size[0]}x{size[1]}-{n_annotations}.svs"
    if not slide.exists():
        make_slide(slide, *size, n_annotations)
    store = OUT / "quality-ab.zarr"
    print(f"\nExtraction of {slide.name}, 30 jittered patches per annotation, 2 workers, "
          f"median of {repeats} interleaved runs (after one warm-up)")
    print("| level | codec | patches | without quality (patches/s) | with quality (patches/s) | with / without | runs without | runs with |")
    print("|---|---|---|---|---|---|---|---|")
    for level, codec in itertools.product(levels, ("zstd", "jpeg")):
        rates: dict[bool, list[float]] = {False: [], True: []}
        n = 0
        for round_ in range(repeats + 1):
            for quality in (False, True):
                start = time.perf_counter()
                summary = wsizarr.extract(
                    slide, slide.with_suffix(".xml"), store, level=level, per_annotation=30, codec=codec,
                    workers=2, quality=quality, overwrite=True,
                )
                n = summary.n_patches
                if round_:
                    rates[quality].append(n / (time.perf_counter() - start))
        without, with_ = (statistics.median(rates[q]) for q in (False, True))
        runs = {q: ", ".join(f"{r:.0f}" for r in rates[q]) for q in (False, True)}
        print(f"| {level} | {codec} | {n} | {without:.0f} | {with_:.0f} | {with_ / without:.3f} | {runs[False]} | {runs[True]} |",
              flush=True)
    shutil.rmtree(store, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--extract-repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small slide, one level, 2 extraction rounds")
    args = parser.parse_args(argv)
    patches = real_patches(args.patches)
    n = len(patches)
    tiles = [imagecodecs.jpeg_encode(p, level=80) for p in patches]
    zstd = numcodecs.Zstd(level=1)
    corners = [xy for xy, _ in zip(itertools.cycle(tissue_corners()), range(n))]
    slide = _slide()
    slide.set_cache(openslide.OpenSlideCache(0))  # every read decodes its tiles, as in a large slide

    ms = per_patch_ms({
        "measure": lambda: measure_patches(patches),
        "decode": lambda: [imagecodecs.jpeg_decode(t) for t in tiles],
        "encode": lambda: [zstd.encode(p) for p in patches],
        "read": lambda: [read_rgb(slide, xy, 0, (PATCH, PATCH)) for xy in corners],
    }, n, args.repeats)
    slide.close()
    measure, decode, encode, read = ms["measure"], ms["decode"], ms["encode"], ms["read"]
    extraction = decode + encode
    print(f"{n} real H&E patches of {PATCH} px, median of {args.repeats} runs")
    print("| step | ms/patch | patches/s |")
    print("|---|---|---|")
    for name, ms in [
        ("measure_patches", measure), ("JPEG decode (256-px tile, q80)", decode),
        ("zstd encode (level 1)", encode), ("extraction estimate (decode + encode)", extraction),
        ("OpenSlide read_rgb, no tile cache", read), ("fuller estimate (read + encode)", read + encode),
    ]:
        print(f"| {name} | {ms:.4f} | {1e3 / ms:.0f} |")
    print(f"measure_patches / extraction estimate: {100 * measure / extraction:.1f} % (target <= 10 %)")
    print(f"measure_patches / fuller estimate: {100 * measure / (read + encode):.1f} %")
    extraction_rates(args.quick, 2 if args.quick else args.extract_repeats)


if __name__ == "__main__":
    main()
