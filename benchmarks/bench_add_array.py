"""How close ``add_array`` with a trivial function comes to reading the store alone.

Extracts (once, cached in ``benchmarks/out/``) about ``--patches`` patches of ``--patch-size``
px from the demo slide, then in the same run, alternating, ``--repeats`` times each:

* reading alone: ``PatchReader.read_shard`` over every shard (checksums checked), on
  ``--workers`` threads, as ``add_array``'s tasks read them;
* ``add_array`` with a trivial ``fn`` (each patch's first pixel, as float32) on a fresh copy of
  the store, the same ``--workers`` threads: read, call, check, write a chunk, mark the shard
  done, finalise;
* ``add_array`` with the mean colour of each patch (a pass over every pixel: some compute).

Prints patches/s of each (medians) and the ratio to reading alone: with the trivial ``fn``, the
cost of the writing and bookkeeping around an I/O-bound function.

Run: python benchmarks/bench_add_array.py [--patches 10000] [--patch-size 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench_verify import OUT, demo_store
from wsizarr import add_array
from wsizarr.store._reader import PatchReader


def first_pixel(batch: np.ndarray) -> np.ndarray:
    return batch[:, 0, 0].astype(np.float32)


def mean_colour(batch: np.ndarray) -> np.ndarray:
    return batch.reshape(len(batch), -1, 3).mean(axis=1, dtype=np.float32)


FUNCTIONS = {"first pixel (trivial)": first_pixel, "mean colour": mean_colour}


def read_alone(store: Path, workers: int) -> float:
    """Seconds to read every shard whole, checksums checked, on ``workers`` threads."""
    reader = PatchReader(store)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(reader.read_shard, range(reader.n_shards)):
            pass
    return time.perf_counter() - started


def add(store: Path, scratch: Path, workers: int, fn) -> float:
    """Seconds ``add_array`` takes on a fresh copy of ``store``."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(store, scratch)
    started = time.perf_counter()
    add_array(scratch, "colour", fn, workers=workers)
    seconds = time.perf_counter() - started
    shutil.rmtree(scratch)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=10_000)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    store = demo_store(args.patches, args.patch_size)  # the store bench_verify.py times
    n = PatchReader(store).n_patches
    scratch = OUT / "bench-add-array.zarr"
    read_alone(store, args.workers)  # the page cache warm for both
    reads: list[float] = []
    adds: dict[str, list[float]] = {name: [] for name in FUNCTIONS}
    for _ in range(args.repeats):  # interleaved: a busy moment costs every variant alike
        reads.append(read_alone(store, args.workers))
        for name, fn in FUNCTIONS.items():
            adds[name].append(add(store, scratch, args.workers, fn))
    read_rate = n / statistics.median(reads)
    print(f"{store.name}: {n} patches, {args.workers} workers, medians of {args.repeats}, {os.cpu_count()} cores")
    print(f"reading alone (read_shard, every shard): {read_rate:8,.0f} patches/s")
    for name, seconds in adds.items():
        rate = n / statistics.median(seconds)
        print(f"add_array, {name + ':':<22}  {rate:8,.0f} patches/s  ({rate / read_rate:.2f} of reading alone)")


if __name__ == "__main__":
    main()
