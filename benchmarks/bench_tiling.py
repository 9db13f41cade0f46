"""Whole-slide tiling benchmark: wsizarr --tiles against hs2p and TIAToolbox, side by side in one run.

The job: every 256-px tile at 0.5 um/px, from level pixel 0 without overlap, that is at least half
tissue in the tool's own tissue mask, of the Aperio-style benchmark slide of bench_extract.py
(30,001 x 20,003 px of real H&E tiles, level sizes floor(w/4) and floor(w/16), 0.499 um/px, so
0.5 um/px is level 0). Each tool does it twice, each time as its own process (imports not timed,
reported apart):

- coordinates only (planning): wsizarr's prepare + plan tasks (the plan an extraction writes
  first: tissue mask, cleaning, outline, grid); hs2p's ``tile_slide``; TIAToolbox's
  ``SlidingWindowPatchExtractor`` (mask at 1.25x with Otsu, then its coordinate list);
- with pixels: ``wsizarr.extract(..., tiles=True)`` into a store (zstd, the default, and jpeg q90),
  2 workers, quality measures on (the default); hs2p's ``tile_slide`` then
  ``extract_tiles_to_tar`` (JPEG q90 tiles in a tar, 2 workers); TIAToolbox reading every tile of
  the extractor into memory (one thread: its extractor has no workers, and it writes nothing, so
  its figure leaves out encoding and writing).

The tools run in turns (``--repeats`` rounds, medians); hs2p and TIAToolbox from their own
virtual environment (they pull in heavy dependencies: torch, CUDA libraries, jupyter), made once:

    python -m venv benchmarks/out/peers-venv
    benchmarks/out/peers-venv/bin/pip install hs2p==6.1.0 tiatoolbox==2.1.3

Run from the repository root: python benchmarks/bench_tiling.py (~10 min; results go to
benchmarks/RESULTS.md between its markers unless --no-write-results). --quick: the small slide,
one round; --no-peers: wsizarr alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_extract import OUT, _cpu_busy, _disk, cached_slide, write_results_section

PEERS_PYTHON = OUT / "peers-venv" / "bin" / "python"
PEERS_SETUP = (
    "python -m venv benchmarks/out/peers-venv && "
    "benchmarks/out/peers-venv/bin/pip install hs2p==6.1.0 tiatoolbox==2.1.3"
)
MPP, TILE, MIN_TISSUE, WORKERS = 0.5, 256, 0.5, 2
COORDINATE_RUNS = 3  # per round: a plan takes ~0.1 s, where a busy moment of the machine shows
MODES = ("coordinates", "pixels")
METHODS = {  # name: (needs the peers' environment, what "with pixels" does)
    "wsizarr zstd": (False, "store, zstd (lossless), quality measures"),
    "wsizarr jpeg": (False, "store, JPEG q90, quality measures"),
    "hs2p": (True, "tar of JPEG q90 tiles"),
    "tiatoolbox": (True, "tiles read into memory, not written; one thread"),
}
_RESULT = "RESULT "


# --- one tool, in its own process --------------------------------------------------------------


def _wsizarr(method: str, mode: str, slide: Path, out: Path) -> dict:
    import wsizarr
    from wsizarr.extraction._options import (
        LabelOptions,
        ResolutionOptions,
        SamplingOptions,
        TilingOptions,
    )
    from wsizarr.extraction._planning import (
        PlanRequest,
        PrepareRequest,
        plan_slide,
        prepare_slide,
    )

    tiling = TilingOptions(tiles=True, tile_min_tissue=MIN_TISSUE)
    started = time.perf_counter()
    if mode == "coordinates":
        resolution = ResolutionOptions(mpp=MPP, patch_size=TILE)
        prepared = prepare_slide(PrepareRequest(slide, None, resolution, LabelOptions(), "auto", {}, tiling))
        plan = plan_slide(PlanRequest(prepared, 0, SamplingOptions(), LabelOptions(), {"tissue": 0}, TILE, tiling))
        n = len(plan.plan)
    else:
        n = wsizarr.extract(
            slide, None, out, tiles=True, mpp=MPP, patch_size=TILE, tile_min_tissue=MIN_TISSUE, workers=WORKERS,
            codec=method.split()[-1], overwrite=True,
        ).n_patches
    return {"seconds": time.perf_counter() - started, "n": n, "version": wsizarr.__version__}


def _hs2p(method: str, mode: str, slide: Path, out: Path) -> dict:
    import dataclasses

    import hs2p
    from hs2p import (
        DEFAULT_MASK_SAMPLING,
        FilterConfig,
        SegmentationConfig,
        SlideSpec,
        TilingConfig,
        tile_slide,
    )
    from hs2p.tiling.tar import extract_tiles_to_tar

    started = time.perf_counter()
    result = tile_slide(
        SlideSpec(sample_id=slide.stem, image_path=slide),
        tiling=TilingConfig(requested_spacing_um=MPP, requested_tile_size_px=TILE, tolerance=0.05, overlap=0.0),
        segmentation=SegmentationConfig(method="hsv"), filtering=FilterConfig(), num_workers=WORKERS,
        masks=dataclasses.replace(DEFAULT_MASK_SAMPLING, min_coverage={"tissue": MIN_TISSUE}),
    )
    if mode == "pixels":
        out.mkdir(parents=True)
        extract_tiles_to_tar(result, out, num_workers=WORKERS)
    return {"seconds": time.perf_counter() - started, "n": len(result.x), "version": hs2p.__version__,
            "backend": result.backend}


def _tiatoolbox(method: str, mode: str, slide: Path, out: Path) -> dict:
    import tiatoolbox
    from tiatoolbox.tools.patchextraction import SlidingWindowPatchExtractor

    started = time.perf_counter()
    extractor = SlidingWindowPatchExtractor(
        input_img=slide, patch_size=(TILE, TILE), input_mask="otsu", resolution=MPP, units="mpp",
        stride=(TILE, TILE), min_mask_ratio=MIN_TISSUE,
    )
    n = len(extractor)
    if mode == "pixels":
        for _ in extractor:  # each tile read (read_rect) and dropped
            pass
    return {"seconds": time.perf_counter() - started, "n": n, "version": tiatoolbox.__version__}


def _child() -> None:
    method, mode, slide, out = json.loads(sys.argv[2])
    started = time.perf_counter()
    run = _wsizarr if method.startswith("wsizarr") else _hs2p if method == "hs2p" else _tiatoolbox
    # the imports each function makes are timed apart: the first call pays them, so import first
    imports = {"wsizarr": ("wsizarr",), "hs2p": ("hs2p", "hs2p.tiling.tar"),
               "tiatoolbox": ("tiatoolbox.tools.patchextraction",)}[method.split()[0]]
    for name in imports:
        __import__(name)
    imported = time.perf_counter() - started
    result = run(method, mode, Path(slide), Path(out))
    print(_RESULT + json.dumps({**result, "import_seconds": imported}), flush=True)


def measure(method: str, mode: str, slide: Path) -> dict:
    """Run ``method`` in ``mode`` in a fresh process; what it measured, and its output's bytes."""
    out = OUT / "tiling-runs" / method.replace(" ", "-")
    shutil.rmtree(out, ignore_errors=True)
    python = str(PEERS_PYTHON) if METHODS[method][0] else sys.executable
    busy = _cpu_busy()
    result = subprocess.run(
        [python, __file__, "_run", json.dumps([method, mode, str(slide), str(out)])],
        capture_output=True, text=True, check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(_RESULT)]
    if result.returncode or not lines:
        raise RuntimeError(f"{method} ({mode}) failed:\n{result.stderr[-3000:]}")
    bytes_written = _disk(out)[0]
    shutil.rmtree(out, ignore_errors=True)
    return {**json.loads(lines[-1][len(_RESULT):]), "bytes": bytes_written, "busy": busy}


