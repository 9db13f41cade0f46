"""The location layer on local disk, real zip files and a real S3 server on 127.0.0.1.

One contract suite runs on every kind of location; S3 errors are provoked for real (a bucket that
does not exist, refused credentials, a closed port), never by patching a client.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from wsizarr._errors import ParameterError, StoreError, StoreExistsError
from wsizarr._locations import LocalLocation, Location, S3Location, ZipLocation, parse_location

from .s3server import S3Server, free_port

PATCHES = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
LABELS = np.arange(10, dtype=np.int32) % 3
ATTRS = {"wsizarr": {"schema_version": 1, "complete": True, "n_patches": 10}}
SHARD_KEYS = [f"patches/c/{i}/0/0/0" for i in range(3)]  # 10 patches, 4 per shard
KINDS = ["local", "zip", "s3"]


def write_sample(location: Location, attrs: dict = ATTRS) -> None:
    """A small wsizarr-like store: sharded patches, a label coordinate, group attributes."""
    group = zarr.open_group(location.open("w"), mode="w", zarr_format=3)
    group.attrs.update(attrs)
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


def assert_sample(store: zarr.abc.store.Store, attrs: dict = ATTRS) -> None:
    group = zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=True)
    assert group.metadata.consolidated_metadata is not None  # opening reads one object
    assert dict(group.attrs) == attrs
    np.testing.assert_array_equal(group["patches"][:], PATCHES)
    np.testing.assert_array_equal(group["patches"][5], PATCHES[5])  # a ranged read into a shard
    dataset = xr.open_zarr(store, zarr_format=3, consolidated=True)
    np.testing.assert_array_equal(dataset.label.values, LABELS)
    np.testing.assert_array_equal(dataset.patches.isel(patch=9).values, PATCHES[9])


def _empty(kind: str, request, tmp_path: Path, name: str) -> Location:
    """A fresh, empty location of ``kind``."""
    if kind == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        return parse_location(server.url(f"{request.node.name}/{name}"), server.options)
    return parse_location(tmp_path / (Path(name).with_suffix(".zip") if kind == "zip" else name))


@pytest.fixture(params=["local", "s3"])
def writable(request, tmp_path) -> Location:
    """A fresh, empty location of each kind a store can be written to piecewise."""
    return _empty(request.param, request, tmp_path, "cohort.zarr")


@pytest.fixture(params=KINDS)
def filled(request, tmp_path) -> Location:
    """A location of each kind holding the sample store (a zip is packed from a directory)."""
    location = _empty(request.param, request, tmp_path, "cohort.zarr")
    if location.can_append:
        write_sample(location)
    else:
        built = location.beside(".partial.zarr")
        write_sample(built)
        location.pack(built)
        built.delete()
    return location


# --- the contract, once, on every kind of location --------------------------------------------


def test_contract_listing_and_usage(filled: Location) -> None:
    assert filled.exists()
    keys = filled.keys()
    assert {"zarr.json", "patches/zarr.json", "label/zarr.json", *SHARD_KEYS} <= set(keys)
    assert keys == sorted(keys)
    assert filled.keys("patches/c/") == filled.keys("/patches/c") == SHARD_KEYS
    assert filled.keys("patch") == []  # prefixes are folders
    n_bytes, n_files = filled.usage()
    assert 1 <= n_files <= len(keys) and n_bytes > PATCHES.nbytes // 2


def test_contract_open(filled: Location) -> None:
    assert_sample(filled.open("r"))
    assert_sample(filled.open("r", check=False))
    if filled.can_append:
        assert_sample(filled.open("a"))
    else:
        with pytest.raises(StoreError, match="cannot be added to"):
            filled.open("a")
    # loader workers get the location or the opened store pickled
    assert pickle.loads(pickle.dumps(filled)) == filled
    assert_sample(pickle.loads(pickle.dumps(filled)).open("r"))
    assert_sample(pickle.loads(pickle.dumps(filled.open("r"))))


def test_contract_read_key(filled: Location) -> None:
    store = filled.open("r")
    expected = np.frombuffer(zarr.core.sync.sync(
        store.get("patches/c/1/0/0/0", zarr.core.buffer.default_buffer_prototype())
    ).to_bytes(), np.uint8)
    np.testing.assert_array_equal(filled.read_key(store, "patches/c/1/0/0/0"), expected)
    assert not filled.read_key(store, "patches/c/1/0/0/0").flags.writeable  # mapped, or as received
    assert filled.read_key(store, "patches/c/9/0/0/0") is None


def test_contract_str_and_beside(filled: Location) -> None:
    again = parse_location(str(filled))
    assert type(again) is type(filled) and str(again) == str(filled)
    beside = filled.beside(".partial.zarr")
    assert str(beside) == f"{filled}.partial.zarr"
    assert beside.can_append and not beside.exists()  # a zip is built in a directory beside it
    assert type(beside) is (LocalLocation if isinstance(filled, ZipLocation) else type(filled))


def test_contract_replace_with(filled: Location) -> None:
    built = filled.beside(".partial.zarr")
    newer = {"wsizarr": {**ATTRS["wsizarr"], "n_patches": 11}}
    write_sample(built, newer)
    filled.remove_partial_writes()  # nothing half-written here: nothing changes
    keys = filled.keys()
    filled.replace_with(built)
    assert not built.exists()
    assert_sample(filled.open("r"), newer)
    assert filled.keys() == keys


def test_contract_delete(filled: Location) -> None:
    filled.delete()
    assert not filled.exists()
    filled.delete()  # nothing there is fine
    with pytest.raises(StoreError, match="store not found"):
        filled.open("r")


@pytest.mark.parametrize("kind", KINDS)
def test_contract_single_object(kind: str, request, tmp_path: Path) -> None:
    """``size`` and ``read_range`` on one file or object, e.g. a slide."""
    location = _empty(kind, request, tmp_path, "slide.svs")
    data = bytes(range(256)) * 4
    if isinstance(location, S3Location):
        location.put_object(location.path, data)
    elif isinstance(location, ZipLocation):
        with zipfile.ZipFile(location.path, "w") as archive:
            archive.writestr("a", b"x")
        data = Path(location.path).read_bytes()
    else:
        Path(location.path).write_bytes(data)
    assert location.size() == len(data)
    assert location.read_range(0, 4) == data[:4] and location.read_range(300, 10) == data[300:310]
    missing = location.beside(".gone")
    with pytest.raises(StoreError, match=f"^{re.escape(str(missing))}: no such"):
        missing.size()


# --- what differs between kinds --------------------------------------------------------------


def test_writable_store(writable: Location) -> None:
    assert not writable.exists()
    write_sample(writable)
    n_bytes, n_files = writable.usage()
    assert n_files == len(writable.keys())
    writable.delete()
    assert not writable.exists() and writable.keys() == []


def test_local_partial_writes_are_removed(tmp_path: Path) -> None:
    location = parse_location(tmp_path / "cohort.zarr")
    write_sample(location)
    left = tmp_path / "cohort.zarr" / "patches" / "c" / f"9.{'0' * 32}.partial"
    left.write_bytes(b"half")
    keep = tmp_path / "cohort.zarr" / "notes.partial"  # not zarr's own temporary name
    keep.write_bytes(b"mine")
    location.remove_partial_writes()
    assert not left.exists() and keep.exists()


def test_consolidated_open_reads_one_object(filled: Location) -> None:
    store = zarr.storage.LoggingStore(filled.open("r"))
    group = zarr.open_group(store, mode="r", zarr_format=3)
    assert group["patches"].shape == PATCHES.shape and group["label"].dtype == np.int32
    reads = ("get", "get_partial_values", "exists", "list", "list_prefix", "list_dir")
    assert {name: store.counter[name] for name in reads if store.counter[name]} == {"get": 1}


def test_read_only_store_refuses_writes(filled: Location) -> None:
    store = filled.open("r")
    with pytest.raises(ValueError, match="read-only"):
        zarr.open_group(store, mode="r+", zarr_format=3).attrs["x"] = 1


def test_pack_zip(writable: Location, tmp_path: Path) -> None:
    write_sample(writable)
    target = parse_location(tmp_path / "cohort.zip")
    target.pack(writable)
    path = Path(target.path)
    assert isinstance(target, ZipLocation) and not target.can_append and path.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".partial"] == []
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    assert sorted(info.filename for info in infos) == writable.keys()
    assert {info.compress_type for info in infos} == {zipfile.ZIP_STORED}
    assert target.usage() == (path.stat().st_size, 1)
    assert target.keys() == writable.keys()
    assert target.keys("patches/c") == SHARD_KEYS and target.keys("patch") == []
    assert_sample(zarr.storage.ZipStore(path, mode="r"))
    assert_sample(target.open("r"))
    with pytest.raises(StoreExistsError, match="cohort.zip: exists"):
        target.pack(writable)
    with pytest.raises(ParameterError, match="a packed store must be a .zip file"):
        parse_location(tmp_path / "packed.zarr").pack(writable)


def test_zip_write_rules(tmp_path: Path) -> None:
    location = parse_location(tmp_path / "direct.zip")
    store = location.open("w")
    zarr.create_group(store, zarr_format=3, attributes=ATTRS)  # a zip takes each key once
    store.close()
    assert dict(zarr.open_group(location.open("r"), mode="r").attrs) == ATTRS
    with pytest.raises(StoreExistsError, match="direct.zip: exists; delete it"):
        location.open("w")
    with pytest.raises(StoreError, match="cannot be added to"):
        location.open("a")
    location.delete()
    assert not location.exists()
    with pytest.raises(StoreError, match="directory does not exist"):
        parse_location(tmp_path / "missing" / "x.zip").pack(location)


def test_s3_single_objects(s3_server: S3Server) -> None:
    """The conditional writes a writer lock is made of."""
    location = parse_location(s3_server.url("objects.zarr"), s3_server.options)
    key = f"{location.path}.lock"
    assert location.get_object(key) is None
    first = location.put_object(key, b"one", if_absent=True)
    assert first and location.put_object(key, b"two", if_absent=True) is None
    assert location.get_object(key) == (b"one", first)
    second = location.put_object(key, b"three", if_match=first)
    assert second and second != first
    assert location.put_object(key, b"four", if_match=first) is None  # changed meanwhile
    assert location.get_object(key) == (b"three", second)
    assert not location.exists()  # an object beside the prefix is not in it
    location.delete_object(key)
    assert location.get_object(key) is None
    assert location.put_object(key, b"five", if_match=second) is None  # removed meanwhile
    location.delete_object(key)  # nothing there is fine


@pytest.mark.parametrize(
    ("text", "kind", "path"),
    [
        ("s3://bucket/cohorts/a.zarr/", S3Location, "cohorts/a.zarr"),
        ("out/cohort.ZIP", ZipLocation, "out/cohort.ZIP"),
        ("out/cohort.zarr", LocalLocation, "out/cohort.zarr"),
    ],
)
def test_parse_location(text: str, kind: type, path: str) -> None:
    location = parse_location(text)
    assert type(location) is kind and location.path == path
    assert str(location) == text.rstrip("/")
    assert parse_location(location) is location
    if isinstance(location, S3Location):
        assert location.bucket == "bucket"


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
    assert_sample(location.open("r"))
    location.delete()


def _one_line_error(location: Location, *parts: str) -> None:
    for call in (lambda loc: loc.exists(), lambda loc: loc.open("w")):
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
