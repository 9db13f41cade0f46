"""zarr's two S3 stores on a loopback SeaweedFS: FsspecStore (s3fs) vs ObjectStore (obstore).

Writes ``--shards`` shards of real 256-px H&E patches (zstd, ``--shard-size`` patches, ~1-2 MB
each) the way the engine does (one ``store.set`` per encoded shard, ``--workers`` threads), then
reads them back whole (``array[:]``) and as ``--random`` single patches (a loader's pattern: two
ranged GETs each). Prints patches/s, MB/s and this process's CPU seconds per 1000 patches (the
client's share; the server runs beside it), medians of ``--repeats`` alternating runs.

Run: pip install -e ".[test]" s3fs && python benchmarks/bench_s3.py [--shards 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_write import real_patches  # noqa: E402  (a sibling script)

from tests.s3server import S3Server, seaweedfs  # noqa: E402
from wsizarr._locations import parse_location  # noqa: E402
from wsizarr.store._shards import encode_shard, shard_key  # noqa: E402
from wsizarr.store._codecs import CODECS  # noqa: E402
from wsizarr.store._store import checksummed

PATCH = 256


def fsspec_store(server: S3Server, prefix: str) -> zarr.abc.store.Store:
    return zarr.storage.FsspecStore.from_url(
        server.url(prefix),
        storage_options={
            "key": server.access_key_id, "secret": server.secret_access_key,
            "endpoint_url": server.endpoint,
        },
    )


def obstore_store(server: S3Server, prefix: str) -> zarr.abc.store.Store:
    return parse_location(server.url(prefix), server.options).open("w")


def run(
    make: Callable[[S3Server, str], zarr.abc.store.Store], server: S3Server, shards: list[bytes],
    shard_size: int, workers: int, n_random: int, rng: np.random.Generator,
) -> tuple[tuple[float, float], ...]:
    """(wall, CPU) seconds to write every shard, read the whole array, read ``n_random`` patches."""
    prefix = f"bench-{time.time_ns()}.zarr"
    n = len(shards) * shard_size
    array = zarr.create_array(
        make(server, prefix), name="patches", shape=(n, PATCH, PATCH, 3), dtype="uint8",
        chunks=(1, PATCH, PATCH, 3), shards=(shard_size, PATCH, PATCH, 3),
        compressors=checksummed(CODECS["zstd"].compressor()), zarr_format=3,
    )
    buffers = [default_buffer_prototype().buffer.from_bytes(data) for data in shards]

    def write(index: int) -> None:
        key = shard_key("patches", index, array.ndim)
        sync(array.store.set(key, buffers[index]))

    def write_all() -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(write, range(len(shards))))

    reader = zarr.open_array(make(server, prefix), path="patches", mode="r")

    def read_random() -> None:
        for index in rng.integers(0, n, n_random).tolist():
            reader[index]

    return timed(write_all), timed(lambda: reader[:]), timed(read_random)


def timed(action: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=300)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--random", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    pixels = real_patches(args.shards * args.shard_size)
    shards = [
        encode_shard(pixels[i:i + args.shard_size], args.shard_size, CODECS["zstd"].encoder())
        for i in range(0, len(pixels), args.shard_size)
    ]
    n, megabytes = len(pixels), sum(map(len, shards)) / 1e6
    print(f"{len(shards)} shards of {args.shard_size} patches, {megabytes / len(shards):.2f} MB "
          f"each on average; {args.workers} writer threads")
    stores = {"FsspecStore (s3fs)": fsspec_store, "ObjectStore (obstore)": obstore_store}
    times: dict[str, list[tuple[tuple[float, float], ...]]] = {name: [] for name in stores}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder, seaweedfs(Path(folder)) as server:
        print(f"SeaweedFS ready in {server.startup_seconds:.2f} s")
        for _ in range(args.repeats):
            for name, make in stores.items():
                times[name].append(
                    run(make, server, shards, args.shard_size, args.workers, args.random, rng)
                )
    print(f"{'store':24} {'write p/s':>10} {'MB/s':>5} {'CPU':>5} {'read p/s':>9} {'MB/s':>5} "
          f"{'CPU':>5} {'random p/s':>11} {'CPU':>5}   (CPU: client s per 1000 patches)")
    for name, runs in times.items():
        (write, write_cpu), (read, read_cpu), (random, random_cpu) = (
            tuple(map(statistics.median, zip(*phase))) for phase in zip(*runs)
        )
        print(f"{name:24} {n / write:10.0f} {megabytes / write:5.0f} {1000 * write_cpu / n:5.2f} "
              f"{n / read:9.0f} {megabytes / read:5.0f} {1000 * read_cpu / n:5.2f} "
              f"{args.random / random:11.0f} {1000 * random_cpu / args.random:5.2f}")


if __name__ == "__main__":
    main()
