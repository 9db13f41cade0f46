"""What every store location promises, whether a directory, one ``.zip`` file or an S3 prefix.

Each test runs three times, on the ``store_location`` fixture's ``dir``, ``zip`` and ``s3``
cases; the command line is run as a user runs it (with ``--storage-option`` for S3) and every
store is compared whole against an extraction into a local directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsizarr import StoreExistsError, extract, open_dataset, store_info, verify
from wsizarr._locations import parse_location

from .helpers import assert_one_line_error, assert_same_store, run, store_bytes

# A small extraction (24 patches of 32 x 32 at level 1, 3 shards): a few seconds a case.
FIRST = dict(level=1, patch_size=32, per_annotation=3, shard_size=8, seed=1)
SECOND = {**FIRST, "per_annotation": 2, "seed": 2}  # what an --overwrite run asks for instead


def _cli(kwargs):
    """The command-line options that ask for ``kwargs``."""
    return [arg for key, value in kwargs.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


def _extract(case, location, kwargs, *extra, expect=0):
    return run("extract", case.slide, "--annotations", case.annotations, "--out", location.url,
               *_cli(kwargs), *extra, *location.cli, expect=expect)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, aperio_even_case):
    """``FIRST`` and ``SECOND`` extracted into local directories through the Python API."""
    folder = tmp_path_factory.mktemp("contract")
    stores = {}
    for name, kwargs in (("first", FIRST), ("second", SECOND)):
        stores[name] = folder / f"{name}.zarr"
        extract(aperio_even_case.slide, aperio_even_case.annotations, stores[name], **kwargs)
    return stores


@pytest.fixture
def extracted(store_location, aperio_even_case):
    """``store_location`` holding the ``FIRST`` extraction (made in-process: the command line's
    own extraction is the first test's)."""
    extract(aperio_even_case.slide, aperio_even_case.annotations, store_location.url,
            storage_options=store_location.options, **FIRST)
    return store_location


def test_the_command_line_extracts_the_local_store_and_it_opens_reports_and_verifies(store_location, aperio_even_case, reference):
    extracted = store_location
    _extract(aperio_even_case, extracted, FIRST)
    where, options = extracted.url, extracted.options
    assert_same_store(reference["first"], where, storage_options=options)

    dataset = open_dataset(where, storage_options=options)
    n = dataset.sizes["patch"]
    assert n == 24 and dataset["patches"].shape == (24, 32, 32, 3)
    assert {"x", "y", "level", "label", "annotation_id", "slide", "padded"} <= set(dataset.coords)
    local = open_dataset(reference["first"])
    for name in ("x", "y", "label", "annotation_id"):
        np.testing.assert_array_equal(dataset[name].values, local[name].values, err_msg=name)

    info = store_info(parse_location(where, options))
    assert info["complete"] and info["n_patches"] == 24 and info["n_shards"] == info["shards_done"] == 3
    assert sum(info["per_label"].values()) == 24 and info["shards"] == [8, 32, 32, 3]
    as_json = json.loads(run("info", where, "--json", *extracted.cli).stdout)
    assert {key: as_json[key] for key in ("n_patches", "per_label", "parameters", "complete")} == {
        key: info[key] for key in ("n_patches", "per_label", "parameters", "complete")}
    text = run("info", where, *extracted.cli).stdout
    assert "[complete]" in text and "24 x 32x32x3" in text

    report = verify(where, sample=6, storage_options=options)
    assert report.ok and report.patches_compared == 6, report
    assert run("verify", where, "--sample", "4", *extracted.cli).stdout.strip().endswith("OK")


def test_the_pytorch_loader_reads_what_open_dataset_reads(extracted):
    from torch.utils.data import DataLoader

    from wsizarr.torch import PatchDataset

    dataset = open_dataset(extracted.url, storage_options=extracted.options)
    loader = DataLoader(PatchDataset(extracted.url, storage_options=extracted.options, with_meta=True,
                                     layout="HWC"), batch_size=10, shuffle=True)
    seen = []
    for images, targets, meta in loader:
        index = meta["index"].numpy()
        np.testing.assert_array_equal(images.numpy(), dataset["patches"].values[index])
        np.testing.assert_array_equal(targets.numpy(), dataset["label_code"].values[index])
        np.testing.assert_array_equal(meta["x"].numpy(), dataset["x"].values[index])
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(dataset.sizes["patch"]))


def test_a_second_extract_without_overwrite_is_refused_and_changes_nothing(extracted, aperio_even_case):
    before = store_bytes(extracted.url, extracted.options)
    refused = _extract(aperio_even_case, extracted, SECOND, expect=1)
    assert_one_line_error(refused, extracted.url, "already exists", "--overwrite")
    with pytest.raises(StoreExistsError, match=r"already exists; replace it \(overwrite=True\)"):
        extract(aperio_even_case.slide, aperio_even_case.annotations, extracted.url,
                storage_options=extracted.options, **SECOND)
    assert store_bytes(extracted.url, extracted.options) == before


def test_overwrite_replaces_the_store_with_the_new_run_and_leaves_nothing_beside(extracted, aperio_even_case, reference):
    _extract(aperio_even_case, extracted, SECOND, "--overwrite")
    assert_same_store(reference["second"], extracted.url, storage_options=extracted.options)
    if extracted.kind == "s3":  # built beside, then moved into place
        assert not parse_location(extracted.url + ".partial.zarr", extracted.options).keys()
    else:
        folder = Path(extracted.url).parent
        assert [p.name for p in folder.iterdir()] == [Path(extracted.url).name]


def test_resume_of_a_finished_store_writes_nothing(extracted, aperio_even_case):
    before = store_bytes(extracted.url, extracted.options)
    resumed = _extract(aperio_even_case, extracted, FIRST, "--resume")
    assert "24 patches" in resumed.stdout and "(0 of 3 shards written)" in resumed.stdout
    assert store_bytes(extracted.url, extracted.options) == before


def test_info_of_a_missing_store_is_one_line(store_location):
    assert_one_line_error(run("info", store_location.url, *store_location.cli, expect=1), "store not found")


def test_append_to_a_directory_or_s3_equals_one_extraction_and_a_zip_refuses(
    extracted, aperio_case, aperio_even_case, tmp_path
):
    if extracted.kind == "zip":
        before = store_bytes(extracted.url)
        refused = _extract(aperio_case, extracted, FIRST, "--append", expect=1)
        assert_one_line_error(refused, extracted.url, "a zip cannot be appended to", "wsizarr pack")
        assert store_bytes(extracted.url) == before
        return
    _extract(aperio_case, extracted, FIRST, "--append")
    together = tmp_path / "together.zarr"
    extract([aperio_even_case.slide, aperio_case.slide], [aperio_even_case.annotations, aperio_case.annotations],
            together, **FIRST)
    assert_same_store(together, extracted.url, storage_options=extracted.options)
    assert store_info(parse_location(extracted.url, extracted.options))["n_patches"] == 48
