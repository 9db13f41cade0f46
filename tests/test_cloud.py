"""Stores on a real S3-compatible server (SeaweedFS on 127.0.0.1) and in one .zip file."""

from __future__ import annotations

import os
import re

import distributed
import numpy as np
import pytest
import xarray as xr
import zarr

from wsizarr import QUALITY_MEASURES, IncompleteStoreError, ParameterError, StoreError, StoreExistsError, extract, open_dataset, store_info
from wsizarr.slides._demo import write_demo_annotations, write_demo_slide
from wsizarr._locations import parse_location

from .helpers import assert_same_store, run
from .test_crash import start_and_kill

KWARGS = dict(level=0, patch_size=64, per_annotation=25, shard_size=16, seed=9)


def _group(location):
    return zarr.open_group(location.open("r"), mode="r")


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, aperio_even_case):
    store = tmp_path_factory.mktemp("local") / "ref.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, **KWARGS)
    return store


def test_extract_to_s3_equals_local_and_counts_objects(s3_server, aperio_even_case, local_reference):
    url = s3_server.url("direct.zarr")
    summary = extract(aperio_even_case.slide, aperio_even_case.annotations, url,
                      storage_options=s3_server.options, **KWARGS)
    location = parse_location(url, s3_server.options)
    assert summary.n_patches == 200 and summary.store == url
    assert_same_store(local_reference, location)
    keys = location.keys()
    shards = [k for k in keys if k.startswith("patches/c/")]
    assert len(shards) == 13  # 200 patches, 16 a shard
    for measure in QUALITY_MEASURES:  # a chunk per shard
        assert sorted(k for k in keys if k.startswith(f"{measure}/c/")) == sorted(f"{measure}/c/{i}" for i in range(13))
    chunked = ("patches/c/", *(f"{measure}/c/" for measure in QUALITY_MEASURES))
    others = [k for k in keys if not k.startswith(chunked)]  # metadata, one chunk per small array
    assert all(k.endswith("zarr.json") or re.search(r"/c/0(/0)*$", k) for k in others), others
    info = store_info(location)
    assert info["complete"] and info["files"] == len(keys)
    dataset = xr.open_zarr(location.open("r"), consolidated=True)
    assert dataset["patches"].shape == (200, 64, 64, 3) and "annotation_id" in dataset.coords
    decoded = open_dataset(url, storage_options=s3_server.options)
    np.testing.assert_array_equal(decoded["patches"].values, zarr.open_group(local_reference, mode="r")["patches"][:])
    assert set(decoded.label.values) <= {"glomerulus", "sclerotic"}
    with pytest.raises(StoreExistsError):
        extract(aperio_even_case.slide, aperio_even_case.annotations, url,
                storage_options=s3_server.options, **KWARGS)


def test_sigkill_on_s3_then_resume(s3_server, aperio_even_case, local_reference):
    url = s3_server.url("killed.zarr")
    location = parse_location(url, s3_server.options)
    env = {
        **os.environ, "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key, "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_REGION": "us-east-1",
    }
    args = ["extract", aperio_even_case.slide, "--annotations", aperio_even_case.annotations,
            "--out", url, "--level", "0", "--patch-size", "64", "--per-annotation", "25",
            "--shard-size", "16", "--seed", "9"]
    start_and_kill([*args, "--workers", "1"], env,
                   when=lambda: len(location.keys("_shards_done/c/")) >= 2, interval=0.02)
    info = store_info(location)
    assert not info["complete"] and 2 <= info["shards_done"] < 13
    with pytest.raises(IncompleteStoreError):
        from wsizarr.store._store import open_store

        open_store(location)
    resumed = run(*args, "--resume", env=env)
    assert f"({13 - info['shards_done']} of 13 shards written)" in resumed.stdout
    assert_same_store(local_reference, location)


def test_dask_cluster_writes_a_cohort_to_s3(s3_server, tmp_path):
    slides = []
    for i in range(3):
        slide = write_demo_slide(tmp_path / f"S{i}.svs", width=1600, height=1200, levels=2,
                                 n_glomeruli=2 + i, glomerulus_px=160, seed=30 + i)
        write_demo_annotations(slide, tmp_path / f"S{i}.xml")
        slides.append(slide.path)
    kwargs = dict(level=0, patch_size=48, per_annotation=8, shard_size=8, seed=2)
    local = tmp_path / "local.zarr"
    extract(slides, tmp_path, local, **kwargs)
    url = s3_server.url("dask-cohort.zarr")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        summary = extract(slides, tmp_path, url, client=client, storage_options=s3_server.options, **kwargs)
    assert summary.n_slides == 3 and summary.n_patches == (2 + 3 + 4) * 8
    assert_same_store(local, url, storage_options=s3_server.options)


