"""Slides as bags for multiple-instance learning: ``wsizarr.torch.SlideBags`` (each slide's rows
exactly once, in order, equal to the store's; DataLoader workers; the targets) and ``wsizarr
export --format trident-h5`` (the HDF5 layout CLAM and TRIDENT read, values equal to the
store's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

import wsizarr
from wsizarr import IncompleteStoreError, ParameterError, add_array
from wsizarr.slides._demo import write_demo_annotations, write_demo_slide
from wsizarr.torch import SlideBags

from .helpers import assert_one_line_error, run
from .test_add_array import FailsAfter

NAMES = ["A-001", "B-002", "C-003"]


def colour_and_spread(batch: np.ndarray) -> np.ndarray:
    """Four numbers a patch: its mean colour and the spread of its grey levels."""
    pixels = batch.reshape(len(batch), -1, 3).astype(np.float32)
    return np.concatenate([pixels.mean(axis=1), pixels.mean(axis=2).std(axis=1, keepdims=True)], axis=1) / 255


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Three slides of 2, 3 and 4 glomeruli, 3 patches each plus 2 of background, in shards of 8
    (so slides begin and end inside shards), with ``features`` (N, 4) float16 and ``score`` (N,)."""
    root = tmp_path_factory.mktemp("bags")
    slides = []
    for i, name in enumerate(NAMES):
        slide = write_demo_slide(root / f"{name}.svs", width=2048, height=1536, n_glomeruli=2 + i,
                                 glomerulus_px=180, seed=40 + i)
        write_demo_annotations(slide, root / f"{name}.xml")
        slides.append(slide.path)
    store = root / "cohort.zarr"
    wsizarr.extract(slides, root, store, level=1, patch_size=32, per_annotation=3, background=2, shard_size=8, seed=3)
    add_array(store, "features", colour_and_spread, dtype="float16")
    add_array(store, "score", lambda batch: batch.mean(axis=(1, 2, 3)))
    return store


@pytest.fixture(scope="module")
def stored(cohort) -> dict[str, np.ndarray]:
    group = zarr.open_group(cohort, mode="r")
    found = {name: np.asarray(group[name][:]) for name in ("features", "x", "y", "label", "slide")}
    found.update({f"slides/{name}": np.asarray(group["slides"][name][:]) for name in ("first_patch", "n_patches")})
    return found


def _bags(dataset) -> list[tuple]:
    return [tuple(part.numpy() for part in item) for item in dataset]


def test_each_slides_rows_come_once_in_order_equal_to_the_stores(cohort, stored):
    bags = SlideBags(cohort, features="features", target=None)
    assert len(bags) == 3 and bags.slide_names == ("A-001.svs", "B-002.svs", "C-003.svs")
    seen = []
    for i, (features, coords) in enumerate(bags):
        rows = np.flatnonzero(stored["slide"] == bags.slides[i])
        assert rows[0] == stored["slides/first_patch"][i] and len(rows) == stored["slides/n_patches"][i]
        assert features.dtype == torch.float32 and tuple(features.shape) == (len(rows), 4)
        np.testing.assert_array_equal(features.numpy(), stored["features"][rows].astype(np.float32))
        assert coords.dtype == torch.int64 and tuple(coords.shape) == (len(rows), 2)
        np.testing.assert_array_equal(coords.numpy(), np.stack([stored["x"][rows], stored["y"][rows]], axis=1))
        seen.extend(rows.tolist())
    assert seen == list(range(len(stored["x"])))  # every patch once, in store order


