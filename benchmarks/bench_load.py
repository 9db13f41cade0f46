"""Training-input benchmark: a PyTorch DataLoader over the same patches stored nine ways.

The patches (~10,000 jittered 256-px crops around the 120 annotations of bench_extract.py's
benchmark slide, level 1) are extracted into a lossless (zstd) and a lossy (JPEG) wsizarr store;
the zstd store's patches, with their labels, are then written as the recipe does it: a folder of
PNG files, a folder of JPEG q90 files (cv2.imwrite, one file per patch, a ``labels.csv`` beside
them), one HDF5 file (h5py, one patch per chunk, gzip), WebDataset tar shards (1,000 samples
each, members ``.jpg`` (the same JPEG q90 bytes) or ``.npy``, and ``.cls``) and MosaicML Streaming
MDS shards (``MDSWriter``, uncompressed, its default 64-MB shards; columns ``image``
``ndarray:uint8:256,256,3`` (the raw pixels) or ``jpeg`` ``bytes`` (the same JPEG q90 bytes: what
its ``jpeg`` encoding stores), and ``label`` ``int32``). Every method feeds a
``DataLoader`` with batches of 64 shuffled patches, CHW uint8 tensors ``(64, 3, 256, 256)`` plus
labels, with ``num_workers`` 0 and 2, one full epoch per run:

* PNG / JPEG folder: a map-style Dataset over the file list, cv2.imread + BGR->RGB, then
  ``torch.from_numpy(img).permute(2, 0, 1)`` per sample (the DataLoader's collate stacks them);
* HDF5: the same over an h5py dataset, the file opened lazily inside each worker;
* WebDataset: ``WebDataset(shards, shardshuffle=True).shuffle(1000)``, the ``.jpg`` members
  decoded with cv2 as the JPEG folder is, the ``.npy`` members with numpy, ``.batched(64)``,
  ``DataLoader(batch_size=None)``;
* MDS: a ``StreamingDataset(local=folder, shuffle=True, shuffle_seed=0, batch_size=64)`` (no
  remote; its own shuffle, py1e) whose ``get_item`` gives the CHW tensor (the ``.jpg`` bytes decoded
  with cv2 as above) and the label, with ``DataLoader(batch_size=64)``; every run builds a fresh
  dataset after ``streaming.base.util.clean_stale_shared_memory()``, so no shared-memory state
  (epoch counter, shard states) is carried from the run before;
* ``wsizarr.torch.PatchDataset`` with ``DataLoader(batch_size=64, shuffle=True)``;
* ``wsizarr.torch.ShardShuffledPatches(store, batch_size=64, seed=0)`` with
  ``DataLoader(ds, batch_size=None)``; and the zstd store with ``layout="HWC"`` and
  ``transform=lambda t: t.permute(0, 3, 1, 2)``: the same ``(64, 3, 256, 256)`` batch as a
  channels-last view (``torch.channels_last``, as convolutions prefer), no transposing copy; and
  both of these with ``reuse_batches=3`` (each worker decodes into its last 3 batches' shared
  memory in turn; the loop uses each batch before asking for the next, as the contract wants).

Separately, the time to the first batch of a ~100,000-patch store (JPEG) for both datasets.

MDS needs MosaicML Streaming, installed beside the bench extra without its dependencies (with
them, pip would downgrade numpy below 2.2 and replace torch 2.13.0+cpu by torch 2.14 with its CUDA
libraries and torchvision):
    pip install --no-deps mosaicml-streaming==0.13.0
    pip install xxhash zstd python-snappy brotli catalogue tqdm
Without it the script says so and leaves the MDS rows out.

Run from the repository root:  python benchmarks/bench_load.py
(``--quick`` for a small slide and a short run; results go to benchmarks/RESULTS.md, between
this script's own markers below bench_extract.py's part, unless ``--no-write-results``.)
"""

from __future__ import annotations

import argparse
import gc
import importlib.machinery
import importlib.util
import io
import os
import platform
import shutil
import statistics
import sys
import time
import types
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_extract import OUT, PATCH, cached_slide, write_results_section  # noqa: E402

