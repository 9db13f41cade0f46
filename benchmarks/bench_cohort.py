"""Cohort extraction to local disk, to a loopback S3 server, and on a dask cluster of 1 and 2 workers.

Uses the benchmark slide of bench_extract.py (run that first) and SeaweedFS from the test
extra. Reports patches/s, objects (files) written per 10,000 patches, for each target.

Run from the repository root:  python benchmarks/bench_cohort.py [--per-annotation 84]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tests package, for its S3 server helper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-annotation", type=int, default=84, help="84 x 120 annotations: ~10k")
    parser.add_argument("--codec", default="zstd")
    args = parser.parse_args()
    import distributed

    import wsizarr
    from tests.s3server import seaweedfs
    from wsizarr._locations import parse_location

    slides = sorted((HERE / "out").glob("scanner-*-120.svs"))
    if not slides:
        raise SystemExit("run benchmarks/bench_extract.py first: it generates the benchmark slide")
    slide = slides[0]
    kwargs = dict(level=1, per_annotation=args.per_annotation, codec=args.codec)
    rows = []
    with tempfile.TemporaryDirectory() as scratch, seaweedfs(Path(scratch)) as server:
        targets = [
            ("local disk, 2 threads", str(Path(scratch) / "local.zarr"), {}, None),
            ("loopback S3, 2 threads", server.url("cohort.zarr"), server.options, None),
        ]
        for workers in (1, 2):
            targets.append((f"loopback S3, dask {workers} worker(s)", server.url(f"dask{workers}.zarr"),
                            server.options, workers))
        for name, out, options, dask_workers in targets:
            if dask_workers:
                cluster = distributed.LocalCluster(n_workers=dask_workers, threads_per_worker=1,
                                                   processes=True, dashboard_address=None)
                client = distributed.Client(cluster)
            else:
                client = cluster = None
            started = time.perf_counter()
            summary = wsizarr.extract(slide, slide.with_suffix(".xml"), out, client=client,
                                      storage_options=options or None, workers=2, **kwargs)
            seconds = time.perf_counter() - started
            if client is not None:
                client.close()
                cluster.close()
            _, objects = parse_location(out, options or None).usage()
            rows.append((name, summary.n_patches, summary.n_patches / seconds, objects))
        shutil.rmtree(Path(scratch) / "local.zarr", ignore_errors=True)
    print(f"{'target':34s} {'N':>7s} {'patches/s':>10s} {'objects':>8s} {'per 10k':>8s}")
    for name, n, rate, objects in rows:
        print(f"{name:34s} {n:7d} {rate:10.0f} {objects:8d} {objects * 10_000 / n:8.1f}")


if __name__ == "__main__":
    main()