def test_dataloader_workers_give_the_same_bags(cohort):
    bags = SlideBags(cohort, features="features")
    direct = _bags(bags)
    # spawn pickles the dataset into each worker: it must carry no open store
    loader = DataLoader(bags, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    loaded = _bags(loader)
    assert len(loaded) == len(direct)
    for got, expected in zip(loaded, direct):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
    shuffled = DataLoader(bags, batch_size=None, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(1))
    firsts = sorted(tuple(coords[0].tolist()) for _, coords, _ in shuffled)
    assert firsts == sorted(tuple(bag[1][0].tolist()) for bag in direct)  # every slide once


def test_targets_majority_mapping_function_and_selection(cohort, stored):
    majority = SlideBags(cohort, features="features")
    for i, (_, _, target) in enumerate(majority):
        labels = Counter(code for code in stored["label"][stored["slide"] == i].tolist() if code >= 0)
        most = max(labels.values())
        assert target.dtype == torch.int64 and int(target) == min(code for code, n in labels.items() if n == most)
    by_name = SlideBags(cohort, features="features", target={"A-001": 0, "B-002.svs": 1, "C-003": 1.5})
    assert [float(item[2]) for item in by_name] == [0, 1, 1.5]
    by_function = SlideBags(cohort, features="features", target=lambda name: [len(name), name.startswith("B")])
    assert [item[2].tolist() for item in by_function] == [[9, 0], [9, 1], [9, 0]]
    chosen = SlideBags(cohort, features="features", target=None, slides=["C-003", 0])
    assert chosen.slide_names == ("C-003.svs", "A-001.svs")
    np.testing.assert_array_equal(chosen[1][1].numpy(), majority[0][1].numpy())


def test_bags_refuse_what_they_cannot_give(cohort, tmp_path):
    with pytest.raises(ParameterError, match=r"no value for slide 'B-002.svs' \(nor 'B-002'\)"):
        SlideBags(cohort, features="features", target={"A-001": 0, "C-003": 1})
    with pytest.raises(ParameterError, match="the target of slide 'A-001.svs' is 'tumour'; give numbers"):
        SlideBags(cohort, features="features", target=lambda name: "tumour")
    with pytest.raises(ParameterError, match="target must be 'majority'"):
        SlideBags(cohort, features="features", target="label")
    with pytest.raises(ParameterError, match=r"has no added array 'embedding' \(it has: 'features', 'score'\)"):
        SlideBags(cohort, features="embedding")
    with pytest.raises(ParameterError, match=r"'score' has shape \(\d+,\); slide bags need features of shape \(N, D\)"):
        SlideBags(cohort, features="score")
    with pytest.raises(ParameterError, match="no slide 'Z-999'"):
        SlideBags(cohort, features="features", slides=["Z-999"])
    unfinished = shutil.copytree(cohort, tmp_path / "unfinished.zarr")
    with pytest.raises(RuntimeError, match="crash"):
        add_array(unfinished, "colour", FailsAfter(2), workers=1)
    with pytest.raises(IncompleteStoreError, match="'colour' is not finished"):
        SlideBags(unfinished, features="colour")


def test_trident_h5_export_has_the_layout_clam_and_trident_read(cohort, stored, tmp_path):
    out = tmp_path / "h5_files"
    result = run("export", cohort, out, "--format", "trident-h5", "--features", "features")
    assert result.stdout.startswith("wrote 3 h5 files, one a slide, of 'features' to ")
    assert sorted(path.name for path in out.iterdir()) == [f"{name}.h5" for name in NAMES]
    table = wsizarr.read_patch_table(cohort)
    for slide, name in enumerate(NAMES):
        rows = np.flatnonzero(stored["slide"] == slide)
        with h5py.File(out / f"{name}.h5", "r") as file:  # as CLAM's MIL dataset reads it
            assert set(file) == {"features", "coords"}
            features, coords = file["features"][:], file["coords"][:]
            attrs = dict(file["coords"].attrs)
            assert file["features"].attrs["name"] == name
            assert file["features"].attrs["encoder"] == table.added["features"].fn
        assert features.dtype == np.float32 and features.shape == (len(rows), 4)
        np.testing.assert_array_equal(features, stored["features"][rows].astype(np.float32))
        assert coords.dtype == np.int64 and coords.shape == (len(rows), 2)
        np.testing.assert_array_equal(coords, np.stack([stored["x"][rows], stored["y"][rows]], axis=1))
        # CLAM's create_patches_fp.py attributes, which its feature extraction reads back
        assert attrs["patch_level"] == 1 and attrs["patch_size"] == 32 and attrs["name"] == name
        np.testing.assert_allclose(attrs["downsample"], [4.0, 4.0])
        np.testing.assert_array_equal(attrs["level_dim"], [512, 384])
        np.testing.assert_array_equal(attrs["downsampled_level_dim"], [512, 384])
        # TRIDENT's: its read_coords needs patch_size and both magnifications, else it reads CLAM's
        assert attrs["custom_downsample"] == 1.0 and attrs["patch_size_level0"] == 128
        assert attrs["level0_magnification"] == 40.0 and attrs["target_magnification"] == 10.0
        assert (attrs["level0_width"], attrs["level0_height"]) == (2048, 1536)
        assert attrs["savetodir"] == attrs["save_path"] == str(out)
    again = run("export", cohort, out, "--format", "trident-h5", "--features", "features", expect=1)
    assert_one_line_error(again, "already holds 3 of the files export writes", "--overwrite")


def test_trident_h5_export_of_one_label(cohort, stored, tmp_path):
    code = wsizarr.read_patch_table(cohort).label_names.index("glomerulus")
    written = wsizarr.export(cohort, tmp_path, format="trident-h5", features="features", label="glomerulus")
    slides = sorted(set(stored["slide"][stored["label"] == code].tolist()))
    assert written == len(slides) and sorted(path.name for path in tmp_path.iterdir()) == [f"{NAMES[s]}.h5" for s in slides]
    for slide in slides:
        rows = np.flatnonzero((stored["slide"] == slide) & (stored["label"] == code))
        with h5py.File(tmp_path / f"{NAMES[slide]}.h5", "r") as file:
            np.testing.assert_array_equal(file["coords"][:], np.stack([stored["x"][rows], stored["y"][rows]], axis=1))


@pytest.mark.parametrize("args, fragments", [
    (["--format", "trident-h5"], ["--format trident-h5 and --features go together"]),
    (["--features", "features"], ["--format trident-h5 and --features go together"]),
    (["--format", "trident-h5", "--features", "nothing"], ["has no added array 'nothing'", "wsizarr embed"]),
    (["--format", "trident-h5", "--features", "score"], ["'score' has shape (", "features of shape (N, D)"]),
])
def test_trident_h5_export_refusals_are_one_line(cohort, tmp_path, args, fragments):
    assert_one_line_error(run("export", cohort, tmp_path / "out", *args, expect=1), *fragments)
    assert not (tmp_path / "out").exists()


def test_trident_h5_export_without_h5py_says_how_to_install_it(cohort, tmp_path):
    code = (
        "import sys; sys.modules['h5py'] = None\n"  # as where h5py is not installed
        "from wsizarr.cli import main\n"
        f"sys.exit(main(['export', {str(cohort)!r}, {str(tmp_path / 'out')!r}, '--format', 'trident-h5', "
        "'--features', 'features']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "the trident-h5 export needs h5py: pip install 'wsizarr[h5]'")
