"""The same shard tasks on threads, processes and a dask.distributed cluster give the same store."""

from __future__ import annotations

import distributed
import numpy as np
import pytest
import zarr

from wsizarr import ParameterError, extract

ARRAYS = ("patches", "masks", "x", "y", "level", "annotation_id", "label", "slide", "padded")
KWARGS = dict(level=0, patch_size=64, per_annotation=12, shard_size=16, seed=5, masks=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, aperio_even_case):
    store = tmp_path_factory.mktemp("ref") / "threads.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, workers=2, **KWARGS)
    return store


def _assert_same(a_path, b_path):
    a, b = zarr.open_group(a_path, mode="r"), zarr.open_group(b_path, mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
    assert a["slides/plan_sha256"][:].tolist() == b["slides/plan_sha256"][:].tolist()


def test_processes(tmp_path, aperio_even_case, reference):
    store = tmp_path / "processes.zarr"
    summary = extract(aperio_even_case.slide, aperio_even_case.annotations, store,
                      executor="processes", workers=2, **KWARGS)
    assert summary.shards_written == 6
    _assert_same(reference, store)


def test_dask_local_cluster(tmp_path, aperio_even_case, reference):
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        store = tmp_path / "dask.zarr"
        done = []
        extract(aperio_even_case.slide, aperio_even_case.annotations, store, client=client,
                progress=lambda d, t: done.append(d), **KWARGS)
    assert done[-1] == 96
    _assert_same(reference, store)


def test_unknown_executor(tmp_path, aperio_even_case):
    with pytest.raises(ParameterError, match="unknown executor 'gpu'"):
        extract(aperio_even_case.slide, aperio_even_case.annotations, tmp_path / "x.zarr", executor="gpu")
