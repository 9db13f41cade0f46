"""Cohort scaling: how extraction, the store's root metadata and opening it grow with the NUMBER of slides.

Generates (once, cached in ``benchmarks/out/scale/``) a cohort of distinct small slides: Aperio-style
SVS files as scanners write them (256-px JPEG tiles, level sizes floor(w/4) and floor(w/16), so
fractional downsamples such as 4.0039 and 16.11, a stripped thumbnail page after level 0, 0.499 mpp
and AppMag 20 in the description), each a 2041-2047 px square crop of REAL H&E (OpenSlide's
CMU-1-Small-Region.svs, read with openslide) at its own offset and in its own orientation (one of 8
turns/flips), so every slide's pixels and content hash differ; beside each, an ASAP XML file of the
same name with 10 tissue-sized polygons (150-300 um across).

Then, for each N of ``--slides`` and each executor of ``--executors`` (``threads``: workers=2;
``dask``: ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``), ONE
extraction of the first N slides (``per_annotation=5, patch_size=64, sampler='jitter'``, level 0)
runs in a fresh subprocess (the coordinator: its peak RSS is this run's; dask's workers are other
processes), which measures wall time, peak RSS (and RSS just before ``extract``), the root
``zarr.json`` (total, its ``attributes`` and its ``consolidated_metadata``) and
``open_dataset`` (median of 5, in the same subprocess after the extraction).

Run from the repository root:
    python benchmarks/bench_scale.py --slides 200,1000,2000 --executors threads,dask
(``--repeat 3`` runs each configuration 3 times and shows the median; every run is also appended
to ``benchmarks/out/scale/rows.jsonl``, and ``--table-from FILE...`` tabulates such logs;
``--generate-only`` just builds the cohort; ``--profile`` cProfiles each run's coordinator, and on
threads its shard tasks, into ``benchmarks/out/scale/profile-*.prof``.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCALE = HERE / "out" / "scale"
COHORT = SCALE / "cohort"
SHARED = HERE.parents[1] / "shared" / "data" / "slides"
CMU = (SHARED if SHARED.is_dir() else Path("/work/shared/data/slides")) / "CMU-1-Small-Region.svs"
TILE = 256
SIDE = 2048  # level 0 is (SIDE - 1 - k) px square, k in 0..6: never a multiple of 4 or 16
MPP = 0.499
N_ANNOTATIONS = 10
GENERATOR_VERSION = 1  # bump when the slides change: the cache is rebuilt

# --- the cohort ------------------------------------------------------------------------------

_SOURCE: np.ndarray | None = None


def _source() -> np.ndarray:
    """CMU-1-Small-Region's level 0 as RGB, read once per process with openslide."""
    global _SOURCE
    if _SOURCE is None:
        import openslide

        from wsizarr.slides._slide import read_rgb

        with openslide.OpenSlide(CMU) as slide:
            _SOURCE = read_rgb(slide, (0, 0), 0, slide.dimensions)
    return _SOURCE


def _jpeg(tile: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=85, subsampling="4:2:0")
    return buffer.getvalue()


def _tiles(image: np.ndarray):
    for top in range(0, image.shape[0], TILE):
        for left in range(0, image.shape[1], TILE):
            part = image[top : top + TILE, left : left + TILE]
            if part.shape[:2] == (TILE, TILE):
                yield _jpeg(np.ascontiguousarray(part))
            else:
                tile = np.full((TILE, TILE, 3), 243, np.uint8)
                tile[: part.shape[0], : part.shape[1]] = part
                yield _jpeg(tile)


def _variant(index: int) -> tuple[int, int, int, int]:
    """Slide ``index``'s (crop x, crop y, orientation 0-7, size shrink 0-6): distinct for every
    index (offsets from a permutation of the possible positions)."""
    height, width = 2967, 2220  # CMU-1-Small-Region
    span_x, span_y = width - SIDE + 1, height - SIDE + 1
    positions = span_x * span_y * 8
    cell = (index * 7_919_993) % positions  # a prime coprime with positions: a permutation
    orientation, rest = cell % 8, cell // 8
    return rest % span_x, rest // span_x, orientation, index % 7


