"""Write-path options for sharded patch stores, side by side on real H&E patches.

Compares zarr-python's default codec pipeline (``array[a:b] = pixels``), the same with the
``zarrs`` Rust pipeline (if installed), and wsizarr's whole-shard encoder (``encode_shard`` +
one ``store.set`` per shard) on one and two threads, for each lossless codec. Prints patches/s
(medians of ``--repeats`` runs) and ratios to the default pipeline.

Run: python benchmarks/bench_write.py [--patches 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import zarr

from wsizarr.slides._slide import read_rgb
from wsizarr.store._shards import encode_shard, n_shards, shard_key
from wsizarr.store._codecs import CODECS
from wsizarr.store._store import checksummed

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
PATCH = 256
SHARD = 256


def real_patches(n: int) -> np.ndarray:
    """``n`` 256-px patches of real H&E tiled from CMU-1-Small-Region, with flips for variety."""
    with openslide.OpenSlide(CMU if CMU.exists() else "/work/shared/data/slides/CMU-1-Small-Region.svs") as slide:
        image = read_rgb(slide, (0, 0), 0, slide.dimensions)
    rows, cols = image.shape[0] // PATCH, image.shape[1] // PATCH
    tiles = [image[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] for r in range(rows) for c in range(cols)]
    return np.stack([tiles[i % len(tiles)][:: 1 - 2 * ((i // len(tiles)) % 2)] for i in range(n)])


def _array(root: Path, codec: str, n: int) -> zarr.Array:
    return zarr.create_array(
        zarr.storage.LocalStore(root), name="patches", shape=(n, PATCH, PATCH, 3), dtype="uint8",
        chunks=(1, PATCH, PATCH, 3), shards=(SHARD, PATCH, PATCH, 3),
        compressors=checksummed(CODECS[codec].compressor()), zarr_format=3,
    )


def zarr_pipeline(root: Path, pixels: np.ndarray, codec: str, threads: int) -> None:
    array = _array(root, codec, len(pixels))
    for start in range(0, len(pixels), SHARD):
        array[start:start + SHARD] = pixels[start:start + SHARD]


def wsizarr_encoder(root: Path, pixels: np.ndarray, codec: str, threads: int) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    array = _array(root, codec, len(pixels))
    store = array.store

    def write(shard: int) -> None:
        data = encode_shard(pixels[shard * SHARD:(shard + 1) * SHARD], SHARD, CODECS[codec].encoder())
        key = shard_key(array.path, shard, array.ndim)
        sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(n_shards(len(pixels), SHARD))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pixels = real_patches(args.patches)
    methods = [("zarr default pipeline", zarr_pipeline, 1, None)]
    try:
        import zarrs  # noqa: F401

        methods.append(("zarr + zarrs pipeline", zarr_pipeline, 1, "zarrs.ZarrsCodecPipeline"))
    except ImportError:
        print("(zarrs not installed: pip install zarrs to compare its pipeline)")
    methods += [("wsizarr shard encoder, 1 thread", wsizarr_encoder, 1, None),
                ("wsizarr shard encoder, 2 threads", wsizarr_encoder, 2, None)]
    print(f"{args.patches} real H&E patches of {PATCH} px, shards of {SHARD}; median of {args.repeats} runs")
    print(f"{'codec':10s} {'method':34s} {'patches/s':>10s} {'vs default':>10s}")
    for codec in ("zstd", "blosc-lz4", "jpegxl"):
        baseline = None
        for name, method, threads, pipeline in methods:
            if codec == "jpegxl" and method is zarr_pipeline and pipeline:
                continue  # zarrs has no JPEG XL codec
            times = []
            for _ in range(args.repeats):
                root = Path(tempfile.mkdtemp(prefix="bench-write-"))
                config = {"codec_pipeline.path": pipeline} if pipeline else {}
                with zarr.config.set(config):
                    started = time.perf_counter()
                    method(root, pixels, codec, threads)
                    times.append(time.perf_counter() - started)
                shutil.rmtree(root)
            rate = args.patches / statistics.median(times)
            baseline = baseline or rate
            print(f"{codec:10s} {name:34s} {rate:10.0f} {rate / baseline:9.2f}x")


if __name__ == "__main__":
    main()
