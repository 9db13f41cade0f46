"""Reading stores back: the shard reader, the patch table, numpy batches, xarray and PyTorch."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

import wsizarr
from wsizarr import IncompleteStoreError, ParameterError, StoreError, extract, iter_batches, read_patch_table
from wsizarr.slides._demo import write_demo_annotations, write_demo_slide
from wsizarr.store._reader import PatchReader
from wsizarr.store._codecs import CODECS
from wsizarr.torch import PatchDataset, ShardShuffledPatches, balanced_sampler

SHARD = 16
KWARGS = dict(level=1, patch_size=48, per_annotation=7, shard_size=SHARD, seed=3, masks=True, background=5)


@pytest.fixture(scope="module")
def cohort_store(tmp_path_factory) -> Path:
    """Three slides, 12 glomeruli x 7 patches plus 5 background patches a slide, shards of 16."""
    root = tmp_path_factory.mktemp("loaders")
    slides = []
    for i, name in enumerate(["A-001", "B-002", "C-003"]):
        slide = write_demo_slide(root / f"{name}.svs", width=2048, height=1536, n_glomeruli=3 + i,
                                 glomerulus_px=180, seed=20 + i)
        write_demo_annotations(slide, root / f"{name}.xml")
        slides.append(slide.path)
    store = root / "cohort.zarr"
    extract(slides, root, store, **KWARGS)
    return store


@pytest.fixture(scope="module")
def stored(cohort_store) -> dict[str, np.ndarray]:
    """What zarr itself reads from the store: the reference for every loader."""
    group = zarr.open_group(cohort_store, mode="r")
    return {name: np.asarray(group[name][:]) for name in ("patches", "masks", "label", "annotation_id", "slide", "x")}


# --- the shard reader ----------------------------------------------------------------------


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_reader_equals_zarr_for_every_codec(tmp_path, aperio_even_case, codec):
    store = tmp_path / f"{codec}.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, level=1, patch_size=64,
            per_annotation=5, shard_size=SHARD, codec=codec, masks=True)
    group = zarr.open_group(store, mode="r")
    reader = PatchReader(store)
    assert reader.n_shards == 3  # 40 patches: the last shard is partial
    for name in ("patches", "masks"):
        whole = np.concatenate([reader.read_shard(s, name) for s in range(reader.n_shards)])
        np.testing.assert_array_equal(whole, group[name][:])
        picks = np.array([39, 0, 17, 17, 5, 38])
        np.testing.assert_array_equal(reader.read_patches(picks, name), group[name][:][picks])


def test_a_damaged_or_missing_shard_is_named(tmp_path, aperio_even_case):
    store = tmp_path / "damaged.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, level=1, patch_size=64,
            per_annotation=5, shard_size=SHARD)
    shard = store / "patches" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index: its checksum fails
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard 1 of 'patches' is unreadable \(its index fails its checksum"):
        PatchReader(store).read_shard(1)
    with pytest.raises(StoreError, match="shard 1 of 'patches'"):
        PatchReader(store).read_patches([20])
    PatchReader(store).read_shard(0)  # the others still read
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    data[100:400] = bytes(300)  # inside the first patch's chunk: its checksum fails
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard 1 of 'patches' is unreadable \(patch 16 fails its checksum"):
        PatchReader(store).read_shard(1)
    shard.unlink()
    with pytest.raises(StoreError, match="shard 1 of 'patches' is unreadable \\(the shard file is missing\\)"):
        PatchReader(store).read_shard(1)
    with pytest.raises(ParameterError, match="no 'masks' array; extract with masks=True"):
        PatchReader(store).read_shard(0, "masks")


def test_loaders_refuse_an_incomplete_store(tmp_path, aperio_even_case):
    store = tmp_path / "interrupted.zarr"

    def stop_after_one_shard(done, total):
        if done >= SHARD:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(aperio_even_case.slide, aperio_even_case.annotations, store, level=1, patch_size=64,
                per_annotation=5, shard_size=SHARD, workers=1, progress=stop_after_one_shard)
    message = "the extraction did not finish .* run the same extraction with resume=True"
    for load in (read_patch_table, PatchReader, PatchDataset, lambda s: iter_batches(s, 4),
                 lambda s: ShardShuffledPatches(s, batch_size=4), wsizarr.open_dataset):
        with pytest.raises(IncompleteStoreError, match=message):
            load(store)


# --- the patch table: selection, splits, weights ---------------------------------------------


def test_table_selects_by_label_slide_and_annotation(cohort_store, stored):
    table = read_patch_table(cohort_store)
    assert table.slide_names == ("A-001.svs", "B-002.svs", "C-003.svs")
    assert set(table.label_names) >= {"glomerulus", "background"}
    background = table.select(labels=["background"])
    assert len(background) == 15
    assert (stored["annotation_id"][background] == -1).all()
    b_glomeruli = table.select(slides=["B-002"], labels=["glomerulus", "sclerotic"])
    assert set(stored["slide"][b_glomeruli]) == {1}
    assert len(b_glomeruli) == 4 * 7
    one = table.select(slides=[2], annotations=[0])
    assert len(one) == 7 and (stored["slide"][one] == 2).all()
    assert len(table.select(indices=one, labels=["background"])) == 0
    with pytest.raises(ParameterError, match="no label 'tumour'; the store has"):
        table.select(labels=["tumour"])
    with pytest.raises(ParameterError, match="no slide 'Z-999'"):
        table.select(slides=["Z-999"])


def test_table_repr_is_a_short_summary(cohort_store, stored):
    table = read_patch_table(cohort_store)
    text = repr(table)
    per_label = {name: int((stored["label"] == code).sum()) for code, name in enumerate(table.label_names)}
    assert text.startswith(f"PatchTable({str(cohort_store)!r}: {len(table)} patches from 3 slides (A-001.svs, ")
    assert "labels " + ", ".join(f"{name} {n}" for name, n in per_label.items()) in text
    assert "fields x, y, level, annotation_id, label, slide, padded" in text and "quality tissue_fraction, " in text
    assert len(text) < 400 and "\n" not in text and "[" not in text  # no array printed
    assert str(table) == text


@pytest.mark.parametrize("seed", range(5))
def test_split_by_annotation_keeps_each_glomerulus_on_one_side(cohort_store, seed):
    table = read_patch_table(cohort_store)
    train, validation = table.split(0.25, by="annotation", seed=seed)
    assert len(np.intersect1d(train, validation)) == 0
    assert len(train) + len(validation) == len(table)
    assert 0.25 * len(table) <= len(validation) < 0.25 * len(table) + 7 + 1

    def groups(indices):
        annotated = indices[table.annotation_id[indices] >= 0]
        return set(zip(table.slide[annotated].tolist(), table.annotation_id[annotated].tolist()))

    assert groups(train) and groups(validation)
    assert not groups(train) & groups(validation)


def test_split_by_slide_and_within_a_selection(cohort_store):
    table = read_patch_table(cohort_store)
    train, validation = table.split(0.3, by="slide", seed=1)
    assert not set(table.slide[train]) & set(table.slide[validation])
    glomeruli = table.select(labels=["glomerulus", "sclerotic"])
    train, validation = table.split(0.5, indices=glomeruli)
    assert set(np.concatenate([train, validation])) == set(glomeruli)
    with pytest.raises(ParameterError, match="single slide group, so no split by slide exists; split by annotation"):
        table.split(0.5, by="slide", indices=table.select(slides=[0]))
    with pytest.raises(ParameterError, match="between 0 and 1"):
        table.split(1.5)


def test_balanced_sampler_draws_labels_equally(cohort_store):
    dataset = PatchDataset(cohort_store)
    weights = dataset.table.balanced_weights(dataset.indices)
    for code in np.unique(dataset.table.label):
        assert weights[dataset.table.label == code].sum() == pytest.approx(1.0)
    drawn = dataset.table.label[np.array(list(balanced_sampler(dataset, num_samples=6000, seed=0)))]
    counts = np.bincount(drawn - drawn.min())
    counts = counts[counts > 0]
    assert len(counts) == len(np.unique(dataset.table.label))
    assert counts.min() > 0.8 * counts.max()  # the 15 background patches drawn as often as 70 glomeruli


# --- numpy batches -------------------------------------------------------------------------


def test_iter_batches_yields_every_patch_once_in_shuffled_order(cohort_store, stored):
    n = len(stored["x"])
    batches = list(iter_batches(cohort_store, 10, seed=4, shuffle_buffer=40, masks=True))
    order = np.concatenate([b["index"] for b in batches])
    assert sorted(order.tolist()) == list(range(n))
    assert [len(b["index"]) for b in batches] == [10] * (n // 10) + ([n % 10] if n % 10 else [])
    for batch in batches:
        np.testing.assert_array_equal(batch["patches"], stored["patches"][batch["index"]])
        np.testing.assert_array_equal(batch["masks"], stored["masks"][batch["index"]])
        np.testing.assert_array_equal(batch["label"], stored["label"][batch["index"]])
        np.testing.assert_array_equal(batch["x"], stored["x"][batch["index"]])
    assert len({int(i) // SHARD for i in batches[0]["index"]}) == 1  # the first waits for one shard only
    assert max(len({int(i) // SHARD for i in b["index"]}) for b in batches) > 1  # then the buffer mixes shards
    again = np.concatenate([b["index"] for b in iter_batches(cohort_store, 10, seed=4, shuffle_buffer=40)])
    np.testing.assert_array_equal(order, again)
    other_epoch = np.concatenate([b["index"] for b in iter_batches(cohort_store, 10, seed=4, epoch=1)])
    assert not np.array_equal(order, other_epoch)
    in_order = np.concatenate([b["index"] for b in iter_batches(cohort_store, 10, shuffle=False)])
    np.testing.assert_array_equal(in_order, np.arange(n))


def test_iter_batches_of_a_selection_across_ranks(cohort_store, stored):
    table = read_patch_table(cohort_store)
    chosen = table.select(labels=["glomerulus", "sclerotic"])
    parts = [
        np.concatenate([b["index"] for b in iter_batches(cohort_store, 8, indices=chosen, rank=r, world_size=2, drop_last=False)])
        for r in range(2)
    ]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(np.concatenate(parts).tolist()) == chosen.tolist()
    dropped = list(iter_batches(cohort_store, 8, indices=chosen, drop_last=True))
    assert all(len(b["index"]) == 8 for b in dropped) and len(dropped) == len(chosen) // 8
    with pytest.raises(ParameterError, match="rank 2 must lie in 0..1"):
        iter_batches(cohort_store, 8, rank=2, world_size=2)
    with pytest.raises(ParameterError, match="batch size must be at least 1"):
        iter_batches(cohort_store, 0)


# --- xarray --------------------------------------------------------------------------------


def test_open_dataset_is_lazy_and_selects_by_label(cohort_store, stored):
    import dask.array

    dataset = wsizarr.open_dataset(cohort_store)
    assert isinstance(dataset.patches.data, dask.array.Array)
    assert dataset.patches.data.chunks[0][0] == SHARD  # one dask chunk per shard
    sclerotic = dataset.where(dataset.label == "sclerotic", drop=True)
    codes = stored["label"]
    wanted = np.flatnonzero(codes == list(read_patch_table(cohort_store).label_names).index("sclerotic"))
    assert sclerotic.sizes["patch"] == len(wanted) > 0
    np.testing.assert_array_equal(sclerotic.patches.values.astype(np.uint8), stored["patches"][wanted])
    kept = dataset.sel(patch=dataset.label == "sclerotic")  # the README's uint8-preserving form
    assert kept.patches.dtype == np.uint8
    np.testing.assert_array_equal(kept.patches.values, stored["patches"][wanted])


# --- PyTorch: the shard-shuffled iterable ----------------------------------------------------


def _epoch(dataset, workers: int, **loader) -> tuple[np.ndarray, list]:
    seen, batches = [], []
    for images, targets, meta in DataLoader(dataset, batch_size=None, num_workers=workers, **loader):
        seen.append(meta["index"].numpy())
        batches.append((images, targets, meta))
    return np.concatenate(seen), batches


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")  # 3 workers on 2 cores, on purpose
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_shard_shuffled_patches_once_per_epoch(cohort_store, stored, workers):
    dataset = ShardShuffledPatches(cohort_store, batch_size=12, seed=7, shuffle_buffer=32, with_meta=True)
    first, batches = _epoch(dataset, workers)
    assert sorted(first.tolist()) == list(range(len(stored["x"])))
    for images, targets, meta in batches:
        index = meta["index"].numpy()
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 48, 48)
        np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), stored["patches"][index])
        np.testing.assert_array_equal(targets.numpy(), stored["label"][index])
        np.testing.assert_array_equal(meta["annotation_id"].numpy(), stored["annotation_id"][index])
    dataset.set_epoch(1)
    second, _ = _epoch(dataset, workers)
    assert sorted(second.tolist()) == sorted(first.tolist())
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("target", ["label", "mask"])
def test_reused_batches_stay_whole_until_the_next_is_asked_for(cohort_store, stored, target):
    """``reuse_batches=3`` with 2 workers and ``prefetch_factor=2`` (the least it allows): every
    batch equals the store's patches while it is used before the next is asked for, every patch
    comes once; the batches held past that are overwritten by later ones (so the check can fail)."""
    dataset = ShardShuffledPatches(cohort_store, batch_size=5, seed=4, with_meta=True, target=target, reuse_batches=3)
    held = []
    for images, targets, meta in DataLoader(dataset, batch_size=None, num_workers=2, prefetch_factor=2):
        index = meta["index"].numpy()
        np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), stored["patches"][index])
        np.testing.assert_array_equal(targets.numpy(), stored["masks" if target == "mask" else "label"][index])
        held.append((images, index))
    assert sorted(np.concatenate([index for _, index in held]).tolist()) == list(range(len(stored["x"])))
    overwritten = [not np.array_equal(images.permute(0, 2, 3, 1).numpy(), stored["patches"][index]) for images, index in held]
    assert any(overwritten) and not all(overwritten)  # each worker's last batches stand
    with pytest.raises(ParameterError, match="reuse_batches must be 0"):
        ShardShuffledPatches(cohort_store, batch_size=5, reuse_batches=-1)


def test_two_iterations_of_one_dataset_interleaved(cohort_store, stored):
    dataset = ShardShuffledPatches(cohort_store, batch_size=7, seed=5, shuffle_buffer=20, with_meta=True)
    for (a, _, meta_a), (b, _, meta_b) in zip(iter(dataset), iter(dataset)):  # one reader, two buffers
        np.testing.assert_array_equal(a.permute(0, 2, 3, 1).numpy(), stored["patches"][meta_a["index"].numpy()])
        np.testing.assert_array_equal(b.permute(0, 2, 3, 1).numpy(), stored["patches"][meta_b["index"].numpy()])


def test_shard_shuffled_patches_split_between_ranks_and_workers(cohort_store, stored):
    seen = []
    for rank in range(2):
        dataset = ShardShuffledPatches(cohort_store, batch_size=5, seed=2, rank=rank, world_size=2, with_meta=True)
        indices, _ = _epoch(dataset, 2)
        seen.append(indices)
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(stored["x"])))
    with pytest.raises(ParameterError, match="give both rank and world_size"):
        ShardShuffledPatches(cohort_store, batch_size=5, rank=0)


def _distributed_rank(rank: int, store: str, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        dataset = ShardShuffledPatches(store, batch_size=6, seed=1, with_meta=True)
        indices = [meta["index"].numpy() for _, _, meta in DataLoader(dataset, batch_size=None)]
        np.save(f"{out}-{rank}.npy", np.concatenate(indices))
    finally:
        torch.distributed.destroy_process_group()


def test_shard_shuffled_patches_read_the_rank_from_torch_distributed(cohort_store, stored, tmp_path):
    torch.multiprocessing.spawn(
        _distributed_rank, args=(str(cohort_store), str(tmp_path / "init"), str(tmp_path / "seen")),
        nprocs=2, join=True,
    )
    parts = [np.load(tmp_path / f"seen-{rank}.npy") for rank in range(2)]
    assert len(parts[0]) and len(parts[1]) and not set(parts[0]) & set(parts[1])
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(stored["x"])))


def test_shard_shuffled_masks_layout_and_transform(cohort_store, stored):
    dataset = ShardShuffledPatches(cohort_store, batch_size=9, target="mask", layout="HWC",
                                   transform=_to_float, shuffle=False)
    images, masks = next(iter(dataset))
    assert images.dtype == torch.float32 and images.shape == (9, 48, 48, 3)
    np.testing.assert_allclose(images.numpy(), stored["patches"][:9] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(masks.numpy(), stored["masks"][:9])


# --- PyTorch: the map-style dataset --------------------------------------------------------


def _to_float(image: torch.Tensor) -> torch.Tensor:
    return image.float() / 255


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_patch_dataset_with_two_workers(cohort_store, stored, start_method):
    assert start_method in multiprocessing.get_all_start_methods()
    dataset = PatchDataset(cohort_store, with_meta=True)
    dataset[0]  # an open store in the parent must not leak into the workers
    loader = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=2,
                        multiprocessing_context=start_method, generator=torch.Generator().manual_seed(0))
    seen = []
    for images, targets, meta in loader:
        index = meta["index"].numpy()
        np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), stored["patches"][index])
        np.testing.assert_array_equal(targets.numpy(), stored["label"][index])
        np.testing.assert_array_equal(meta["x"].numpy(), stored["x"][index])
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(len(stored["x"])))


def test_patch_dataset_targets_selection_and_layout(cohort_store, stored):
    table = read_patch_table(cohort_store)
    train, validation = table.split(0.3, seed=0)
    dataset = PatchDataset(cohort_store, indices=validation, target="annotation_id")
    assert len(dataset) == len(validation)
    image, annotation = dataset[3]
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), stored["patches"][validation[3]])
    assert int(annotation) == stored["annotation_id"][validation[3]]
    image, mask = PatchDataset(cohort_store, target="mask", layout="HWC", transform=_to_float)[-1]
    assert image.shape == (48, 48, 3) and image.dtype == torch.float32
    np.testing.assert_array_equal(mask.numpy(), stored["masks"][-1])
    image_only = PatchDataset(cohort_store, target=None)[5]
    assert isinstance(image_only, torch.Tensor) and image_only.shape == (3, 48, 48)
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    with pytest.raises(ParameterError, match="target must be None, 'mask' or one of"):
        PatchDataset(cohort_store, target="colour")
    with pytest.raises(ParameterError, match="layout must be 'CHW' or 'HWC'"):
        PatchDataset(cohort_store, layout="NCHW")


def test_patch_dataset_mask_target_needs_masks(tmp_path, aperio_even_case):
    store = tmp_path / "nomasks.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, level=1, patch_size=32, per_annotation=2)
    with pytest.raises(ParameterError, match="target='mask' needs a store extracted with masks=True"):
        PatchDataset(store, target="mask")


def test_zip_store_through_workers(cohort_store, stored, tmp_path):
    from wsizarr._locations import parse_location

    packed = tmp_path / "cohort.zip"
    parse_location(packed).pack(parse_location(str(cohort_store)))
    dataset = PatchDataset(packed, with_meta=True)
    for images, _, meta in DataLoader(dataset, batch_size=20, num_workers=2):
        np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), stored["patches"][meta["index"].numpy()])
    indices, _ = _epoch(ShardShuffledPatches(packed, batch_size=20, with_meta=True), 2)
    assert sorted(indices.tolist()) == list(range(len(stored["x"])))


def test_package_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import wsizarr; assert 'wsizarr.torch' not in sys.modules\n"
        "try:\n    import wsizarr.torch\nexcept ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wsizarr.torch needs PyTorch: pip install 'wsizarr[torch]'" in result.stdout
