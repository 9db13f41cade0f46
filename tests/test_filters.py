"""Quality filters at extraction (--min-tissue, --min-sharpness, --max-pen): the whole plan is
extracted beside the store, then the patches that pass are written into it; deterministic and
resumable, whatever happened in between."""

from __future__ import annotations

import numpy as np
import pytest

from wsizarr import ParameterError, StoreError, StoreExistsError, extract, open_dataset, read_patch_table, subset, verify
from wsizarr.store._manifest import Manifest

from .helpers import assert_one_line_error, assert_same_store, run
from .test_crash import _finished, start_and_kill

# the demo slide's glomeruli sit in tissue, so jittered patches near the tissue's edge carry glass
OPTIONS = dict(level=0, patch_size=128, per_annotation=20, shard_size=16, seed=3)
FILTERS = dict(min_tissue=0.995, min_sharpness=1500.0)
# the source of a filtered store is its (removed) unfiltered build: where the two runs differ
SOURCE_PATH = ["subset"]


def _extract(case, out, **kwargs):
    return extract(case.slide, case.annotations, out, **OPTIONS, **kwargs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, aperio_case):
    """The unfiltered store and the filtered one, each extracted directly."""
    folder = tmp_path_factory.mktemp("filters")
    _extract(aperio_case, folder / "all.zarr")
    summary = _extract(aperio_case, folder / "filtered.zarr", **FILTERS)
    return folder / "all.zarr", folder / "filtered.zarr", summary


def test_the_store_holds_exactly_the_patches_that_pass(reference):
    everything, filtered, summary = reference
    table = read_patch_table(everything)
    passing = (table.quality["tissue_fraction"] >= FILTERS["min_tissue"]) & (table.quality["sharpness"] >= FILTERS["min_sharpness"])
    assert 0 < passing.sum() < len(table)  # the filters bite, and keep some
    assert summary.n_patches == passing.sum() and summary.filtered_out == len(table) - passing.sum()
    assert "patches left out by the quality filters" in str(summary)
    source = open_dataset(everything).isel(patch=np.flatnonzero(passing))
    kept = open_dataset(filtered)
    np.testing.assert_array_equal(kept.patches.values, source.patches.values)
    for name in ("x", "y", "level", "annotation_id", "label", "tissue_fraction", "sharpness"):
        np.testing.assert_array_equal(kept[name].values, source[name].values)
    assert verify(filtered, sample=16).ok
    assert not filtered.with_name("filtered.zarr.unfiltered.zarr").exists()


def test_the_store_equals_a_subset_of_the_whole_extraction(reference, tmp_path):
    everything, filtered, _ = reference
    subset(everything, tmp_path / "subset.zarr", **FILTERS)
    assert_same_store(filtered, tmp_path / "subset.zarr", ignore_attrs=SOURCE_PATH)
    origin = Manifest.from_attrs(open_dataset(filtered).attrs["wsizarr"]).subset
    assert origin.selection["quality"] == {"tissue_fraction": [0.995, None], "sharpness": [1500.0, None]}


def test_workers_and_executors_give_the_same_store(reference, aperio_case, tmp_path):
    _, filtered, _ = reference
    out = tmp_path / "processes.zarr"
    _extract(aperio_case, out, **FILTERS, workers=1, executor="processes")
    assert_same_store(filtered, out, ignore_attrs=SOURCE_PATH)


def test_killed_while_extracting_then_resumed_gives_the_same_store(reference, aperio_case, tmp_path):
    _, filtered, _ = reference
    out = tmp_path / "killed.zarr"
    markers = tmp_path / "killed.zarr.unfiltered.zarr" / "_shards_done" / "c"
    args = [
        "extract", aperio_case.slide, "--annotations", aperio_case.annotations, "--out", out,
        "--level", "0", "--patch-size", "128", "--per-annotation", "20", "--shard-size", "16", "--seed", "3",
        "--min-tissue", "0.995", "--min-sharpness", "1500", "--workers", "1",
    ]
    start_and_kill(args, when=lambda: markers.is_dir() and len(_finished(markers)) >= 2)
    assert not out.exists()
    assert_one_line_error(run(*args, expect=1), "unfiltered.zarr: already exists", "--resume")
    run(*args, "--resume")
    assert_same_store(filtered, out, ignore_attrs=SOURCE_PATH)
    assert not (tmp_path / "killed.zarr.unfiltered.zarr").exists()
    assert "0 of" in run(*args, "--resume").stdout  # finished: nothing to do


