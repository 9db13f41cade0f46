"""Arrays added after extraction (``wsizarr.add_array``, ``wsizarr embed``): values, every
location and executor, a crash and its rerun, bad input leaving the store byte for byte as it
was, and the readers (xarray, the loaders, the PyTorch datasets, ``info``)."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest
import zarr

import wsizarr
from wsizarr import IncompleteStoreError, ParameterError, StoreError, StoreExistsError, add_array
from wsizarr.curate._added import describe_fn
from wsizarr._locations import parse_location
from wsizarr.store._store import open_for_writing, read_manifest, why_not_a_store, write_manifest

from .helpers import assert_one_line_error, assert_same_store, run, store_bytes

# 32 patches of 32 x 32 at level 1 in 8 shards of 4: a few seconds an extraction
SMALL = dict(level=1, patch_size=32, per_annotation=4, shard_size=4, seed=1)
N_SHARDS = 8


def mean_colour(batch: np.ndarray) -> np.ndarray:
    """The mean colour of each patch: ``(B, 3)`` float32."""
    return batch.reshape(len(batch), -1, 3).mean(axis=1, dtype=np.float64).astype(np.float32)


class FailsAfter:
    """``mean_colour`` that raises (a crash) once it has computed ``batches`` batches; it
    describes itself as ``mean_colour``, so running ``mean_colour`` again resumes its work."""

    description = describe_fn(mean_colour)

    def __init__(self, batches: int) -> None:
        self.left = batches

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.left == 0:
            raise RuntimeError("crash")
        self.left -= 1
        return mean_colour(batch)


class BadAfter:
    """``mean_colour`` for ``batches`` batches, then ``bad(batch)``."""

    description = describe_fn(mean_colour)

    def __init__(self, batches: int, bad) -> None:
        self.left, self.bad = batches, bad

    def __call__(self, batch: np.ndarray):
        if self.left == 0:
            return self.bad(batch)
        self.left -= 1
        return mean_colour(batch)


def _extract(case, url, options=None):
    wsizarr.extract(case.slide, case.annotations, url, storage_options=options, **SMALL)
    return url


@pytest.fixture(scope="module")
def reference(tmp_path_factory, aperio_even_case):
    """A local store, and the same store with ``colour`` added by an uninterrupted run."""
    folder = tmp_path_factory.mktemp("added")
    plain = _extract(aperio_even_case, str(folder / "plain.zarr"))
    added = str(folder / "added.zarr")
    shutil.copytree(plain, added)
    add_array(added, "colour", mean_colour, workers=1)
    return {"plain": plain, "added": added}


@pytest.fixture
def copy(tmp_path, reference):
    """A fresh local copy of the plain store."""
    path = str(tmp_path / "store.zarr")
    shutil.copytree(reference["plain"], path)
    return path


def test_mean_colour_on_every_location(store_location, aperio_even_case, reference):
    url, options = store_location.url, store_location.options
    _extract(aperio_even_case, url, options)
    summary = add_array(url, "colour", mean_colour, storage_options=options)
    assert summary.shape == (32, 3) and summary.dtype == "float32" and summary.shards_written == N_SHARDS
    ds = wsizarr.open_dataset(url, storage_options=options)
    assert ds.colour.dims == ("patch", "colour_dim1") and ds.colour.dtype == np.float32
    expected = ds.patches.values.reshape(32, -1, 3).mean(axis=1).astype(np.float32)
    np.testing.assert_array_equal(ds.colour.values, expected)
    assert "x" in ds.colour.coords and "label" in ds.colour.coords  # aligned along patch
    assert_same_store(reference["added"], url, storage_options=options, ignore_arrays=["slides/path"])
    location = parse_location(url, options)
    assert why_not_a_store(location) is None
    assert not any(key.startswith("_adding") for key in location.keys())
    assert not parse_location(url + ".partial.zarr", options).exists()
    assert wsizarr.verify(url, sample=0, storage_options=options).ok
    info = wsizarr.store_info(location)
    assert info["added"]["colour"] == {"shape": [32, 3], "dtype": "float32", "fn": describe_fn(mean_colour), "complete": True}
    shown = run("info", url, *store_location.cli).stdout
    assert "added       colour  32x3 float32" in shown and "[complete]" in shown


def test_layout_of_the_added_array(reference):
    group = zarr.open_group(reference["added"], mode="r")
    array = group["colour"]
    assert array.chunks == (4, 3) and array.shards is None  # one chunk per shard
    assert array.metadata.dimension_names == ("patch", "colour_dim1")
    assert [type(codec).__name__ for codec in array.compressors] == ["ZstdCodec", "Crc32cCodec"]
    assert array.attrs["coordinates"].split() == ["x", "y", "level", "annotation_id", "label", "slide", "padded"]
    assert read_manifest(group).added["colour"].complete
    import xarray as xr

    plain = xr.open_zarr(reference["added"], zarr_format=3)  # no wsizarr in the way
    assert plain.colour.dims == ("patch", "colour_dim1") and "x" in plain.colour.coords


def test_batch_size_and_dtype(copy, reference):
    add_array(copy, "colour", mean_colour, batch_size=3, dtype="float16")
    values = wsizarr.open_dataset(copy).colour.values
    assert values.dtype == np.float16
    expected = np.asarray(zarr.open_group(reference["added"], mode="r")["colour"][:]).astype(np.float16)
    np.testing.assert_array_equal(values, expected)


@pytest.mark.parametrize("executor", ["processes", "dask"])
def test_processes_and_dask_give_the_same_store(copy, reference, executor):
    if executor == "dask":
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            add_array(copy, "colour", mean_colour, client=client)
    else:
        add_array(copy, "colour", mean_colour, executor="processes", workers=2)
    assert_same_store(reference["added"], copy)


def test_a_crash_then_the_same_call_gives_the_same_store(store_location, aperio_even_case, reference):
    url, options = store_location.url, store_location.options
    _extract(aperio_even_case, url, options)
    with pytest.raises(RuntimeError, match="crash"):
        add_array(url, "colour", FailsAfter(3), workers=1, storage_options=options)
    # the crash kept what was written; the store still opens, without the unfinished array
    building = url + ".partial.zarr" if store_location.kind == "zip" else url
    group = zarr.open_group(parse_location(building, options).open("r"), mode="r")
    assert not read_manifest(group).added["colour"].complete
    assert np.asarray(group["_adding/colour"][:]).sum() == 3
    if store_location.kind != "zip":
        with pytest.warns(UserWarning, match="'colour' are not finished"):
            ds = wsizarr.open_dataset(url, storage_options=options)
        assert "colour" not in ds
        torch_module = pytest.importorskip("wsizarr.torch")
        with pytest.raises(IncompleteStoreError, match="'colour' is not finished"):
            torch_module.PatchDataset(url, target="colour", storage_options=options)
        assert "UNFINISHED" in run("info", url, *store_location.cli).stdout
        with pytest.raises(StoreError, match="unfinished 'colour'"):  # another fn cannot finish it
            add_array(url, "colour", lambda batch: batch[:, 0, 0], storage_options=options)
    summary = add_array(url, "colour", mean_colour, storage_options=options)
    assert summary.shards_written == N_SHARDS - 3
    assert_same_store(reference["added"], url, storage_options=options, ignore_arrays=["slides/path"])


def _wrong_length(batch):
    return mean_colour(batch)[:-1]


def _other_shape(batch):
    return np.zeros((len(batch), 4), np.float32)


def _other_dtype(batch):
    return mean_colour(batch).astype(np.float64)


def _a_list(batch):
    return mean_colour(batch).tolist()


def _text(batch):
    return np.array(["a"] * len(batch))


@pytest.mark.parametrize("fn, words", [
    (_wrong_length, "3 rows for"),
    (BadAfter(2, _wrong_length), "one row per patch"),
    (BadAfter(5, _other_shape), "every batch must give the same shape"),
    (BadAfter(4, _other_dtype), "every batch must give the same dtype"),
    (_a_list, "fn returned list"),
    (BadAfter(3, lambda batch: None), "fn returned NoneType"),
    (_text, "return numbers"),
])
def test_output_that_cannot_be_stored_leaves_the_store_unchanged(copy, fn, words):
    before = store_bytes(copy)
    with pytest.raises(ParameterError, match=words) as error:
        add_array(copy, "colour", fn, workers=2)
    assert "\n" not in str(error.value)
    assert store_bytes(copy) == before


def test_bad_output_in_a_resumed_run_leaves_it_as_it_was(copy):
    with pytest.raises(RuntimeError):
        add_array(copy, "colour", FailsAfter(2), workers=1)
    before = store_bytes(copy)
    with pytest.raises(ParameterError, match="same shape"):
        add_array(copy, "colour", BadAfter(3, _other_shape), workers=1)
    assert store_bytes(copy) == before


@pytest.mark.parametrize("kind", ["s3", "zip"])
def test_bad_output_leaves_s3_and_zip_stores_unchanged(kind, tmp_path, request, aperio_even_case):
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        url, options = server.url("bad/store.zarr"), server.options
    else:
        url, options = str(tmp_path / "store.zip"), None
    _extract(aperio_even_case, url, options)
    before = store_bytes(url, options)
    with pytest.raises(ParameterError, match="same shape"):
        add_array(url, "colour", BadAfter(4, _other_shape), workers=2, storage_options=options)
    assert store_bytes(url, options) == before
    assert not parse_location(url + ".partial.zarr", options).exists()


@pytest.mark.parametrize("name, words", [
    ("patches", "a name of the store's schema"), ("x", "a name of the store's schema"),
    ("label", "a name of the store's schema"), ("slides", "a name of the store's schema"),
    ("annotations", "a name of the store's schema"), ("masks", "a name of the store's schema"),
    ("_adding", "not a valid array name"), ("1st", "not a valid array name"),
    ("a-b", "not a valid array name"), ("a/b", "not a valid array name"), ("", "not a valid array name"),
])
def test_names_that_collide_or_are_not_identifiers_are_refused(copy, name, words):
    before = store_bytes(copy)
    with pytest.raises(ParameterError, match=words):
        add_array(copy, name, mean_colour)
    assert store_bytes(copy) == before


def test_an_existing_added_array_needs_overwrite(copy, reference):
    add_array(copy, "colour", lambda batch: np.zeros((len(batch), 2), np.uint8))
    before = store_bytes(copy)
    with pytest.raises(StoreExistsError, match="already has an added array 'colour'"):
        add_array(copy, "colour", mean_colour)
    assert store_bytes(copy) == before
    add_array(copy, "colour", mean_colour, overwrite=True)
    assert_same_store(reference["added"], copy)


def test_an_incomplete_store_is_refused(copy):
    group = open_for_writing(copy)
    write_manifest(group, replace(read_manifest(group), complete=False))
    before = store_bytes(copy)
    with pytest.raises(IncompleteStoreError, match="did not finish"):
        add_array(copy, "colour", mean_colour)
    assert store_bytes(copy) == before


def test_appending_to_a_store_with_added_arrays_is_refused(reference, tmp_path, aperio_case):
    path = tmp_path / "store.zarr"
    shutil.copytree(reference["added"], path)
    with pytest.raises(StoreError, match="added after extraction"):
        wsizarr.extract(aperio_case.slide, aperio_case.annotations, path, append=True, **SMALL)


def test_loaders_return_the_added_array(reference):
    torch_module = pytest.importorskip("wsizarr.torch")
    store = reference["added"]
    colour = np.asarray(zarr.open_group(store, mode="r")["colour"][:])
    table = wsizarr.read_patch_table(store)
    assert table.added["colour"].complete
    dataset = torch_module.PatchDataset(store, target="colour", with_meta=True)
    image, target, meta = dataset[5]
    np.testing.assert_array_equal(target.numpy(), colour[5])
    np.testing.assert_array_equal(meta["colour"].numpy(), colour[5])
    shuffled = torch_module.ShardShuffledPatches(store, batch_size=8, seed=0, target="colour", with_meta=True)
    for images, targets, meta in shuffled:
        np.testing.assert_array_equal(targets.numpy(), colour[meta["index"].numpy()])
    for batch in wsizarr.iter_batches(store, 8, added=("colour",)):
        np.testing.assert_array_equal(batch["colour"], colour[batch["index"]])
    with pytest.raises(ParameterError, match="an added array"):
        torch_module.PatchDataset(store, target="nothing")


try:
    import torch
except ImportError:  # the torch extra is not installed: the embed test is skipped
    torch = None

if torch is not None:

    class TinyCNN(torch.nn.Module):
        """Two convolutions, pooling and a linear layer: 12 features a patch."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.linear = torch.nn.Linear(16, 12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            return self.linear(self.pool(x).flatten(1))


