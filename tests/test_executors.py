"""The same shard tasks on threads, processes and a dask.distributed cluster give the same store."""

from __future__ import annotations

import distributed
import pytest

from wsizarr import ParameterError, extract

from .helpers import assert_same_store

KWARGS = dict(level=0, patch_size=64, per_annotation=12, shard_size=16, seed=5, masks=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, aperio_even_case):
    store = tmp_path_factory.mktemp("ref") / "threads.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, workers=2, **KWARGS)
    return store


def test_processes(tmp_path, aperio_even_case, reference):
    store = tmp_path / "processes.zarr"
    summary = extract(aperio_even_case.slide, aperio_even_case.annotations, store,
                      executor="processes", workers=2, **KWARGS)
    assert summary.shards_written == 6
    assert_same_store(reference, store)


def test_dask_local_cluster(tmp_path, aperio_even_case, reference):
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        store = tmp_path / "dask.zarr"
        done = []
        extract(aperio_even_case.slide, aperio_even_case.annotations, store, client=client,
                progress=lambda d, t: done.append(d), **KWARGS)
    assert done[-1] == 96
    assert_same_store(reference, store)


def test_unknown_executor(tmp_path, aperio_even_case):
    with pytest.raises(ParameterError, match="unknown executor 'gpu'"):
        extract(aperio_even_case.slide, aperio_even_case.annotations, tmp_path / "x.zarr", executor="gpu")