def test_zip_output_and_pack(tmp_path, aperio_even_case, local_reference):
    direct = tmp_path / "direct.zip"
    extract(aperio_even_case.slide, aperio_even_case.annotations, direct, **KWARGS)
    assert direct.is_file() and not (tmp_path / "direct.zip.partial.zarr").exists()
    assert_same_store(local_reference, direct)
    with zarr.storage.ZipStore(direct, mode="r") as store:
        assert xr.open_zarr(store)["patches"].shape == (200, 64, 64, 3)
    assert open_dataset(direct).sizes["patch"] == 200
    packed = tmp_path / "packed.zip"
    run("pack", local_reference, packed)
    assert "[complete]" in run("info", packed).stdout
    run("pack", local_reference, packed, expect=1)  # exists: never overwritten silently


def test_torch_datasets_read_s3_through_spawned_workers(s3_server, aperio_even_case, local_reference):
    from torch.utils.data import DataLoader

    from wsizarr.torch import PatchDataset, ShardShuffledPatches

    url = s3_server.url("torch.zarr")
    extract(aperio_even_case.slide, aperio_even_case.annotations, url, storage_options=s3_server.options, **KWARGS)
    stored = zarr.open_group(local_reference, mode="r")["patches"][:]
    mapped = PatchDataset(url, storage_options=s3_server.options, with_meta=True)
    mapped[0]  # the parent's S3 client is never handed to the workers
    iterable = ShardShuffledPatches(url, batch_size=32, storage_options=s3_server.options, with_meta=True)
    for dataset, batch_size in ((mapped, 32), (iterable, None)):
        seen = []
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=batch_size is not None, num_workers=2,
                            multiprocessing_context="spawn")
        for images, _, meta in loader:
            index = meta["index"].numpy()
            np.testing.assert_array_equal(images.permute(0, 2, 3, 1).numpy(), stored[index])
            seen.extend(index.tolist())
        assert sorted(seen) == list(range(200))
    # obstore's runtime does not survive fork: a forked worker says so at once instead of hanging
    with pytest.raises(StoreError, match="S3 cannot be used in a process forked after its parent used S3.*'spawn'"):
        next(iter(DataLoader(mapped, batch_size=8, num_workers=1, multiprocessing_context="fork")))


def test_overwrite_on_s3_builds_beside_and_refuses_foreign_prefixes(s3_server, aperio_even_case, local_reference):
    import obstore
    from obstore.store import S3Store

    url = s3_server.url("replaced.zarr")
    options = s3_server.options
    extract(aperio_even_case.slide, aperio_even_case.annotations, url, storage_options=options,
            **{**KWARGS, "per_annotation": 2})
    with pytest.raises(ParameterError, match="more than the whole level"):  # the old store stays
        extract(aperio_even_case.slide, aperio_even_case.annotations, url, storage_options=options,
                overwrite=True, **{**KWARGS, "patch_size": 5000})
    assert len(open_dataset(url, storage_options=options).patch) == 16
    extract(aperio_even_case.slide, aperio_even_case.annotations, url, storage_options=options,
            overwrite=True, **KWARGS)
    location = parse_location(url, options)
    assert_same_store(local_reference, location)
    assert not parse_location(s3_server.url("replaced.zarr.partial.zarr"), options).keys()
    assert len(open_dataset(url, storage_options=options).patch) == 200

    foreign = s3_server.url("someone-elses")
    bucket = S3Store(location.bucket, prefix="someone-elses", endpoint=options["endpoint_url"],
                     access_key_id=options["access_key_id"], secret_access_key=options["secret_access_key"],
                     region="us-east-1", client_options={"allow_http": True})
    obstore.put(bucket, "data.csv", b"a,b\n1,2\n")
    with pytest.raises(StoreError, match="is not a wsizarr store"):
        extract(aperio_even_case.slide, aperio_even_case.annotations, foreign, storage_options=options,
                overwrite=True, **KWARGS)
    assert parse_location(foreign, options).keys() == ["data.csv"]