def make_slide(index: int, folder: str) -> str:
    """Write slide ``index`` (``scale-00042.svs``) and its annotations (``scale-00042.xml``)."""
    import tifffile
    from PIL import Image

    from wsizarr import DemoSlide, write_demo_annotations

    path = Path(folder) / f"scale-{index:05d}.svs"
    x, y, orientation, shrink = _variant(index)
    side = SIDE - 1 - shrink
    crop = _source()[y : y + SIDE, x : x + SIDE]
    crop = np.rot90(crop, orientation % 4)
    if orientation >= 4:
        crop = crop[:, ::-1]
    level0 = np.ascontiguousarray(crop[:side, :side])
    width = height = side
    sizes = [(height // 4, width // 4), (height // 16, width // 16)]
    base = Image.fromarray(level0)
    level1 = np.asarray(base.resize(sizes[0][::-1], Image.Resampling.BOX))
    level2 = np.asarray(Image.fromarray(level1).resize(sizes[1][::-1], Image.Resampling.BOX))
    thumbnail = np.asarray(Image.fromarray(level1).reduce(2))

    def description(shape) -> str:
        size = f"{width}x{height}" + ("" if shape[:2] == (height, width) else f" -> {shape[1]}x{shape[0]}")
        return (f"Aperio Image Library v12.0.15\r\n{size} [0,0 {width}x{height}] "
                f"({TILE}x{TILE}) JPEG/RGB Q=85|AppMag = 20|MPP = {MPP}")

    def write(tiff, image):
        tiff.write(
            _tiles(image), shape=image.shape, dtype=np.uint8, tile=(TILE, TILE), compression="jpeg",
            photometric="ycbcr", subsampling=(2, 2),
            subfiletype=0 if image.shape[:2] == (height, width) else 1,
            metadata=None, description=description(image.shape),
        )

    partial = path.with_suffix(".svs.partial")
    with tifffile.TiffWriter(partial) as tiff:
        write(tiff, level0)
        tiff.write(thumbnail, photometric="rgb", compression="jpeg", rowsperstrip=16,
                   description=description(thumbnail.shape), metadata=None)
        write(tiff, level1)
        write(tiff, level2)
    # 10 tissue-sized outlines (150-300 um across), away from the edges, where there is tissue
    rng = np.random.default_rng(index)
    gray = level1.mean(axis=2)
    polygons, labels = [], []
    tries = 0
    while len(polygons) < N_ANNOTATIONS:
        tries += 1
        radius = rng.uniform(75, 150) / MPP
        cx, cy = rng.uniform(radius + 8, width - radius - 8), rng.uniform(radius + 8, height - radius - 8)
        if tries < 200 and gray[int(cy) // 4, int(cx) // 4] > 215:
            continue  # glass: try elsewhere
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        r = radius * (1 + 0.1 * rng.standard_normal(24)).clip(0.7, 1.3)
        polygons.append(np.column_stack([cx + r * np.cos(angles), cy + r * np.sin(angles)]))
        labels.append("tumour" if rng.random() < 0.3 else "stroma")
    write_demo_annotations(
        DemoSlide(path, (width, height), tuple(polygons), tuple(labels)), path.with_suffix(".xml")
    )
    partial.replace(path)  # last: a slide present means its annotations are too
    return str(path)


def ensure_cohort(n: int, processes: int = 2) -> tuple[list[Path], float]:
    """The first ``n`` cohort slides, generating the missing ones; seconds spent generating."""
    COHORT.mkdir(parents=True, exist_ok=True)
    stamp = COHORT / "VERSION"
    if not stamp.exists() or stamp.read_text().strip() != str(GENERATOR_VERSION):
        shutil.rmtree(COHORT)
        COHORT.mkdir(parents=True)
        stamp.write_text(f"{GENERATOR_VERSION}\n")
    missing = [i for i in range(n) if not (COHORT / f"scale-{i:05d}.svs").exists()]
    started = time.perf_counter()
    if missing:
        with ProcessPoolExecutor(processes) as pool:
            for done, _ in enumerate(pool.map(make_slide, missing, [str(COHORT)] * len(missing), chunksize=16), 1):
                if done % 250 == 0:
                    print(f"  generated {done}/{len(missing)} slides", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    return [COHORT / f"scale-{i:05d}.svs" for i in range(n)], seconds


# --- one extraction, in its own process --------------------------------------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process, and of its reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _zarr_json_sizes(out: Path) -> dict[str, int]:
    """The root ``zarr.json``'s bytes, and what its ``attributes`` and ``consolidated_metadata``
    add to it as written (the file less the same document re-serialised without that key; zarr
    writes ``json.dumps(indent=2)``, checked here)."""
    raw = (out / "zarr.json").read_bytes()
    document = json.loads(raw)

    def without(key: str) -> int:
        return len(json.dumps({k: v for k, v in document.items() if k != key}, indent=2).encode())

    whole = len(json.dumps(document, indent=2).encode())  # == len(raw) for zarr-python's files
    return {
        "zarr_json": len(raw),
        "attrs": whole - without("attributes"),
        "consolidated": whole - without("consolidated_metadata"),
        "as_written": whole == len(raw),
    }


def _profile_tasks(profiles: list) -> None:
    """cProfile every shard task in the thread that runs it (``profiles`` receives them)."""
    import cProfile
    import threading

    import wsizarr.extraction._run as extract_module

    run_shard_task = extract_module.run_shard_task
    local = threading.local()

    def profiled(*args, **kwargs):
        if not hasattr(local, "profile"):
            local.profile = cProfile.Profile()
            profiles.append(local.profile)
        local.profile.enable()
        try:
            return run_shard_task(*args, **kwargs)
        finally:
            local.profile.disable()

    extract_module.run_shard_task = profiled


def _child(options: dict) -> dict:
    import wsizarr

    slides = [COHORT / f"scale-{i:05d}.svs" for i in range(options["n"])]
    out = Path(options["out"])
    shutil.rmtree(out, ignore_errors=True)
    client = cluster = None
    if options["executor"] == "dask":
        import distributed

        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
        client.wait_for_workers(2)
    kwargs = dict(per_annotation=5, patch_size=64, sampler="jitter", seed=0)
    if client is None:
        kwargs["workers"] = 2
    else:
        kwargs["client"] = client
    rss_before = _rss_kib()
    cpu_before = _cpu_seconds()
    profiler = None
    task_profiles: list = []
    if options.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        if client is None:  # the shard tasks run in worker threads, unseen by the coordinator's profile
            _profile_tasks(task_profiles)
    started = time.perf_counter()
    summary = wsizarr.extract(slides, COHORT, out, **kwargs)
    wall = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(options["profile"])
        if task_profiles:
            import pstats

            stats = pstats.Stats(task_profiles[0])
            for more in task_profiles[1:]:
                stats.add(more)
            stats.dump_stats(options["profile"].replace(".prof", "-tasks.prof"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cpu_self = _cpu_seconds()[0] - cpu_before[0]
    if client is not None:
        client.close()
        cluster.close()
    cpu_children = _cpu_seconds()[1] - cpu_before[1]  # dask's worker processes, once reaped
    sizes = _zarr_json_sizes(out)
    opens = []
    for _ in range(5):
        t = time.perf_counter()
        dataset = wsizarr.open_dataset(out)
        opens.append(time.perf_counter() - t)
        del dataset
    plan_seconds = getattr(summary, "plan_seconds", None)
    return {
        "n": options["n"], "executor": options["executor"], "wall": wall,
        "n_patches": summary.n_patches, "n_slides": summary.n_slides,
        "failed": len(summary.failed_slides), "rss_before_kib": rss_before, "rss_peak_kib": peak,
        "open_s": statistics.median(opens), "opens": opens, "plan_seconds": plan_seconds,
        "summary_seconds": summary.seconds, "cpu_self": cpu_self, "cpu_children": cpu_children, **sizes,
    }


def run_one(n: int, executor: str, profile: str | None = None, keep: bool = False) -> dict:
    out = SCALE / "runs" / f"{executor}-{n}-{os.getpid()}.zarr"  # two benchmarks at once do not collide
    payload = json.dumps({"n": n, "executor": executor, "out": str(out), "profile": profile})
    result = subprocess.run([sys.executable, __file__, "_run", payload], capture_output=True, text=True,
                            check=False)
    if result.returncode:
        raise RuntimeError(f"N={n} {executor} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


# --- the table -------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    smallest = {}
    for row in rows:
        if row["executor"] not in smallest or row["n"] < smallest[row["executor"]]["n"]:
            smallest[row["executor"]] = row
    lines = [
        "| N slides | executor | wall s | s/slide | patches | patches/s | RSS before MB | RSS peak MB "
        "| CPU s (coordinator + dask workers) | CPU ms/slide | RSS growth KB/slide | zarr.json KB (attrs / consolidated) | open_dataset ms, median of 5 (first) | planning slides/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = smallest[row["executor"]]
        growth = ("–" if row["n"] == base["n"] else
                  f"{(row['rss_peak_kib'] - base['rss_peak_kib']) * 1.024 / (row['n'] - base['n']):.1f}")
        plan = "n/a" if not row.get("plan_seconds") else f"{row['n'] / row['plan_seconds']:.0f}"
        if "cpu_self" in row:
            total = row["cpu_self"] + row["cpu_children"]
            cpu = f"{total:.0f}" + (f" ({row['cpu_self']:.0f} + {row['cpu_children']:.0f})" if row["cpu_children"] > 0.5 else "")
            cpu_ms = f"{total * 1000 / row['n']:.0f}"
        else:
            cpu = cpu_ms = "–"
        runs = row.get("runs_wall")
        wall = f"{row['wall']:.1f}" + (f" ({', '.join(f'{w:.1f}' for w in runs)})" if runs and len(runs) > 1 else "")
        lines.append(
            f"| {row['n']} | {row['executor']} | {wall} | {row['wall'] / row['n']:.3f} | {row['n_patches']} "
            f"| {row['n_patches'] / row['wall']:.0f} | {row['rss_before_kib'] / 1024:.0f} "
            f"| {row['rss_peak_kib'] / 1024:.0f} | {cpu} | {cpu_ms} | {growth} "
            f"| {row['zarr_json'] / 1000:.0f} ({row['attrs'] / 1000:.0f} / {row['consolidated'] / 1000:.0f}) "
            f"| {row['open_s'] * 1000:.0f} ({row['opens'][0] * 1000:.0f}) | {plan} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_run":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", default="200,1000,2000", help="cohort sizes, comma-separated")
    parser.add_argument("--executors", default="threads,dask", help="threads and/or dask")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (N, executor); the median is shown")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile each run's coordinator into out/scale/")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--table-from", type=Path, nargs="+",
                        help="only print the table of these runs (rows.jsonl, or --json output); medians by wall time")
    args = parser.parse_args()
    if args.table_from:
        runs_of: dict = {}
        for path in args.table_from:
            text = path.read_text()
            for run in json.loads(text) if text.lstrip().startswith("[") else map(json.loads, text.splitlines()):
                runs_of.setdefault((run["n"], run["executor"]), []).append(run)
        merged = []
        for key in sorted(runs_of, key=lambda k: (k[0], k[1] != "threads")):
            runs = sorted(runs_of[key], key=lambda x: x["wall"])
            row = dict(runs[(len(runs) - 1) // 2])  # the median run (the lower one of an even count)
            row["runs_wall"] = [x["wall"] for x in runs_of[key]]
            timed = sorted((x for x in runs if "cpu_self" in x), key=lambda x: x["cpu_self"] + x["cpu_children"])
            if "cpu_self" not in row and timed:  # runs logged before CPU was measured: the others' median
                median = timed[(len(timed) - 1) // 2]
                row["cpu_self"], row["cpu_children"] = median["cpu_self"], median["cpu_children"]
            merged.append(row)
        print(table(merged))
        return
    sizes = sorted(int(s) for s in args.slides.split(","))
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]
    _, seconds = ensure_cohort(max(sizes))
    print(f"cohort: {max(sizes)} slides in {COHORT} ({seconds:.1f} s generating the missing ones)", flush=True)
    if args.generate_only:
        return
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    rows = []
    for n in sizes:
        for executor in executors:
            runs = []
            for r in range(args.repeat):
                profile = str(SCALE / f"profile-{executor}-{n}.prof") if args.profile else None
                try:
                    runs.append(run_one(n, executor, profile))
                except RuntimeError as error:  # report it and go on with the other runs
                    print(f"  N={n} {executor} run {r + 1} FAILED: {error}", flush=True)
                    continue
                with (SCALE / "rows.jsonl").open("a") as log:  # every run, as it finishes
                    log.write(json.dumps(runs[-1]) + "\n")
                print(f"  N={n} {executor} run {r + 1}: {runs[-1]['wall']:.1f} s, "
                      f"load {Path('/proc/loadavg').read_text().split()[0]}", flush=True)
            if not runs:
                continue
            row = dict(sorted(runs, key=lambda x: x["wall"])[(len(runs) - 1) // 2])  # the lower median
            row["runs_wall"] = [x["wall"] for x in runs]
            rows.append(row)
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
