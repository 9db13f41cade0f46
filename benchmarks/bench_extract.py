"""Extraction benchmark: wsizarr against the loose-file recipe and HDF5, side by side in one run.

The recipe's workload: 30 jittered 256-px patches around each of >=100 glomerulus-sized
annotations, at levels 0, 1 and 2 of an Aperio-style slide of 40,960 x 30,720 px built from real
H&E pixels (tiles of CMU-1-Small-Region.svs with random flips and turns), plus a grid over
CMU-1-Small-Region.svs itself. Every method reads the same plan (wsizarr's jitter plan) and runs
as its own process, so start-up counts and peak RSS is per method.

Run from the repository root:  pip install -e ".[bench,codecs]" && python benchmarks/bench_extract.py
(``--quick`` for a small slide and a short run; results go to benchmarks/RESULTS.md unless
``--no-write-results``.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
SHARED = HERE.parents[1] / "shared" / "data" / "slides"
CMU = (SHARED if SHARED.is_dir() else Path("/work/shared/data/slides")) / "CMU-1-Small-Region.svs"
TILE = 256
PATCH = 256
RECIPES = ("png", "jpeg", "hdf5", "read_region")
_END = "<!-- end of bench_extract.py output; notes below are kept when it rewrites this file -->\n"


# --- the benchmark slide ---------------------------------------------------------------------


def _tissue_tiles(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Real H&E 256-px crops of CMU-1-Small-Region that are mostly tissue."""
    import openslide

    from wsizarr.slides._slide import read_rgb

    with openslide.OpenSlide(CMU) as slide:
        image = read_rgb(slide, (0, 0), 0, slide.dimensions)
    tiles: list[np.ndarray] = []
    while len(tiles) < count:
        y = int(rng.integers(0, image.shape[0] - TILE))
        x = int(rng.integers(0, image.shape[1] - TILE))
        crop = image[y : y + TILE, x : x + TILE]
        if crop.mean() < 215:
            tiles.append(crop)
    return tiles


def _jpeg(tile: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=85, subsampling="4:2:0")
    return buffer.getvalue()