def test_embed_with_a_torchscript_model(copy, tmp_path):
    if torch is None:
        pytest.skip("needs the torch extra")
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.10+, still supported
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14's word for it
        model = torch.jit.script(TinyCNN().eval())
        torch.jit.save(model, str(path))
    result = run("embed", copy, "--model", path, "--name", "features", "--batch-size", "5",
                 "--normalize", "imagenet", "--workers", "2")
    assert "features: (32, 12) float16" in result.stdout
    ds = wsizarr.open_dataset(copy)
    features = ds.features.values
    assert features.shape == (32, 12) and features.dtype == np.float16
    pixels = torch.from_numpy(ds.patches.values).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model((pixels - mean) / std).numpy()
    np.testing.assert_allclose(features.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert "added       features  32x12 float16  by torchscript tiny.pt" in run("info", copy).stdout
    # the same command again: already there
    assert_one_line_error(run("embed", copy, "--model", path, "--name", "features", expect=1),
                          "already has an added array 'features'", "--overwrite")
    assert_one_line_error(run("embed", copy, "--model", path, "--name", "patches", expect=1), "schema")
    if not torch.cuda.is_available():
        assert_one_line_error(run("embed", copy, "--model", path, "--name", "g", "--device", "cuda", expect=1),
                              "no CUDA device", "--device cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    assert_one_line_error(run("embed", copy, "--model", tmp_path / "junk.pt", "--name", "f", expect=1),
                          "not a TorchScript model")


def test_a_second_writer_is_refused_while_the_lock_is_held(copy):
    from wsizarr import StoreLockedError
    from wsizarr.store._lock import writer_lock

    before = store_bytes(copy)
    with writer_lock(parse_location(copy)):
        with pytest.raises(StoreLockedError, match="another wsizarr writer"):
            add_array(copy, "colour", mean_colour)
    assert store_bytes(copy) == before


SLOW_ADD = """
import sys, time
import numpy as np
from wsizarr import add_array
from tests.test_add_array import mean_colour

def slow(batch):
    time.sleep(0.3)
    return mean_colour(batch)

slow.description = "tests.test_add_array.mean_colour"
add_array(sys.argv[1], "colour", slow, workers=2)
"""


def test_sigkill_then_the_same_call_gives_the_same_store(copy, reference):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    markers = Path(copy, "_adding", "colour", "c")
    process = subprocess.Popen([sys.executable, "-c", SLOW_ADD, copy], cwd=Path(__file__).parents[1],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if markers.is_dir() and len([m for m in markers.iterdir() if m.name.isdigit()]) >= 3:
            break
        time.sleep(0.01)
    assert process.poll() is None, process.stderr.read()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = len([m for m in markers.iterdir() if m.name.isdigit()])
    assert 3 <= done < N_SHARDS
    from wsizarr.store._lock import StaleLockWarning

    with pytest.warns(StaleLockWarning, match="took over the lock"):  # the killed writer's file
        summary = add_array(copy, "colour", mean_colour)
    assert summary.shards_written == N_SHARDS - done
    assert_same_store(reference["added"], copy)
    assert wsizarr.verify(copy, sample=0).ok


def test_verify_checks_the_added_arrays_chunks(tmp_path, reference):
    path = tmp_path / "store.zarr"
    shutil.copytree(reference["added"], path)
    chunk = path / "colour" / "c" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = wsizarr.verify(path, sample=0)
    assert not report.ok
    assert any("the added array 'colour', rows 8.." in problem for problem in report.problems)


def test_a_zip_refused_keeps_nothing_beside_it(tmp_path, aperio_even_case):
    url = _extract(aperio_even_case, str(tmp_path / "store.zip"))
    add_array(url, "colour", mean_colour)
    before = store_bytes(url)
    with pytest.raises(StoreExistsError, match="already has an added array"):
        add_array(url, "colour", mean_colour)
    with pytest.raises(ParameterError, match="not a valid array name"):
        add_array(url, "no way", mean_colour)
    assert store_bytes(url) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["store.zip"]
