"""The shared helpers can fail: ``assert_same_store`` names what differs, ``run`` checks exit codes."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import zarr

from wsizarr import extract

from .helpers import assert_same_store, run

KWARGS = dict(level=1, patch_size=32, per_annotation=3, shard_size=8, seed=2)


@pytest.fixture(scope="module")
def original(tmp_path_factory, aperio_even_case):
    store = tmp_path_factory.mktemp("helpers") / "original.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, **KWARGS)
    return store


@pytest.fixture
def copy(tmp_path, original):
    target = tmp_path / "copy.zarr"
    shutil.copytree(original, target)
    return target


def _fails(a, b, *fragments, **kwargs):
    with pytest.raises(AssertionError) as raised:
        assert_same_store(a, b, **kwargs)
    for fragment in fragments:
        assert fragment in str(raised.value), str(raised.value)
    return str(raised.value)


def test_a_copy_and_a_second_identical_run_are_the_same_store(tmp_path, original, copy, aperio_even_case):
    assert_same_store(original, copy)
    again = tmp_path / "again.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, again, **KWARGS)
    assert_same_store(original, again)  # no attribute differs between two runs: nothing ignored


def test_one_pixel_is_found_with_its_index(original, copy):
    group = zarr.open_group(copy, mode="r+")
    n = group["patches"].shape[0]
    last = n - 1  # in the last shard, not the first: every shard is compared
    pixel = group["patches"][last, 7, 5]
    group["patches"][last, 7, 5] = (pixel.astype(np.int16) + [1, 0, 0]) % 256
    message = _fails(original, copy, "array 'patches'", f"first at index ({last}, 7, 5, 0)")
    assert "'x'" not in message and "attributes" not in message


def test_a_coordinate_value_is_found(original, copy):
    group = zarr.open_group(copy, mode="r+")
    x = group["x"][:]
    x[4] += 1
    group["x"][:] = x
    _fails(original, copy, "array 'x'", "first at index (4,)", f"{x[4] - 1} != {x[4]}")


def test_a_missing_array_is_named(original, copy):
    (leaf,) = [path for path, node in zarr.open_group(copy, mode="r").members(max_depth=None)
               if isinstance(node, zarr.Array) and path.endswith("annotation_id")]
    shutil.rmtree(copy / leaf)
    assert re.search(r"arrays only in the first store: \[.*annotation_id", _fails(original, copy))


def test_a_changed_attribute_is_named_and_can_be_ignored_explicitly(original, copy):
    group = zarr.open_group(copy, mode="r+")
    metadata = dict(group.attrs["wsizarr"])
    metadata["plan_digest"] = "0" * 64
    group.attrs["wsizarr"] = metadata
    _fails(original, copy, "group '/' attributes .wsizarr.plan_digest", "0000")
    assert_same_store(original, copy, ignore_attrs=["plan_digest"])


def test_changed_array_metadata_is_named(tmp_path, original, aperio_even_case):
    other = tmp_path / "other.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, other, **{**KWARGS, "shard_size": 4})
    _fails(original, other, "array 'patches' metadata")


def test_run_checks_the_exit_code_and_the_one_line_error(tmp_path):
    missing = tmp_path / "none.zarr"
    result = run("info", missing, expect=1)
    assert "store not found" in result.stderr
    with pytest.raises(AssertionError, match="exit code 1, expected 0"):
        run("info", missing)
    assert run("extract", expect=2).returncode == 2  # argparse's usage error