def test_killed_between_extracting_and_filtering_then_resumed(reference, aperio_case, tmp_path):
    """A run that ended after the extraction (its unfiltered store complete): resume filters."""
    _, filtered, _ = reference
    out = tmp_path / "between.zarr"
    _extract(aperio_case, tmp_path / "between.zarr.unfiltered.zarr")
    _extract(aperio_case, out, **FILTERS, resume=True)
    assert_same_store(filtered, out, ignore_attrs=SOURCE_PATH)


def test_no_patch_passing_keeps_the_extraction_for_other_filters(reference, aperio_case, tmp_path):
    _, filtered, _ = reference
    out = tmp_path / "strict.zarr"
    with pytest.raises(ParameterError, match="no patch matches .* kept in .*strict.zarr.unfiltered.zarr.*resume=True"):
        _extract(aperio_case, out, min_sharpness=1e9)
    assert not out.exists()
    _extract(aperio_case, out, **FILTERS, resume=True)  # no slide is read again
    assert_same_store(filtered, out, ignore_attrs=SOURCE_PATH)


def test_other_filters_on_a_finished_store_are_refused_and_overwrite_replaces_it(reference, aperio_case, tmp_path):
    _, filtered, _ = reference
    out = tmp_path / "finished.zarr"
    _extract(aperio_case, out, **FILTERS)
    with pytest.raises(StoreError, match="other parameters or filters"):
        _extract(aperio_case, out, min_tissue=0.5, resume=True)
    with pytest.raises(StoreExistsError, match="already exists"):
        _extract(aperio_case, out, **FILTERS)
    summary = _extract(aperio_case, out, min_tissue=0.5, overwrite=True)
    assert summary.n_patches > read_patch_table(filtered).x.size
    assert read_patch_table(out).quality["tissue_fraction"].min() >= 0.5


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(min_tissue=1.5), "min_tissue=1.5: give a share"),
    (dict(max_pen=-0.1), "max_pen=-0.1: give a share"),
    (dict(min_sharpness=float("nan")), "min_sharpness=nan"),
    (dict(min_tissue=0.5, quality=False), "need the quality measures: drop quality=False"),
    (dict(min_tissue=0.5, append=True), "not to append=True"),
])
def test_bad_filters_are_refused_before_anything_is_written(aperio_case, tmp_path, kwargs, fragment):
    out = tmp_path / "bad.zarr"
    with pytest.raises(ParameterError, match=fragment.replace("(", r"\(")):
        _extract(aperio_case, out, **kwargs)
    assert not out.exists() and not (tmp_path / "bad.zarr.unfiltered.zarr").exists()


def test_the_command_line_flags(aperio_case, tmp_path):
    out = tmp_path / "cli.zarr"
    args = ["extract", aperio_case.slide, "--annotations", aperio_case.annotations, "--out", out,
            "--level", "0", "--patch-size", "128", "--per-annotation", "20", "--shard-size", "16", "--seed", "3"]
    result = run(*args, "--min-tissue", "0.995", "--max-pen", "0.01")
    assert "patches left out by the quality filters" in result.stdout
    table = read_patch_table(out)
    assert table.quality["tissue_fraction"].min() >= 0.995 and table.quality["pen_fraction"].max() <= 0.01
    assert_one_line_error(run(*args, "--min-tissue", "2", "--overwrite", expect=1), "--min-tissue 2.0", "0 to 1")
    assert "subset of" in run("info", out).stdout


def test_a_filtered_store_takes_no_append(reference, aperio_even_case):
    _, filtered, _ = reference
    with pytest.raises(StoreError, match="is a subset of .*append to the source, then make the subset again"):
        extract(aperio_even_case.slide, aperio_even_case.annotations, filtered, **OPTIONS, append=True)
    assert verify(filtered, sample=0).ok