# --- the run ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="whole-slide tiling: wsizarr against hs2p and TIAToolbox")
    parser.add_argument("--quick", action="store_true", help="the small slide, one round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every tool in turn (medians)")
    parser.add_argument("--no-peers", action="store_true", help="wsizarr alone (no hs2p, no TIAToolbox)")
    parser.add_argument("--no-write-results", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    methods = [m for m, (peer, _) in METHODS.items() if not (peer and args.no_peers)]
    if not args.no_peers and not PEERS_PYTHON.exists():
        raise SystemExit(f"hs2p and TIAToolbox run from their own environment; make it once:\n  {PEERS_SETUP}\n"
                         "(or run with --no-peers)")
    size, n_annotations, repeats = ((4097, 3073), 12, 1) if args.quick else ((30001, 20003), 120, args.repeats)
    slide = cached_slide("scanner", size, n_annotations)  # bench_extract.py's, shared
    runs: dict[tuple[str, str], list[dict]] = {(m, mode): [] for m in methods for mode in MODES}
    for round_ in range(repeats):
        for mode in MODES:
            for _ in range(COORDINATE_RUNS if mode == "coordinates" else 1):
                for method in methods:
                    result = measure(method, mode, slide)
                    runs[method, mode].append(result)
                print(f"round {round_ + 1} {mode:11s} {method:13s} {result['n']:7d} tiles {result['seconds']:8.2f} s "
                      f"{result['n'] / result['seconds']:9.0f} tiles/s", flush=True)
    report = _report(runs, methods, slide, size, repeats, time.perf_counter() - started, args.quick)
    print(report)
    if not args.no_write_results:
        write_results_section("bench_tiling.py", report)
        print(f"wrote {HERE / 'RESULTS.md'}")


def _report(runs: dict, methods: list[str], slide: Path, size: tuple[int, int], repeats: int,
            seconds: float, quick: bool) -> str:
    import openslide

    median = {key: statistics.median(r["seconds"] for r in results) for key, results in runs.items()}
    rate = {key: runs[key][0]["n"] / median[key] for key in runs}
    versions = ", ".join(f"{m.split()[0]} {runs[m, 'pixels'][0]['version']}" for m in methods if m != "wsizarr jpeg")
    busy = [r["busy"] for results in runs.values() for r in results]
    command = "python benchmarks/bench_tiling.py" + (" --quick" if quick else "")
    lines = [
        f"## Whole-slide tiling (`{command}`, {time.strftime('%Y-%m-%d %H:%M')})", "",
        (f"{seconds / 60:.1f} min in all. Machine: {os.cpu_count()} cores, {platform.platform()}, Python "
         f"{platform.python_version()}, OpenSlide {openslide.__library_version__}; {versions}. CPU in use just "
         f"before each run (others' load): median {statistics.median(busy):.0%}, max {max(busy):.0%}."),
        f"Slide: `{slide.name}` ({size[0]:,} x {size[1]:,} px, bench_extract.py's Aperio-style slide of real H&E "
        "tiles, downsamples 1 / 4.00037 / 16.0015, 0.499 um/px). Job: the 256-px tiles at 0.5 um/px, no overlap, "
        "at least half tissue in the tool's own mask; each tool in its own process, imports not timed; "
        f"{repeats} round{'s' if repeats > 1 else ''} in turn ({COORDINATE_RUNS} coordinate runs of each tool a round), medians. hs2p with its defaults otherwise (HSV "
        "segmentation at downsample 64, which reads the level nearest it: the same 1/16 level wsizarr's mask "
        "comes from; backend " + str(runs.get(("hs2p", "pixels"), [{}])[0].get("backend", "–"))
        + "), TIAToolbox's Otsu mask at 1.25x.", "",
        "| tool | tiles | coordinates: ms | × wsizarr | with pixels: what | s | tiles/s | × wsizarr zstd | bytes | imports s | runs (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base_plan, base_pixels = median["wsizarr zstd", "coordinates"], rate["wsizarr zstd", "pixels"]
    for method in methods:
        plan, pixels = (method, "coordinates"), (method, "pixels")
        runs_text = "; ".join(", ".join(f"{r['seconds']:.2f}" for r in runs[key]) for key in (plan, pixels))
        lines.append(
            f"| {method} | {runs[pixels][0]['n']:,} | {1000 * median[plan]:.0f} | "
            f"{median[plan] / base_plan:.2f} | {METHODS[method][1]} | {median[pixels]:.1f} | {rate[pixels]:,.0f} | "
            f"{base_pixels / rate[pixels]:.2f} | {runs[pixels][0]['bytes'] / 1e6:,.1f} MB | "
            f"{runs[pixels][0]['import_seconds']:.1f} | {runs_text} |"
        )
    lines += ["", (
        "× wsizarr, above 1 wsizarr (zstd) is faster, below 1 the tool: for the coordinates the tool's time over "
        "wsizarr's (planning costs per slide: the mask and the grid, whatever the tiles kept), with pixels "
        "wsizarr's tiles/s over the tool's. Runs: coordinates; with pixels. The tools keep different tiles: each finds the tissue its own way, and this "
        "slide is tissue from edge to edge, with no glass for Otsu's threshold (wsizarr, TIAToolbox) to separate, "
        "so it splits the stain in two, where hs2p's fixed saturation threshold keeps nearly every tile; hence "
        "rates. wsizarr's coordinates include tracing the tissue outline it stores with the tiles."
    )]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_run":
        _child()
    else:
        main()