BATCH = 64
PIXEL_BYTES = PATCH * PATCH * 3
WORKERS = (0, 2)
PNG, JPEG, HDF5 = "png folder", "jpeg q90 folder", "hdf5 gzip"
WDS_JPEG, WDS_NPY = "webdataset .jpg", "webdataset .npy"
WDS_SAMPLES = 1000  # per tar shard
HWC_ROW = "ShardShuffledPatches zstd HWC"
REUSE_ROW, HWC_REUSE_ROW = "ShardShuffledPatches zstd reuse", "ShardShuffledPatches zstd HWC reuse"
REUSE = 3  # reuse_batches: the least the DataLoader's default prefetch_factor (2) allows
MDS_NDARRAY, MDS_JPEG = "mds ndarray", "mds jpeg"
MDS_INSTALL = ("pip install --no-deps mosaicml-streaming==0.13.0 && "
               "pip install xxhash zstd python-snappy brotli catalogue tqdm")


# --- the recipe's datasets ---------------------------------------------------------------------


class ImageFolderDataset(Dataset):
    """One image file per patch; labels from the ``labels.csv`` (``file,label``) beside them."""

    def __init__(self, folder: Path) -> None:
        rows = [line.rsplit(",", 1) for line in (folder / "labels.csv").read_text().splitlines()[1:]]
        self.classes = sorted({label for _, label in rows})
        code = {name: i for i, name in enumerate(self.classes)}
        self.files = [str(folder / name) for name, _ in rows]
        self.labels = [code[label] for _, label in rows]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        import cv2

        image = cv2.cvtColor(cv2.imread(self.files[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return torch.from_numpy(image).permute(2, 0, 1), self.labels[i]


class HDF5Dataset(Dataset):
    """One HDF5 file; opened lazily in the process that reads (never across a fork)."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = str(path)
        with h5py.File(self.path, "r") as f:
            self.labels = f["label"][:].astype(np.int64).tolist()
        self._file = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
            self._patches = self._file["patches"]
        image = self._patches[i]
        return torch.from_numpy(image).permute(2, 0, 1), self.labels[i]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_file=None, _pid=-1)
        state.pop("_patches", None)
        return state


def _rgb_from_jpeg(data: bytes) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)


def webdataset_loader(folder: Path, member: str):  # noqa: ANN201 - a webdataset pipeline
    """WebDataset's own recipe: shards shuffled, a 1,000-sample shuffle buffer, batches of 64."""
    import webdataset as wds

    shards = sorted(str(p) for p in folder.glob("*.tar"))
    decode = _rgb_from_jpeg if member == "jpg" else lambda data: np.load(io.BytesIO(data))
    return (
        wds.WebDataset(shards, shardshuffle=len(shards), seed=0, empty_check=False)
        .shuffle(1000)
        .to_tuple(member, "cls")
        .map_tuple(lambda data: _chw(decode(data)), lambda data: int(data))
        .batched(BATCH, partial=True)
    )


def streaming_api() -> types.SimpleNamespace | None:
    """MosaicML Streaming's ``MDSWriter``, ``StreamingDataset`` and ``clean_stale_shared_memory``;
    ``None`` (having said why) where it is not installed.

    ``import streaming`` first imports its ready-made datasets (``streaming.vision`` imports
    torchvision, ``streaming.text`` and ``streaming.base``'s ``StreamingDataLoader`` transformers),
    none of which MDS needs; and PyPI's torchvision for torch 2.13 (0.28.0, a CUDA build) fails on
    import beside torch 2.13.0+cpu ("operator torchvision::nms does not exist"). So the two
    packages are entered as bare namespaces (their ``__init__`` not run) and the classes imported
    from their own modules, which need neither.
    """
    try:
        spec = importlib.util.find_spec("streaming")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("No module named 'streaming'")
        if "streaming.base.dataset" not in sys.modules:
            root = list(spec.submodule_search_locations)
            for name, path in (("streaming", root), ("streaming.base", [os.path.join(p, "base") for p in root])):
                if name not in sys.modules:
                    package = types.ModuleType(name)
                    package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
                    package.__spec__.submodule_search_locations = package.__path__ = path
                    sys.modules[name] = package
        from streaming.base.dataset import StreamingDataset
        from streaming.base.format.mds.writer import MDSWriter
        from streaming.base.util import clean_stale_shared_memory
    except ImportError as error:
        print(f"MosaicML Streaming is not installed ({error}): the MDS rows are left out. "
              f"Install it with: {MDS_INSTALL}", flush=True)
        return None
    from streaming._version import __version__

    class MDSPatches(StreamingDataset):
        """An MDS folder (no remote) as ``(CHW uint8 tensor, label)`` samples in its own shuffle."""

        def __init__(self, folder: Path, member: str) -> None:
            super().__init__(local=str(folder), shuffle=True, shuffle_seed=0, batch_size=BATCH)
            self.member = member

        def get_item(self, sample_id: int, retry: int = 7) -> tuple[torch.Tensor, int]:
            sample = super().get_item(sample_id, retry)
            image = sample["image"] if self.member == "ndarray" else _rgb_from_jpeg(sample["jpeg"])
            return _chw(image), int(sample["label"])

    # an ndarray column decodes to a read-only view of the sample's bytes; collate copies it
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    return types.SimpleNamespace(MDSWriter=MDSWriter, StreamingDataset=StreamingDataset,
                                 clean=clean_stale_shared_memory, MDSPatches=MDSPatches, version=__version__)


def mds_dataset(mds: types.SimpleNamespace, folder: Path, member: str) -> Dataset:
    """A fresh ``StreamingDataset``, after clearing any shared memory a previous one left."""
    mds.clean()
    return mds.MDSPatches(folder, member)


# --- the data ---------------------------------------------------------------------------------


def extract_store(slide: Path, out: Path, per_annotation: int, codec: str) -> tuple[int, float]:
    import wsizarr

    started = time.perf_counter()
    summary = wsizarr.extract(
        slide, slide.with_suffix(".xml"), out, level=1, per_annotation=per_annotation,
        codec=codec, overwrite=True,
    )
    return summary.n_patches, time.perf_counter() - started


def write_recipe_files(store: Path, work: Path, mds: types.SimpleNamespace | None) -> None:
    """The store's patches, in store order, as PNG and JPEG q90 files, one HDF5 file, WebDataset
    tars and (with ``mds``) MDS shards."""
    import cv2
    import h5py

    import wsizarr
    from wsizarr.store._reader import PatchReader

    table = wsizarr.read_patch_table(store)
    names = [*table.label_names, ""]  # code -1 (unlabelled) picks the trailing ""
    folders = {".png": (work / "png", []), ".jpg": (work / "jpeg", [cv2.IMWRITE_JPEG_QUALITY, 90])}
    for folder, _ in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    csv = ["file,label"]
    import webdataset as wds

    writers = {}
    for member in ("jpg", "npy"):
        shutil.rmtree(work / f"wds-{member}", ignore_errors=True)
        (work / f"wds-{member}").mkdir()
        writers[member] = wds.ShardWriter(str(work / f"wds-{member}" / "%05d.tar"), maxcount=WDS_SAMPLES, verbose=0)
    mds_columns = {"ndarray": {"image": f"ndarray:uint8:{PATCH},{PATCH},3", "label": "int32"},
                   "jpg": {"jpeg": "bytes", "label": "int32"}}
    mds_writers = {}
    for member, columns in (mds_columns.items() if mds is not None else ()):
        shutil.rmtree(work / f"mds-{member}", ignore_errors=True)  # MDSWriter wants an empty folder
        mds_writers[member] = mds.MDSWriter(out=str(work / f"mds-{member}"), columns=columns)
    with h5py.File(work / "patches.h5", "w") as f, ThreadPoolExecutor(os.cpu_count()) as pool:
        # gzip as bench_extract writes it (h5py's default level 4, one patch per chunk); the
        # chunks are deflated in threads and stored with write_direct_chunk: the same bytes on disk
        data = f.create_dataset("patches", (len(table), PATCH, PATCH, 3), "uint8",
                                chunks=(1, PATCH, PATCH, 3), compression="gzip")
        for batch in wsizarr.iter_batches(store, 256, shuffle=False):
            rgb, index = batch["patches"], batch["index"].tolist()
            bgr = np.ascontiguousarray(rgb[..., ::-1])

            def write(k: int) -> bytes:
                for suffix, (folder, flags) in folders.items():
                    cv2.imwrite(str(folder / f"patch_{index[k]:06d}{suffix}"), bgr[k], flags)
                return zlib.compress(rgb[k].tobytes(), 4)

            for k, chunk in enumerate(pool.map(write, range(len(index)))):
                data.id.write_direct_chunk((index[k], 0, 0, 0), chunk)
                label = str(int(batch["label"][k])).encode()
                jpeg = (folders[".jpg"][0] / f"patch_{index[k]:06d}.jpg").read_bytes()
                npy = io.BytesIO()
                np.save(npy, rgb[k])
                key = f"patch_{index[k]:06d}"
                writers["jpg"].write({"__key__": key, "jpg": jpeg, "cls": label})
                writers["npy"].write({"__key__": key, "npy": npy.getvalue(), "cls": label})
                if mds_writers:
                    code = np.int32(batch["label"][k])
                    mds_writers["ndarray"].write({"image": rgb[k], "label": code})
                    mds_writers["jpg"].write({"jpeg": jpeg, "label": code})
            csv += [f"patch_{i:06d}{{}},{names[code]}" for i, code in zip(index, batch["label"].tolist())]
        f["label"] = table.label
    for writer in writers.values():
        writer.close()
    for writer in mds_writers.values():
        writer.finish()  # the last shard and index.json
    for suffix, (folder, _) in folders.items():
        (folder / "labels.csv").write_text("\n".join(line.format(suffix) for line in csv) + "\n")
    # spot check: the lossless copies hold the store's pixels
    check = sorted({0, len(table) // 2, len(table) - 1})
    expected = PatchReader(store).read_patches(check)
    png, hdf5 = ImageFolderDataset(work / "png"), HDF5Dataset(work / "patches.h5")
    for row, i in enumerate(check):
        for dataset in (png, hdf5):
            if not np.array_equal(dataset[i][0].permute(1, 2, 0).numpy(), expected[row]):
                raise RuntimeError(f"{type(dataset).__name__} patch {i} differs from the store")
    import webdataset as wds

    stored = {int(s["__key__"][6:]): np.load(io.BytesIO(s["npy"])) for s in wds.WebDataset(
        sorted(str(p) for p in (work / "wds-npy").glob("*.tar")), shardshuffle=False, empty_check=False)
        if int(s["__key__"][6:]) in check}
    if any(not np.array_equal(stored[i], expected[row]) for row, i in enumerate(check)):
        raise RuntimeError("a webdataset .npy member differs from the store")
    if mds is not None:  # read back through MDS's own reader: raw pixels and the JPEG files' bytes
        for member in mds_columns:
            mds.clean()
            dataset = mds.StreamingDataset(local=str(work / f"mds-{member}"), batch_size=BATCH)
            if len(dataset) != len(table):
                raise RuntimeError(f"the MDS {member} folder holds {len(dataset)} samples, not {len(table)}")
            for row, i in enumerate(check):
                sample = dataset[i]
                same = (np.array_equal(sample["image"], expected[row]) if member == "ndarray"
                        else sample["jpeg"] == (work / "jpeg" / f"patch_{i:06d}.jpg").read_bytes())
                if not same or int(sample["label"]) != int(table.label[i]):
                    raise RuntimeError(f"MDS {member} sample {i} differs from the store")
            del dataset
            gc.collect()
        mds.clean()


def disk_bytes(path: Path) -> int:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files)


def warm(paths: list[Path]) -> int:
    """Read every file under ``paths`` once (into the page cache); the bytes read."""
    buffer = bytearray(16 << 20)
    total = 0
    for path in paths:
        for file in [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()):
            with open(file, "rb", buffering=0) as handle:
                while count := handle.readinto(buffer):
                    total += count
    return total


# --- one epoch --------------------------------------------------------------------------------


def run_epoch(make: Callable[[], Dataset], kind: str, workers: int, n: int, run: int,
              stop_after_first: bool = False) -> dict:
    """A fresh dataset and DataLoader; seconds from ``iter(loader)`` to the first and last batch."""
    started = time.perf_counter()
    dataset = make()
    construct = time.perf_counter() - started
    if kind == "map":
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(run))
    elif kind == "mds":  # an iterable dataset that shuffles and splits between workers itself
        loader = DataLoader(dataset, batch_size=BATCH, num_workers=workers)
    else:
        if kind == "iter":
            dataset.set_epoch(run)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    started = time.perf_counter()
    batches = iter(loader)
    images, labels = next(batches)
    first = time.perf_counter() - started
    if images.dtype != torch.uint8 or tuple(images.shape) != (BATCH, 3, PATCH, PATCH):
        raise RuntimeError(f"first batch is {images.dtype} {tuple(images.shape)}, not uint8 (64, 3, H, W)")
    if tuple(labels.shape) != (BATCH,):
        raise RuntimeError(f"labels of the first batch have shape {tuple(labels.shape)}")
    count = len(images)
    if not stop_after_first:
        for images, labels in batches:
            count += len(images)
    seconds = time.perf_counter() - started
    del batches, loader, dataset, images, labels
    gc.collect()
    if not stop_after_first and count != n:
        raise RuntimeError(f"an epoch gave {count} patches, not {n}")
    return {"seconds": seconds, "first": first, "construct": construct, "n": count}


class OtherLoad:
    """CPU time that processes other than this one and its children used while it ran."""

    def __init__(self) -> None:
        self.start = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float]:
        import resource

        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        mine = sum(
            getattr(resource.getrusage(who), field)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for field in ("ru_utime", "ru_stime")
        )
        return time.perf_counter(), busy, mine

    def share(self) -> float:
        """Other processes' share of all cores since the start (0..1)."""
        wall, busy, mine = (b - a for a, b in zip(self.start, self._now()))
        return max(0.0, busy - mine) / (wall * (os.cpu_count() or 1))


def _channels_last(batch: torch.Tensor) -> torch.Tensor:
    """An ``(B, H, W, 3)`` batch as the ``(B, 3, H, W)`` view it is in channels-last memory."""
    return batch.permute(0, 3, 1, 2)


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# --- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small slide, ~1,000 patches, one run each")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every configuration (median)")
    parser.add_argument("--no-write-results", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the PNG/JPEG/HDF5 copies and stores")
    args = parser.parse_args()
    started = time.perf_counter()
    from wsizarr.torch import PatchDataset, ShardShuffledPatches

    mds = streaming_api()

    if args.quick:
        size, n_annotations, per_annotation, big_per_annotation, repeats = (4096, 3072), 12, 84, 834, 1
    else:
        size, n_annotations, per_annotation, big_per_annotation, repeats = (40960, 30720), 120, 84, 834, args.repeats
    slide = cached_slide("bench", size, n_annotations)
    work = OUT / f"load-{slide.stem}"
    work.mkdir(exist_ok=True)
    stores = {codec: work / f"{codec}.zarr" for codec in ("zstd", "jpeg")}
    n = 0
    for codec, store in stores.items():
        n, seconds = extract_store(slide, store, per_annotation, codec)
        print(f"extracted {n} patches ({codec}) in {seconds:.1f} s", flush=True)
    t = time.perf_counter()
    write_recipe_files(stores["zstd"], work, mds)
    print(f"wrote the PNG and JPEG folders, the HDF5 file, the WebDataset tars"
          f"{' and the MDS folders' if mds else ''} in {time.perf_counter() - t:.1f} s", flush=True)

    methods: list[tuple[str, Callable[[], Dataset], str, Path]] = [
        (PNG, lambda: ImageFolderDataset(work / "png"), "map", work / "png"),
        (JPEG, lambda: ImageFolderDataset(work / "jpeg"), "map", work / "jpeg"),
        (HDF5, lambda: HDF5Dataset(work / "patches.h5"), "map", work / "patches.h5"),
    ]
    for codec, store in stores.items():
        methods.append((f"PatchDataset {codec}", lambda s=store: PatchDataset(s), "map", store))
    for codec, store in stores.items():
        methods.append((f"ShardShuffledPatches {codec}",
                        lambda s=store: ShardShuffledPatches(s, batch_size=BATCH, seed=0), "iter", store))
    methods.append((HWC_ROW, lambda: ShardShuffledPatches(
        stores["zstd"], batch_size=BATCH, seed=0, layout="HWC", transform=_channels_last), "iter", stores["zstd"]))
    methods.append((REUSE_ROW, lambda: ShardShuffledPatches(
        stores["zstd"], batch_size=BATCH, seed=0, reuse_batches=REUSE), "iter", stores["zstd"]))
    methods.append((HWC_REUSE_ROW, lambda: ShardShuffledPatches(
        stores["zstd"], batch_size=BATCH, seed=0, layout="HWC", transform=_channels_last, reuse_batches=REUSE),
        "iter", stores["zstd"]))
    for name, member in ((WDS_JPEG, "jpg"), (WDS_NPY, "npy")):
        methods.append((name, lambda m=member: webdataset_loader(work / f"wds-{m}", m), "batched",
                        work / f"wds-{member}"))
    if mds is not None:
        for name, member in ((MDS_NDARRAY, "ndarray"), (MDS_JPEG, "jpg")):
            methods.append((name, lambda m=member: mds_dataset(mds, work / f"mds-{m}", m), "mds",
                            work / f"mds-{member}"))
    sizes = {name: disk_bytes(path) for name, _, _, path in methods}
    t = time.perf_counter()
    warmed = warm(list(dict.fromkeys(path for _, _, _, path in methods)))  # each file once
    print(f"page cache: read all {warmed / 1e9:.2f} GB once in {time.perf_counter() - t:.1f} s "
          "before timing", flush=True)

    runs: dict[tuple[int, str], list[dict]] = {}
    load = OtherLoad()
    for run in range(repeats):  # runs interleaved, so the machine's noise spreads over all rows
        for workers in WORKERS:
            for name, make, kind, _ in methods:
                result = run_epoch(make, kind, workers, n, run)
                runs.setdefault((workers, name), []).append(result)
                print(f"run {run + 1}/{repeats}  w{workers}  {name:28s} {n / result['seconds']:7.0f} patches/s"
                      f"  first batch {result['first']:.2f} s", flush=True)
    other = load.share()
    print(f"other processes used {other:.0%} of the machine's CPU during the timed runs", flush=True)
    rows = []
    for (workers, name), results in runs.items():
        rates = sorted(n / r["seconds"] for r in results)
        rows.append({"workers": workers, "method": name, "rate": statistics.median(rates),
                     "rates": rates, "first": _median(results, "first"), "bytes": sizes[name]})

    # the first batch of a ~100k-patch store
    big = work / "first-batch.zarr"
    big_n, seconds = extract_store(slide, big, big_per_annotation, "jpeg")
    print(f"extracted {big_n} patches (jpeg) in {seconds:.1f} s", flush=True)
    warm([big])
    first_rows = []
    for name, make, kind in (
        ("PatchDataset jpeg (shuffle=True)", lambda: PatchDataset(big), "map"),
        ("ShardShuffledPatches jpeg", lambda: ShardShuffledPatches(big, batch_size=BATCH, seed=0), "iter"),
    ):
        results = [run_epoch(make, kind, 2, big_n, run, stop_after_first=True) for run in range(max(repeats, 3))]
        first_rows.append({"method": name, "first": _median(results, "first"),
                           "construct": _median(results, "construct"),
                           "firsts": sorted(r["first"] for r in results)})
        print(f"first batch of {big_n}: {name:34s} {first_rows[-1]['first']:.2f} s", flush=True)
    big_bytes = disk_bytes(big)
    shutil.rmtree(big)
    if not args.keep:  # the work folder holds only this script's copies and stores
        shutil.rmtree(work)
    total = time.perf_counter() - started
    facts = {"n": n, "big_n": big_n, "big_bytes": big_bytes, "warmed": warmed, "repeats": repeats,
             "slide": slide, "per_annotation": per_annotation, "n_annotations": n_annotations,
             "big_per_annotation": big_per_annotation, "quick": args.quick, "seconds": total,
             "other": other, "mds": mds.version if mds else None}
    print()
    print(_report(rows, first_rows, facts, targets_heading="## Targets"))
    if not args.no_write_results:
        write_results_section("bench_load.py", _report(rows, first_rows, facts, targets_heading="### Targets"))
        print(f"wrote {HERE / 'RESULTS.md'}")


# --- the report -------------------------------------------------------------------------------


def _rate(rows: list[dict], workers: int, method: str) -> float:
    return next(r["rate"] for r in rows if r["workers"] == workers and r["method"] == method)


def _report(rows: list[dict], first_rows: list[dict], facts: dict, targets_heading: str) -> str:
    import zarr

    import wsizarr

    n, repeats = facts["n"], facts["repeats"]
    command = "python benchmarks/bench_load.py" + (" --quick" if facts["quick"] else "")
    lines = [
        f"## Training input (`{command}`)", "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {facts['seconds'] / 60:.1f} min in all).",
        f"Machine: {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"zarr {zarr.__version__}, wsizarr {wsizarr.__version__}.",
        f"Data: N = {n} patches of 256 px ({facts['per_annotation']} around each of the "
        f"{facts['n_annotations']} annotations of `{facts['slide'].name}`, level 1), extracted into a "
        "zstd and a JPEG store; the zstd store's patches and labels written as PNG files, JPEG q90 "
        "files (cv2, one file a patch, `labels.csv` beside them), one HDF5 file (one patch a "
        "chunk, gzip), WebDataset tars (1,000 samples each, `.jpg` = the same JPEG q90 bytes or "
        "`.npy`; `shardshuffle` plus `.shuffle(1000)`) and " + (
            f"MosaicML Streaming {facts['mds']} MDS folders (`MDSWriter`, uncompressed 64-MB shards; "
            "`ndarray:uint8:256,256,3` pixels, or the JPEG q90 bytes as a `bytes` column decoded with "
            "cv2; read by a fresh `StreamingDataset(local=..., shuffle=True)` after "
            "`clean_stale_shared_memory()` every run, its own py1e shuffle, `DataLoader(batch_size=64)`)"
            if facts["mds"] else
            f"no MDS folders (MosaicML Streaming was not installed: `{MDS_INSTALL}`)"
        ) + ". Every run: a fresh dataset and `DataLoader` (batch 64, shuffled; "
        "`ShardShuffledPatches` with `batch_size=None`), one full epoch of the N patches as CHW "
        "uint8 `(64, 3, 256, 256)` batches plus labels; patches/s = N / (time from `iter(loader)` to "
        "the last batch, worker start-up included); first batch = `iter(loader)` to the first batch. "
        f"Medians of {repeats} run{'s' if repeats > 1 else ''} of every row, interleaved. Page cache: "
        f"every file of every method read once in full before timing ({facts['warmed'] / 1e9:.2f} GB, "
        "which stays cached in this RAM). "
        f"Other processes used {facts['other']:.0%} of the machine's CPU during the timed runs.", "",
        "| config | method | patches/s | MB/s of pixels | first batch s | × PNG folder | bytes on disk | runs patches/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        png = _rate(rows, r["workers"], PNG)
        lines.append(
            f"| w{r['workers']} N={n} | {r['method']} | {r['rate']:.0f} | {r['rate'] * PIXEL_BYTES / 1e6:.1f} | "
            f"{r['first']:.2f} | {r['rate'] / png:.2f} | {r['bytes'] / 1e6:.1f} MB | "
            f"{', '.join(f'{x:.0f}' for x in r['rates'])} |"
        )
    lines += [
        "", f"Time to the first batch of a {facts['big_n']}-patch JPEG store "
        f"({facts['big_per_annotation']} per annotation, {facts['big_bytes'] / 1e9:.2f} GB; "
        "2 workers; construct = building the dataset, which reads the patch table, not counted in "
        "the first batch):", "",
        "| config | method | first batch s | construct s | runs first batch s |",
        "|---|---|---|---|---|",
    ]
    for r in first_rows:
        lines.append(f"| w2 N={facts['big_n']} | {r['method']} | {r['first']:.2f} | {r['construct']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in r['firsts'])} |")
    lines += ["", *_reading(rows, first_rows, facts), "", targets_heading, "", *_targets(rows, first_rows, facts)]
    return "\n".join(lines) + "\n"


def _reading(rows: list[dict], first_rows: list[dict], facts: dict) -> list[str]:
    def row(workers: int, method: str) -> dict:
        return next(r for r in rows if r["workers"] == workers and r["method"] == method)

    png2 = row(2, PNG)["rate"]
    wsizarr_methods = [f"{d} {c}" for d in ("ShardShuffledPatches", "PatchDataset") for c in ("zstd", "jpeg")]
    wsizarr_methods[1:1] = [HWC_ROW, REUSE_ROW, HWC_REUSE_ROW]
    peers = tuple(m for m in (PNG, JPEG, HDF5, WDS_JPEG, WDS_NPY, MDS_NDARRAY, MDS_JPEG)
                  if any(r["method"] == m for r in rows))
    scaling = ", ".join(f"{m} {row(2, m)['rate'] / row(0, m)['rate']:.2f}×" for m in (*peers, *wsizarr_methods))
    spread = max(
        (max(r["rates"]) - min(r["rates"])) / r["rate"] for r in rows if len(r["rates"]) > 1
    ) if facts["repeats"] > 1 else 0.0
    lines = [
        "Reading the figures:", "",
        f"- With 2 workers the PNG folder feeds {png2:.0f} patches/s ({png2 * PIXEL_BYTES / 1e6:.0f} MB/s "
        "of pixels); " + ", ".join(
            f"`{m.split()[0]}` {' '.join(m.split()[1:])} {row(2, m)['rate']:.0f} ({row(2, m)['rate'] / png2:.2f}×)"
            for m in wsizarr_methods
        ) + "; " + ", ".join(f"{m} {row(2, m)['rate'] / png2:.2f}×" for m in peers[1:]) + ".",
        f"- From 0 to 2 workers (2 cores, shared with the main process): {scaling}.",
        "- Time to the first batch within the epoch, 2 workers: " + ", ".join(
            f"{m} {row(2, m)['first']:.2f} s" for m in (*peers, *wsizarr_methods)
        ) + ".",
    ]
    firsts = {r["method"].split()[0]: r["first"] for r in first_rows}
    lines.append(
        f"- First batch of the {facts['big_n']}-patch store: `PatchDataset` {firsts['PatchDataset']:.2f} s, "
        f"`ShardShuffledPatches` {firsts['ShardShuffledPatches']:.2f} s."
    )
    if facts["repeats"] > 1:
        lines.append(
            f"- Noise: the runs of one row differ by up to {spread:.0%} of its median; other processes "
            f"used {facts['other']:.0%} of the CPU meanwhile."
        )
    return lines


def _targets(rows: list[dict], first_rows: list[dict], facts: dict) -> list[str]:
    png = _rate(rows, 2, PNG)
    out = []
    for method, limit in (("ShardShuffledPatches zstd", 4.0), (HWC_ROW, 4.0), (REUSE_ROW, 4.0), (HWC_REUSE_ROW, 4.0),
                          ("ShardShuffledPatches jpeg", 3.0),
                          ("PatchDataset zstd", 1.5), ("PatchDataset jpeg", 1.5)):
        ratio = _rate(rows, 2, method) / png
        out.append(f"- {method}, 2 workers = {ratio:.2f}× the PNG folder's patches/s with 2 workers "
                   f"({'PASS' if ratio >= limit else 'FAIL'} ≥ {limit:g}×)")
    for r in first_rows:
        out.append(f"- first batch, {facts['big_n']}-patch store, {r['method']}, 2 workers = "
                   f"{r['first']:.2f} s ({'PASS' if r['first'] < 1 else 'FAIL'} < 1 s)")
    return out


if __name__ == "__main__":
    main()
