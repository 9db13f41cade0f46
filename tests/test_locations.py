"""The location layer on local disk, real zip files and a real S3 server on 127.0.0.1.

One contract suite runs on every kind of location; S3 errors are provoked for real (a bucket that
does not exist, refused credentials, a closed port), never by patching a client.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from wsizarr._errors import ParameterError, StoreError, StoreExistsError
from wsizarr._locations import (
    Location,
    delete,
    exists,
    list_keys,
    open_zarr_store,
    pack_zip,
    parse_location,
    size_bytes,
)

from .s3server import S3Server, free_port

PATCHES = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
LABELS = np.arange(10, dtype=np.int32) % 3
ATTRS = {"wsizarr": {"schema_version": 1, "complete": True, "n_patches": 10}}
SHARD_KEYS = [f"patches/c/{i}/0/0/0" for i in range(3)]  # 10 patches, 4 per shard


def write_sample(location: Location) -> None:
    """A small wsizarr-like store: sharded patches, a label coordinate, group attributes."""
    group = zarr.open_group(open_zarr_store(location, "w"), mode="w", zarr_format=3)
    group.attrs.update(ATTRS)
    patches = group.create_array(
        "patches", shape=PATCHES.shape, dtype="uint8", chunks=(1, 16, 16, 3),
        shards=(4, 16, 16, 3), dimension_names=("patch", "row", "column", "channel"),
        attributes={"coordinates": "label"},
    )
    patches[:] = PATCHES
    labels = group.create_array(
        "label", shape=LABELS.shape, dtype="int32", chunks=(10,), dimension_names=("patch",)
    )
    labels[:] = LABELS
    with warnings.catch_warnings():  # consolidated metadata is a zarr-python extension
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(group.store)


def assert_sample(store: zarr.abc.store.Store) -> None:
    group = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=True)
    assert group.metadata.consolidated_metadata is not None  # opening reads one object
    assert dict(group.attrs) == ATTRS
    np.testing.assert_array_equal(group["patches"][:], PATCHES)
    np.testing.assert_array_equal(group["patches"][5], PATCHES[5])  # a ranged read into a shard
    dataset = xr.open_zarr(store, zarr_format=3, consolidated=True)
    np.testing.assert_array_equal(dataset.label.values, LABELS)
    np.testing.assert_array_equal(dataset.patches.isel(patch=9).values, PATCHES[9])


@pytest.fixture(params=["local", "s3"])
def writable(request, tmp_path) -> Location:
    """A fresh, empty location of each writable kind."""
    if request.param == "local":
        return parse_location(tmp_path / "cohort.zarr")
    server: S3Server = request.getfixturevalue("s3_server")
    return parse_location(server.url(f"{request.node.name}/cohort.zarr"), server.options)


def test_store_contract(writable: Location) -> None:
    assert not exists(writable)
    write_sample(writable)
    assert exists(writable)
    keys = list_keys(writable)
    assert {"zarr.json", "patches/zarr.json", "label/zarr.json", *SHARD_KEYS} <= set(keys)
    assert list_keys(writable, "patches/c/") == list_keys(writable, "patches/c") == SHARD_KEYS
    assert list_keys(writable, "patch") == []  # prefixes are folders
    n_bytes, n_files = size_bytes(writable)
    assert n_files == len(keys) and n_bytes > PATCHES.nbytes // 2
    assert_sample(open_zarr_store(writable, "r"))
    assert_sample(open_zarr_store(writable, "a"))
    # loader workers get the location or the opened store pickled
    assert_sample(open_zarr_store(pickle.loads(pickle.dumps(writable)), "r"))
    assert_sample(pickle.loads(pickle.dumps(open_zarr_store(writable, "r"))))
    delete(writable)
    assert not exists(writable) and list_keys(writable) == []
    delete(writable)  # nothing there is fine
    with pytest.raises(StoreError, match="store not found"):
        open_zarr_store(writable, "r")


def test_consolidated_open_reads_one_object(writable: Location) -> None:
    write_sample(writable)
    store = zarr.storage.LoggingStore(open_zarr_store(writable, "r"))
    group = zarr.open_group(store, mode="r", zarr_format=3)
    assert group["patches"].shape == PATCHES.shape and group["label"].dtype == np.int32
    reads = ("get", "get_partial_values", "exists", "list", "list_prefix", "list_dir")
    assert {name: store.counter[name] for name in reads if store.counter[name]} == {"get": 1}


def test_read_only_store_refuses_writes(writable: Location) -> None:
    write_sample(writable)
    store = open_zarr_store(writable, "r")
    with pytest.raises(ValueError, match="read-only"):
        zarr.open_group(store, mode="r+", zarr_format=3).attrs["x"] = 1


def test_pack_zip(writable: Location, tmp_path: Path) -> None:
    write_sample(writable)
    target = pack_zip(writable, tmp_path / "cohort.zip")
    path = Path(target.path)
    assert target.kind == "zip" and path.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".partial"] == []
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    assert sorted(info.filename for info in infos) == list_keys(writable)
    assert {info.compress_type for info in infos} == {zipfile.ZIP_STORED}
    assert size_bytes(target) == (path.stat().st_size, 1)
    assert list_keys(target) == list_keys(writable)
    assert list_keys(target, "patches/c") == SHARD_KEYS and list_keys(target, "patch") == []
    assert_sample(zarr.storage.ZipStore(path, mode="r"))
    assert_sample(open_zarr_store(target, "r"))
    with pytest.raises(StoreExistsError, match="cohort.zip: exists"):
        pack_zip(writable, path)


def test_zip_write_rules(tmp_path: Path) -> None:
    location = parse_location(tmp_path / "direct.zip")
    store = open_zarr_store(location, "w")
    zarr.create_group(store, zarr_format=3, attributes=ATTRS)  # a zip takes each key once
    store.close()
    assert dict(zarr.open_group(open_zarr_store(location, "r"), mode="r").attrs) == ATTRS
    with pytest.raises(StoreExistsError, match="direct.zip: exists; delete it"):
        open_zarr_store(location, "w")
    with pytest.raises(StoreError, match="cannot be added to"):
        open_zarr_store(location, "a")
    delete(location)
    assert not exists(location)
    with pytest.raises(StoreError, match="directory does not exist"):
        pack_zip(location, tmp_path / "missing" / "x.zip")


@pytest.mark.parametrize(
    ("text", "kind", "path", "bucket"),
    [
        ("s3://bucket/cohorts/a.zarr/", "s3", "cohorts/a.zarr", "bucket"),
        ("out/cohort.ZIP", "zip", "out/cohort.ZIP", ""),
        ("out/cohort.zarr", "local", "out/cohort.zarr", ""),
    ],
)
def test_parse_location(text: str, kind: str, path: str, bucket: str) -> None:
    location = parse_location(text)
    assert (location.kind, location.path, location.bucket) == (kind, path, bucket)
    assert parse_location(location) is location


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("gs://bucket/a.zarr", None, "'gs://' is not supported"),
        ("s3://bucket", None, "name a bucket and a prefix"),
        ("s3:///a.zarr", None, "name a bucket and a prefix"),
        ("s3://bucket/a.zarr", {"password": "x"}, "unknown storage options"),
        ("a.zarr", {"region": "eu-west-1"}, "apply to s3:// locations only"),
    ],
)
def test_parse_location_errors(text: str, options: dict | None, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        parse_location(text, options)


def test_secrets_stay_out_of_repr(s3_server: S3Server) -> None:
    location = parse_location(s3_server.url("a.zarr"), s3_server.options)
    assert s3_server.secret_access_key not in repr(location)
    assert str(location) == f"s3://{s3_server.bucket}/a.zarr"


def test_environment_variables(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    location = parse_location(s3_server.url("from-env/cohort.zarr"))
    write_sample(location)
    assert_sample(open_zarr_store(location, "r"))
    delete(location)


def _one_line_error(location: Location, *parts: str) -> None:
    for call in (exists, lambda loc: open_zarr_store(loc, "w")):
        with pytest.raises(StoreError) as info:
            call(location)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{location}: ")
        for part in parts:
            assert part in message
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_bucket(s3_server: S3Server) -> None:
    location = parse_location("s3://no-such-bucket/a.zarr", s3_server.options)
    _one_line_error(location, "bucket 'no-such-bucket' does not exist", "create it")


def test_wrong_credentials(s3_server: S3Server) -> None:
    if not s3_server.checks_credentials:
        pytest.skip("moto's server accepts any credentials")
    for wrong in ({"secret_access_key": "wrong"}, {"access_key_id": "nobody"}):
        location = parse_location(s3_server.url("a.zarr"), {**s3_server.options, **wrong})
        _one_line_error(location, "refused the credentials", "AWS_SECRET_ACCESS_KEY")


def test_unreachable_endpoint(s3_server: S3Server) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    options = {**s3_server.options, "endpoint_url": endpoint}
    location = parse_location(s3_server.url("a.zarr"), options)
    _one_line_error(location, f"cannot reach {endpoint}", "AWS_ENDPOINT_URL")