def cached_slide(prefix: str, size: tuple[int, int], n_annotations: int) -> Path:
    """The benchmark slide ``OUT/<prefix>-<width>x<height>-<n_annotations>.svs``, made by
    ``make_slide`` the first time and kept for the next runs (of any benchmark)."""
    OUT.mkdir(exist_ok=True)
    slide = OUT / f"{prefix}-{size[0]}x{size[1]}-{n_annotations}.svs"
    if not slide.exists():
        t = time.perf_counter()
        make_slide(slide, *size, n_annotations)
        print(f"generated {slide.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return slide


def make_slide(path: Path, width: int, height: int, n_annotations: int, seed: int = 0) -> Path:
    """Write the Aperio-style benchmark slide and its ASAP annotations, as a scanner writes it:
    level sizes ``floor(size / 4)`` and ``floor(size / 16)`` (fractional downsamples, e.g.
    4.00037 and 16.0015) and a stripped thumbnail page after level 0."""
    import tifffile
    from PIL import Image

    from wsizarr import DemoSlide, write_demo_annotations

    rng = np.random.default_rng(seed)
    pool = _tissue_tiles(rng, 400)
    cols, rows = -(-width // TILE), -(-height // TILE)
    level1 = np.empty((rows * TILE // 4, cols * TILE // 4, 3), np.uint8)

    def level0_tiles():
        for band in range(0, rows, 4):  # four tile rows at a time, reduced into level 1
            strip = np.empty((4 * TILE, cols * TILE, 3), np.uint8)
            for r in range(min(4, rows - band)):
                for c in range(cols):
                    tile = np.rot90(pool[int(rng.integers(len(pool)))], int(rng.integers(4)))
                    if rng.random() < 0.5:
                        tile = tile[:, ::-1]
                    strip[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = tile
                    yield _jpeg(np.ascontiguousarray(tile))
            reduced = np.asarray(Image.fromarray(strip).reduce(4))
            level1[band * TILE // 4 : band * TILE // 4 + TILE] = reduced[: level1.shape[0] - band * TILE // 4]

    def tiles_of(image: np.ndarray):
        for top in range(0, image.shape[0], TILE):
            for left in range(0, image.shape[1], TILE):
                tile = np.full((TILE, TILE, 3), 243, np.uint8)
                part = image[top : top + TILE, left : left + TILE]
                tile[: part.shape[0], : part.shape[1]] = part
                yield _jpeg(tile)

    def description(shape) -> str:
        size = f"{width}x{height}" + ("" if shape[:2] == (height, width) else f" -> {shape[1]}x{shape[0]}")
        return (f"Aperio Image Library v12.0.15\r\n{size} [0,0 {width}x{height}] "
                f"({TILE}x{TILE}) JPEG/RGB Q=85|AppMag = 20|MPP = 0.499")

    def write(tiff, data, shape):
        tiff.write(
            data, shape=shape, dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
            photometric="ycbcr", subsampling=(2, 2), subfiletype=0 if shape[:2] == (height, width) else 1,
            metadata=None, description=description(shape),
        )

    sizes = [(height // 4, width // 4), (height // 16, width // 16)]
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        write(tiff, level0_tiles(), (height, width, 3))
        level1 = np.ascontiguousarray(level1[: sizes[0][0], : sizes[0][1]])
        thumbnail = np.asarray(Image.fromarray(level1).reduce(8))
        tiff.write(thumbnail, photometric="rgb", compression="jpeg", rowsperstrip=16,
                   description=description(thumbnail.shape), metadata=None)
        write(tiff, tiles_of(level1), level1.shape)
        level2 = np.asarray(Image.fromarray(level1).resize(sizes[1][::-1], Image.Resampling.BOX))
        write(tiff, tiles_of(level2), level2.shape)
    # glomeruli: 150-250 um across at 0.499 um/px, away from the edges
    polygons, labels = [], []
    for _ in range(n_annotations):
        cx, cy = rng.uniform(0.05, 0.95) * width, rng.uniform(0.05, 0.95) * height
        radius = rng.uniform(75, 125) / 0.499
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        r = radius * (1 + 0.1 * rng.standard_normal(24))
        polygons.append(np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles)]))
        labels.append("sclerotic" if rng.random() < 0.2 else "glomerulus")
    write_demo_annotations(
        DemoSlide(path, (width, height), tuple(polygons), tuple(labels)), path.with_suffix(".xml")
    )
    return path


# --- one method, in its own process ----------------------------------------------------------


def _rgb(slide, x: int, y: int, level: int) -> np.ndarray:
    from wsizarr.slides._slide import composite_on_white

    return composite_on_white(np.asarray(slide.read_region((x, y), level, (PATCH, PATCH))))


def run_method(method: str, slide_path: str, plan_path: str, out: str, options: dict) -> dict:
    """Run one method over the saved plan; returns what the child measured itself."""
    plan = np.load(plan_path)
    xs, ys, levels = plan["x"].tolist(), plan["y"].tolist(), plan["level"].tolist()
    if method.startswith("wsizarr"):
        from wsizarr.cli._main import main

        args = [
            "extract", slide_path, "--annotations", options["annotations"], "--out", out,
            "--patch-size", str(PATCH), "--seed", "0", "--codec", options["codec"],
            "--workers", str(options["workers"]), "--overwrite", "--reader", options.get("reader", "auto"),
        ]
        args += [f"--storage-option={k}={v}" for k, v in options.get("storage_options", {}).items()]
        if options.get("grid"):
            args += ["--sampler", "grid", "--level", "0", "--min-overlap", "1"]
        else:
            args += ["--level", str(levels[0]), "--per-annotation", str(options["per_annotation"])]
        code = main(args)
        if code:
            raise SystemExit(code)
        return {}
    import openslide

    slide = openslide.OpenSlide(slide_path)
    Path(out).mkdir(parents=True, exist_ok=True)
    if method in ("png", "jpeg"):
        import cv2

        flags = [cv2.IMWRITE_JPEG_QUALITY, 90] if method == "jpeg" else []
        suffix = ".jpg" if method == "jpeg" else ".png"
        for i, (x, y, level) in enumerate(zip(xs, ys, levels)):
            patch = cv2.cvtColor(_rgb(slide, x, y, level), cv2.COLOR_RGB2BGR)
            cv2.imwrite(os.path.join(out, f"patch_{i:06d}_L{level}_{x}_{y}{suffix}"), patch, flags)
    elif method == "hdf5":
        import h5py

        with h5py.File(os.path.join(out, "patches.h5"), "w") as f:
            data = f.create_dataset("patches", (len(xs), PATCH, PATCH, 3), "uint8",
                                    chunks=(1, PATCH, PATCH, 3), compression="gzip")
            for i, (x, y, level) in enumerate(zip(xs, ys, levels)):
                data[i] = _rgb(slide, x, y, level)
            for name in ("x", "y", "level"):
                f[name] = plan[name]
    elif method == "read_region":
        for x, y, level in zip(xs, ys, levels):
            _rgb(slide, x, y, level)
    return {}


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child() -> None:
    method, slide_path, plan_path, out, options = json.loads(sys.argv[2])
    fetched = _count_fetched_bytes() if options.get("storage_options") else None
    run_method(method, slide_path, plan_path, out, options)
    print(json.dumps({"rss_mib": _peak_rss_mib(), "fetched": fetched and sum(fetched)}))


def _count_fetched_bytes() -> list[int]:
    """Instrument the ranged GETs of slides on S3: the list receives every GET's size."""
    from wsizarr.annotations._files import ANNOTATION_SUFFIXES
    from wsizarr._locations import S3Location

    fetched: list[int] = []
    read_range = S3Location.read_range

    def counting(location, start, length):
        if Path(location.path).suffix.lower() not in ANNOTATION_SUFFIXES:  # a slide's
            fetched.append(length)  # list.append is atomic under the GIL: worker threads share it
        return read_range(location, start, length)

    S3Location.read_range = counting
    return fetched


def _disk(path: Path) -> tuple[int, int]:
    if not path.exists():
        return 0, 0
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files), len(files)


def measure(method: str, slide: Path, plan: Path, n: int, options: dict, keep: bool = False) -> dict:
    """Run ``method`` in a fresh process; wall time, peak RSS, bytes and files of its output."""
    out = OUT / "runs" / f"{method}-{options.get('codec', '')}-{options.get('workers', '')}-{options.get('reader', '')}"
    shutil.rmtree(out, ignore_errors=True)
    payload = json.dumps([method.split(":")[0], str(slide), str(plan), str(out), options])
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, __file__, "_run", payload], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{method} failed:\n{result.stderr[-2000:]}")
    child = json.loads(result.stdout.strip().splitlines()[-1])
    n_bytes, n_files = _disk(out)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "rss_mib": child["rss_mib"], "bytes": n_bytes, "files": n_files, "n": n,
            "fetched": child["fetched"]}


# --- the run --------------------------------------------------------------------------------


def _plan(slide: Path, level: int, per_annotation: int, grid: bool = False) -> Path:
    import wsizarr
    from wsizarr.extraction._sampling import plan_patches
    from wsizarr.slides._slide import open_slide, slide_info

    with open_slide(slide) as handle:
        info = slide_info(handle, slide)
    annotations = wsizarr.read_annotations(slide.with_suffix(".xml"))
    if grid:
        plan = plan_patches(annotations, info, sampler="grid", patch_size=PATCH, min_overlap=1.0)
    else:
        plan = wsizarr.plan_jitter(annotations, info, level=level, per_annotation=per_annotation)
    path = OUT / f"plan-{slide.stem}-{'grid' if grid else level}-{per_annotation}.npz"
    np.savez(path, x=plan.x, y=plan.y, level=plan.level)
    return path


def _cmu_grid_annotation() -> Path:
    """CMU-1-Small-Region with one rectangle covering the whole slide, for the grid sampler."""
    slide = OUT / "CMU-1-Small-Region.svs"
    if not slide.exists():
        slide.symlink_to(CMU)
    slide.with_suffix(".xml").write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        '<Annotation Name="slide" Type="Rectangle" PartOfGroup="tissue"><Coordinates>'
        '<Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="2220" Y="0" />'
        '<Coordinate Order="2" X="2220" Y="2967" /><Coordinate Order="3" X="0" Y="2967" />'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    return slide


def _cpu_busy(interval: float = 0.5) -> float:
    """The share of the machine's CPU in use (all processes) over ``interval`` seconds."""
    def ticks() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    (total0, idle0), _ = ticks(), time.sleep(interval)
    total1, idle1 = ticks()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def _median(results: list[dict]) -> dict:
    """The median of each measure over interleaved runs of one method, and every run's rate."""
    best = {k: statistics.median(r[k] for r in results) for k in results[0] if k != "fetched"}
    return {**best, "fetched": results[0]["fetched"], "runs": [r["n"] / r["seconds"] for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description="wsizarr extraction benchmark")
    parser.add_argument("--quick", action="store_true", help="small slide, one level, short run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of the main methods (median)")
    parser.add_argument("--levels", default="0,1,2", help="levels of the jitter workloads (default 0,1,2)")
    parser.add_argument("--no-write-results", action="store_true")
    parser.add_argument("--skip-rss", action="store_true", help="skip the 10k/100k RSS runs")
    parser.add_argument("--skip-s3", action="store_true", help="skip the slide read from loopback S3")
    parser.add_argument("--main-only", action="store_true", help="only the PNG recipe, read_region and wsizarr zstd")
    args = parser.parse_args()
    started = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    import wsizarr
    from wsizarr.store._codecs import CODECS

    if args.quick:
        size, n_annotations, levels, repeats = (4097, 3073), 12, (1,), 1
    else:
        size, n_annotations, repeats = (30001, 20003), 120, args.repeats
        levels = tuple(int(level) for level in args.levels.split(","))
    slide = cached_slide("scanner", size, n_annotations)
    cores = os.cpu_count() or 1
    rows: list[dict] = []
    busy: list[float] = []

    def record(workload: str, method: str, result: dict) -> None:
        rows.append({"workload": workload, "method": method, **result})
        rate = result["n"] / result["seconds"]
        print(f"{workload:24s} {method:28s} {rate:8.0f} patches/s  {result['bytes'] / 1e6:8.1f} MB"
              f"  {result['files']:6d} files  {result['rss_mib']:6.0f} MiB", flush=True)

    def timed(method: str, path: Path, plan: Path, n: int, options: dict) -> dict:
        busy.append(_cpu_busy())  # the machine just before the run: others' load
        return measure(method, path, plan, n, options)

    workloads = [(f"L{level} jitter x30", slide, level, False) for level in levels]
    workloads.append(("CMU grid L0", _cmu_grid_annotation(), 0, True))
    for workload, path, level, grid in workloads:
        plan = _plan(path, level, 30, grid)
        n = len(np.load(plan)["x"])
        options = {"annotations": str(path.with_suffix(".xml")), "per_annotation": 30, "grid": grid}
        main_methods = [  # interleaved: one run of each in turn, `repeats` rounds, medians
            ("png", "png", {}), ("read_region", "read_region", {}),
            (f"wsizarr zstd w{cores}", "wsizarr", {"codec": "zstd", "workers": cores}),
            (f"wsizarr zstd w{cores} --reader openslide", "wsizarr",
             {"codec": "zstd", "workers": cores, "reader": "openslide"}),
        ]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in main_methods}
        for _ in range(repeats):
            for name, method, extra in main_methods:
                runs[name].append(timed(method, path, plan, n, {**options, **extra}))
        for name, _, _ in main_methods:
            record(workload, name, _median(runs[name]))
        if args.main_only:
            continue
        for recipe in ("jpeg", "hdf5"):
            record(workload, recipe, timed(recipe, path, plan, n, options))
        for codec in CODECS:
            for workers in sorted({1, cores}):
                if (codec, workers) == ("zstd", cores) or (workers == 1 and codec not in ("zstd", "jpeg") and not grid):
                    continue  # measured above; one worker: the default and the lossy codec only
                record(workload, f"wsizarr {codec} w{workers}",
                       timed("wsizarr", path, plan, n, {**options, "codec": codec, "workers": workers}))
    if not args.skip_s3:
        _s3_rows(slide, 1 if args.quick else min(levels[-1], 1), repeats, cores, record, timed)
    if not args.skip_rss:
        for per_annotation in ((10, 100) if args.quick else (84, 834)):  # ~10k and ~100k patches
            plan = _plan(slide, 1, per_annotation)
            n = len(np.load(plan)["x"])
            options = {"annotations": str(slide.with_suffix(".xml")), "per_annotation": per_annotation}
            record(f"L1 jitter x{per_annotation}", f"wsizarr jpeg w{cores}",
                   timed("wsizarr", slide, plan, n, {**options, "codec": "jpeg", "workers": cores}))
    report = _report(rows, slide, time.perf_counter() - started, args.quick, busy)
    print(report)
    if not args.no_write_results:  # replace the generated part, keep the notes written below it
        results = HERE / "RESULTS.md"
        kept = results.read_text().partition(_END)[2] if results.exists() else ""
        results.write_text(report + _END + kept)
    del wsizarr


def _s3_rows(slide: Path, level: int, repeats: int, cores: int, record, timed) -> None:
    """The slide and its annotations on a loopback SeaweedFS, read with ranged GETs, against the
    same extraction from the local file (interleaved); the store is written locally."""
    import tempfile

    import obstore
    from obstore.store import S3Store

    sys.path.insert(0, str(HERE.parent))  # the tests package, for its S3 server helper
    from tests.s3server import seaweedfs

    plan = _plan(slide, level, 30)
    n = len(np.load(plan)["x"])
    workload = f"L{level} jitter x30"
    with tempfile.TemporaryDirectory() as scratch, seaweedfs(Path(scratch)) as server:
        bucket = S3Store(server.bucket, endpoint=server.endpoint, access_key_id=server.access_key_id,
                         secret_access_key=server.secret_access_key, client_options={"allow_http": True})
        for local in (slide, slide.with_suffix(".xml")):
            obstore.put(bucket, f"slides/{local.name}", local.read_bytes())
        remote = {"annotations": server.url(f"slides/{slide.with_suffix('.xml').name}"),
                  "per_annotation": 30, "codec": "zstd", "workers": cores, "storage_options": server.options}
        local = {"annotations": str(slide.with_suffix(".xml")), "per_annotation": 30, "codec": "zstd", "workers": cores}
        results: dict[str, list[dict]] = {"local": [], "s3": []}
        for _ in range(repeats):
            results["local"].append(timed("wsizarr", slide, plan, n, local))
            results["s3"].append(timed("wsizarr", server.url(f"slides/{slide.name}"), plan, n, remote))
    record(f"{workload} (S3 pair)", f"wsizarr zstd w{cores}, local slide", _median(results["local"]))
    row = _median(results["s3"])
    row["slide_bytes"] = slide.stat().st_size
    record(f"{workload} (S3 pair)", f"wsizarr zstd w{cores}, slide on S3", row)


def _report(rows: list[dict], slide: Path, seconds: float, quick: bool, busy: list[float]) -> str:
    import openslide
    import zarr

    import wsizarr

    lines = [
        "# Extraction benchmark results", "",
        f"Command: `python benchmarks/bench_extract.py{' --quick' if quick else ''}` "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {seconds / 60:.1f} min in all).",
        f"Machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"{platform.platform()}, Python {platform.python_version()}, OpenSlide "
        f"{openslide.__library_version__}, zarr {zarr.__version__}, wsizarr {wsizarr.__version__}. "
        f"CPU in use just before each run (others' load): median {statistics.median(busy):.0%}, "
        f"max {max(busy):.0%}.",
        f"Slide: `{slide.name}` (Aperio-style as scanners write it: real H&E tiles, 256-px JPEG tiles, "
        "level sizes floor(w/4) and floor(w/16), so downsamples 1 / 4.00037 / 16.0015, a stripped "
        "thumbnail page after level 0; 0.499 mpp). Every method reads the same plan of 256-px patches "
        "and runs as its own process (wall time includes start-up). The PNG recipe, bare "
        "read_region and wsizarr zstd with either reader are medians of interleaved runs (all runs "
        "listed); the other rows are single runs.", "",
        "| workload | method | patches/s | × PNG recipe | × bare read_region | bytes on disk | × PNG bytes | files | peak RSS MiB | runs (patches/s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    png = {r["workload"]: r for r in rows if r["method"] == "png"}
    bare = {r["workload"]: r for r in rows if r["method"] == "read_region"}
    for r in rows:
        rate = r["n"] / r["seconds"]
        base, floor = png.get(r["workload"]), bare.get(r["workload"])
        speed = f"{rate / (base['n'] / base['seconds']):.2f}" if base else "–"
        over_bare = f"{rate / (floor['n'] / floor['seconds']):.2f}" if floor else "–"
        size = f"{r['bytes'] / base['bytes']:.2f}" if base and r["bytes"] else "–"
        runs = ", ".join(f"{v:.0f}" for v in r.get("runs", [])) or "–"
        lines.append(
            f"| {r['workload']} (N={r['n']}) | {r['method']} | {rate:.0f} | {speed} | {over_bare} | "
            f"{r['bytes'] / 1e6:.1f} MB | {size} | {r['files']} | {r['rss_mib']:.0f} | {runs} |"
        )
    lines += ["", "## Targets", ""]
    lines += _targets(rows)
    return "\n".join(lines) + "\n"


def _targets(rows: list[dict]) -> list[str]:
    def row(workload: str, method: str) -> dict | None:
        return next((r for r in rows if r["workload"] == workload and r["method"] == method), None)

    def rate(workload: str, method: str) -> float | None:
        r = row(workload, method)
        return None if r is None else r["n"] / r["seconds"]

    cores = os.cpu_count() or 1
    out = []
    for workload in sorted({r["workload"] for r in rows if r["workload"].endswith("jitter x30")}):
        best = rate(workload, f"wsizarr zstd w{cores}")
        before = rate(workload, f"wsizarr zstd w{cores} --reader openslide")
        png, bare = rate(workload, "png"), rate(workload, "read_region")
        if best and png and bare:
            stretch = "" if workload.startswith("L0") else f", {'PASS' if best >= 10 * png else 'FAIL'} stretch ≥ 10×"
            out.append(
                f"- {workload}: wsizarr zstd, {cores} workers = {best / png:.1f}× the PNG recipe "
                f"({'PASS' if best >= 5 * png else 'FAIL'} ≥ 5×{stretch}), {best / bare:.2f}× bare per-patch "
                f"read_region ({'PASS' if best >= 2 * bare else 'FAIL'} ≥ 2×)"
                + (f"; with --reader openslide (before) {before / png:.1f}× the PNG recipe" if before else "")
            )
        png_row = row(workload, "png")
        for codec, limit, what in (("zstd", 1.0, "lossless default"), ("jpegxl", 1.0, "lossless JPEG XL"), ("jpeg", 1 / 6, "lossy JPEG q90")):
            r = row(workload, f"wsizarr {codec} w{cores}")
            if r and png_row:
                ratio = r["bytes"] / png_row["bytes"]
                out.append(f"  - {what} store = {ratio:.2f}× PNG bytes ({'PASS' if ratio <= limit else 'FAIL'} ≤ {limit:.2f})")
    for workload in sorted({r["workload"] for r in rows if r["workload"].endswith("(S3 pair)")}):
        local = row(workload, f"wsizarr zstd w{cores}, local slide")
        remote = row(workload, f"wsizarr zstd w{cores}, slide on S3")
        if local and remote:
            share = (remote["n"] / remote["seconds"]) / (local["n"] / local["seconds"])
            fetched = remote["fetched"] / remote["slide_bytes"]
            out.append(
                f"- {workload}: slide read from loopback S3 at {share:.0%} of the local rate "
                f"({'PASS' if share >= 0.5 else 'FAIL'} ≥ 50 %); ranged GETs fetched "
                f"{remote['fetched'] / 1e6:.1f} MB of the {remote['slide_bytes'] / 1e6:.1f} MB slide ({fetched:.2f}×)"
            )
    rss = [r for r in rows if r["workload"].startswith("L1 jitter x") and not r["workload"].endswith(("x30", "(S3 pair)"))]
    if len(rss) == 2:
        small, large = sorted(rss, key=lambda r: r["n"])
        flat = large["rss_mib"] <= 1.25 * small["rss_mib"] and large["rss_mib"] < 1536
        out.append(
            f"- peak RSS {small['rss_mib']:.0f} MiB at N={small['n']}, {large['rss_mib']:.0f} MiB at "
            f"N={large['n']} ({'PASS' if flat else 'FAIL'}: flat in N and < 1.5 GiB)"
        )
    return out


def write_results_section(script: str, section: str) -> None:
    """Replace ``script``'s part of RESULTS.md (between its markers ``<!-- script start -->`` and
    ``<!-- script end -->``, below this script's marker); append it at the end the first time."""
    start, stop = f"<!-- {script} start -->\n", f"<!-- {script} end -->\n"
    results = HERE / "RESULTS.md"
    text = results.read_text() if results.exists() else ""
    block = start + section + stop
    if start in text and stop in text.partition(start)[2]:
        before, _, rest = text.partition(start)
        text = before + block + rest.partition(stop)[2]
    else:
        if _END not in text:  # bench_extract.py keeps only what follows its marker
            text += ("\n" if text and not text.endswith("\n") else "") + _END
        text += ("" if text.endswith("\n\n") else "\n") + block
    results.write_text(text)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_run":
        _child()
    else:
        main()
