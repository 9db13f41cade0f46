"""Where a store lives: a local directory, a single ``.zip`` file or an S3 prefix.

``parse_location`` turns what a user typed into a :class:`Location`; the functions below open a
zarr ``Store`` on it and answer what the store layer asks of any location (does it exist, delete
it, list it, how big is it, pack it into a zip). Each kind of location is one small backend that
fills in :class:`_Backend`; callers never branch on the kind.

S3 goes through zarr's own ``ObjectStore`` over obstore (``pip install 'wsizarr[cloud]'``).
Credentials, endpoint and region come from the storage options, else from the usual AWS
environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ._errors import ParameterError, StoreError, StoreExistsError

if TYPE_CHECKING:
    from obstore.store import RetryConfig, S3Store

__all__ = [
    "Location",
    "Mode",
    "STORAGE_OPTIONS",
    "delete",
    "exists",
    "list_keys",
    "object_size",
    "open_zarr_store",
    "pack_zip",
    "parse_location",
    "parse_store_location",
    "publish",
    "read_key",
    "read_range",
    "remove_partial_writes",
    "size_bytes",
]

Kind = Literal["local", "zip", "s3"]
Mode = Literal["r", "w", "a"]  # read only; create; add to an existing store (resume)
STORAGE_OPTIONS = ("access_key_id", "secret_access_key", "session_token", "endpoint_url", "region")
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# listing and deleting give up within a second when the endpoint is down (obstore: 10 retries)
_FEW_RETRIES: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}
_PARTIAL_WRITE = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr LocalStore's temporary files
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: packing the same store gives the same zip


@dataclass(frozen=True)
class Location:
    """A parsed store location; ``str()`` gives it back as the user would write it."""

    kind: Kind
    path: str  # local and zip: a filesystem path; s3: the key prefix inside the bucket
    bucket: str = ""
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.kind == "s3" else self.path


def parse_location(
    text: str | os.PathLike[str] | Location, storage_options: Mapping[str, str] | None = None
) -> Location:
    """Parse ``s3://bucket/prefix``, a ``.zip`` file or a local directory.

    ``storage_options`` (keys in ``STORAGE_OPTIONS``) apply to S3 only and override the AWS
    environment variables.
    """
    if isinstance(text, Location):
        return text
    options = dict(storage_options or {})
    unknown = sorted(set(options) - set(STORAGE_OPTIONS))
    if unknown:
        raise ParameterError(
            f"{os.fspath(text)}: unknown storage options {unknown}; use {list(STORAGE_OPTIONS)}"
        )
    text = os.fspath(text)
    scheme, sep, rest = text.partition("://")
    if sep and scheme != "s3":
        raise ParameterError(
            f"{text}: '{scheme}://' is not supported; "
            "use s3://bucket/name.zarr, a .zip file or a directory"
        )
    if options and not sep:
        raise ParameterError(f"{text}: storage options apply to s3:// locations only; drop them")
    if sep:
        bucket, _, prefix = rest.partition("/")
        prefix = prefix.strip("/")
        if not bucket or not prefix:
            raise ParameterError(
                f"{text}: name a bucket and a prefix, e.g. s3://bucket/cohort.zarr"
            )
        return Location("s3", prefix, bucket, options)
    return Location("zip" if text.lower().endswith(".zip") else "local", text)


def parse_store_location(
    text: str | os.PathLike[str] | Location, storage_options: Mapping[str, str] | None
) -> Location:
    """``parse_location`` for a store whose run may also read slides on S3: the storage options
    serve the slides too, so a local store ignores them instead of refusing them."""
    remote = text.kind == "s3" if isinstance(text, Location) else os.fspath(text).startswith("s3://")
    return parse_location(text, storage_options if remote else None)


def open_zarr_store(location: Location, mode: Mode) -> Store:
    """A zarr ``Store`` on ``location``: ``"r"`` read only, ``"w"`` create, ``"a"`` add to it.

    ``StoreError`` when the location cannot be reached or, for ``"r"`` and ``"a"``, holds
    nothing; ``StoreExistsError`` for a zip opened with ``"w"`` that exists.
    """
    backend = _BACKENDS[location.kind]
    found = backend.exists(location)  # on S3 one LIST, which also diagnoses bucket and keys
    if mode != "w" and not found:
        raise StoreError(f"{location}: store not found; check the location")
    return backend.open(location, mode)


def exists(location: Location) -> bool:
    """Whether anything is stored at ``location``."""
    return _BACKENDS[location.kind].exists(location)


def delete(location: Location) -> None:
    """Delete everything stored at ``location`` (for overwriting); nothing there is fine."""
    _BACKENDS[location.kind].delete(location)


def read_key(
    location: Location, store: Store, key: str, reuse: np.ndarray | None = None
) -> np.ndarray | None:
    """The whole value at ``key`` as a uint8 array (None if absent), read through ``store``
    (opened on ``location``). A local file is read into ``reuse`` when it fits: for a large
    file, a fresh allocation's page faults cost as much as the read itself."""
    return _BACKENDS[location.kind].read(location, store, key, reuse)


def list_keys(location: Location, prefix: str = "") -> list[str]:
    """The sorted keys (relative to the store's root) under the folder-like ``prefix``."""
    listing = _BACKENDS[location.kind].listing(location, prefix.strip("/"))
    return sorted(key for key, _ in listing)


def remove_partial_writes(location: Location) -> None:
    """Remove the temporary files of writes that never finished (zarr's local store writes
    ``<key>.<uuid hex>.partial`` and renames it; a killed writer leaves it behind). Only a
    store's own writer, holding it, may call this."""
    _BACKENDS[location.kind].remove_partial_writes(location)


def size_bytes(location: Location) -> tuple[int, int]:
    """Bytes stored and the number of files (or objects) that hold them."""
    return _BACKENDS[location.kind].usage(location)


def pack_zip(source: Location, zip_path: str | os.PathLike[str]) -> Location:
    """Copy every key of the finished store at ``source`` into one ZIP_STORED zip.

    The zip is written under a temporary name beside ``zip_path`` and renamed when complete, so a
    crash never leaves a truncated zip. ``StoreExistsError`` if ``zip_path`` exists.
    """
    target = parse_location(zip_path)
    if target.kind != "zip":
        raise ParameterError(f"{zip_path}: a packed store must be a .zip file; name it *.zip")
    path = Path(target.path)
    if not path.parent.is_dir():
        raise StoreError(f"{path}: its directory does not exist; create it first")
    if path.exists():
        raise StoreExistsError(f"{path}: exists; delete it or choose another name")
    _write_zip(source, path)
    return target


def publish(source: Location, target: Location) -> None:
    """Make the finished store built at ``source`` the store at ``target``, replacing what is
    there only now that the new store is whole; ``source`` is gone afterwards.

    A directory is swapped in by two renames; a zip is packed beside and renamed over the old
    one; on S3 the old store's root metadata goes first (so a half-copied prefix never looks
    complete), then its keys, then the new keys are copied server-side, root metadata last.
    """
    _BACKENDS[target.kind].publish(source, target)


def object_size(location: Location) -> int:
    """The size in bytes of the one S3 object at ``location`` (``s3://bucket/key``, e.g. a
    slide); ``StoreError`` naming the URL when it is absent or unreachable."""
    obstore = _obstore(location)
    with _s3_errors(location):
        try:
            return int(obstore.head(_s3_bucket(location), location.path)["size"])
        except (obstore.exceptions.NotFoundError, FileNotFoundError):
            raise StoreError(f"{location}: no such object; check the URL") from None


def read_range(location: Location, start: int, length: int) -> bytes:
    """``length`` bytes of the S3 object at ``location`` from ``start``: one ranged GET."""
    with _s3_errors(location):
        data = _obstore(location).get_range(_s3_bucket(location), location.path, start=start, length=length)
    return bytes(data)


def _s3_bucket(location: Location) -> S3Store:
    """One client per bucket, endpoint and credentials (kept: a client per request would
    repeat its set-up)."""
    key = (os.getpid(), location.bucket, tuple(sorted(location.storage_options.items())))
    if key not in _BUCKETS:
        _BUCKETS[key] = _s3_store(Location("s3", "", location.bucket, location.storage_options))
    return _BUCKETS[key]


_BUCKETS: dict[tuple[Any, ...], S3Store] = {}


def _write_zip(source: Location, path: Path) -> None:
    """Pack ``source`` into a zip written beside ``path`` and renamed over it when complete."""
    store = open_zarr_store(source, "r")
    prototype = default_buffer_prototype()
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
            for key in list_keys(source):
                buffer = sync(store.get(key, prototype))
                if buffer is None:
                    raise StoreError(f"{source}: {key} vanished while packing; stop writers first")
                archive.writestr(zipfile.ZipInfo(key, _ZIP_EPOCH), buffer.to_bytes())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    finally:
        store.close()


class _Backend(ABC):
    """What every kind of location provides."""

    @abstractmethod
    def open(self, location: Location, mode: Mode) -> Store: ...

    @abstractmethod
    def exists(self, location: Location) -> bool: ...

    @abstractmethod
    def delete(self, location: Location) -> None: ...

    def read(self, location: Location, store: Store, key: str, reuse: np.ndarray | None) -> np.ndarray | None:
        buffer = sync(store.get(key, default_buffer_prototype()))
        return None if buffer is None else buffer.as_numpy_array().view(np.uint8).reshape(-1)

    @abstractmethod
    def listing(self, location: Location, prefix: str) -> Iterator[tuple[str, int]]:
        """``(key, size in bytes)`` of every key under ``prefix`` ("" or "a/b", no slashes)."""

    @abstractmethod
    def publish(self, source: Location, target: Location) -> None:
        """Replace ``target`` by the finished store at ``source`` (see ``publish``)."""

    def usage(self, location: Location) -> tuple[int, int]:
        sizes = [size for _, size in self.listing(location, "")]
        return sum(sizes), len(sizes)

    def remove_partial_writes(self, location: Location) -> None:
        """Nothing to do where a write is atomic (S3 PUTs, a zip written whole)."""


class _Local(_Backend):
    def open(self, location: Location, mode: Mode) -> Store:
        return zarr.storage.LocalStore(location.path, read_only=mode == "r")

    def exists(self, location: Location) -> bool:
        return Path(location.path).exists()

    def delete(self, location: Location) -> None:
        path = Path(location.path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def read(self, location: Location, store: Store, key: str, reuse: np.ndarray | None) -> np.ndarray | None:
        try:
            with open(Path(location.path, key), "rb", buffering=0) as file:
                size = os.fstat(file.fileno()).st_size
                buffer = reuse if reuse is not None and len(reuse) >= size else np.empty(size, np.uint8)
                return buffer[: file.readinto(memoryview(buffer[:size]))]
        except FileNotFoundError:
            return None

    def remove_partial_writes(self, location: Location) -> None:
        for file in Path(location.path).rglob("*.partial"):
            if _PARTIAL_WRITE.search(file.name):
                file.unlink(missing_ok=True)

    def publish(self, source: Location, target: Location) -> None:
        replaced = Path(f"{target.path}.{os.getpid()}.replaced")
        had_target = self.exists(target)
        if had_target:
            os.rename(target.path, replaced)
        os.rename(source.path, target.path)
        if had_target:
            self.delete(Location("local", str(replaced)))

    def listing(self, location: Location, prefix: str) -> Iterator[tuple[str, int]]:
        root = Path(location.path)
        for file in (root / prefix).rglob("*"):
            if file.is_file():
                yield file.relative_to(root).as_posix(), file.stat().st_size


class _Zip(_Local):
    read = _Backend.read  # through the zip store, not the filesystem
    def open(self, location: Location, mode: Mode) -> Store:
        if mode == "a":
            raise StoreError(
                f"{location}: a zip cannot be added to; write a directory, then `wsizarr pack` it"
            )
        if mode == "w" and self.exists(location):
            raise StoreExistsError(f"{location}: exists; delete it or choose another name")
        if mode == "r":  # opened now: zarr's ZipStore.get fails on a store not yet opened
            return sync(zarr.storage.ZipStore.open(location.path, mode="r"))
        return zarr.storage.ZipStore(location.path, mode=mode, compression=zipfile.ZIP_STORED)

    def listing(self, location: Location, prefix: str) -> Iterator[tuple[str, int]]:
        with zipfile.ZipFile(location.path) as archive:
            for info in archive.infolist():
                inside = not prefix or info.filename.startswith(f"{prefix}/")
                if inside and not info.is_dir():
                    yield info.filename, info.compress_size

    def usage(self, location: Location) -> tuple[int, int]:
        return Path(location.path).stat().st_size, 1

    def publish(self, source: Location, target: Location) -> None:
        _write_zip(source, Path(target.path))
        _BACKENDS[source.kind].delete(source)


class _S3(_Backend):
    def open(self, location: Location, mode: Mode) -> Store:
        return zarr.storage.ObjectStore(_s3_store(location), read_only=mode == "r")

    def exists(self, location: Location) -> bool:
        return any(True for _ in self.listing(location, ""))

    def delete(self, location: Location) -> None:
        keys = [key for key, _ in self.listing(location, "")]
        if keys:
            with _s3_errors(location):
                _obstore(location).delete(_s3_store(location, _FEW_RETRIES), keys)

    def publish(self, source: Location, target: Location) -> None:
        new = [key for key, _ in self.listing(source, "")]
        old = [key for key, _ in self.listing(target, "")]
        obstore = _obstore(target)
        bucket = _s3_store(Location("s3", "", target.bucket, target.storage_options))
        with _s3_errors(target):
            if "zarr.json" in old:
                obstore.delete(bucket, f"{target.path}/zarr.json")
            obstore.delete(bucket, [f"{target.path}/{key}" for key in old if key != "zarr.json"])
            for key in sorted(new, key=lambda key: key == "zarr.json"):  # root metadata last
                obstore.copy(bucket, f"{source.path}/{key}", f"{target.path}/{key}")
        self.delete(source)

    def listing(self, location: Location, prefix: str) -> Iterator[tuple[str, int]]:
        with _s3_errors(location):
            store = _s3_store(location, _FEW_RETRIES)
            for batch in _obstore(location).list(store, prefix or None, chunk_size=1000):
                for meta in batch:
                    yield meta["path"], meta["size"]


def _endpoint(location: Location) -> str | None:
    """The endpoint from the storage options, else from the environment; None: AWS itself."""
    return location.storage_options.get("endpoint_url") or next(
        (os.environ[name] for name in _ENDPOINT_VARIABLES if os.environ.get(name)), None
    )


def _obstore(location: Location) -> ModuleType:
    try:
        import obstore
        import obstore.exceptions
        import obstore.store
    except ImportError:
        raise StoreError(
            f"{location}: S3 needs the cloud extra; pip install 'wsizarr[cloud]'"
        ) from None
    return obstore


_obstore_pid: int | None = None  # the process whose obstore (tokio) runtime is running


def _s3_store(location: Location, retry_config: RetryConfig | None = None) -> S3Store:
    """obstore's S3 client; zarr's data path keeps obstore's patient default retries.

    obstore's runtime does not survive ``fork``: a child of a process that used S3 would hang
    on its first request, so it gets a ``StoreError`` with the fix instead.
    """
    global _obstore_pid
    if _obstore_pid not in (None, os.getpid()):
        raise StoreError(
            f"{location}: S3 cannot be used in a process forked after its parent used S3 "
            "(obstore is not fork-safe); start workers with 'spawn' or 'forkserver', e.g. "
            "DataLoader(..., multiprocessing_context='spawn')"
        )
    _obstore_pid = os.getpid()
    config: dict[str, Any] = {
        name: value for name, value in location.storage_options.items() if name != "endpoint_url"
    }
    endpoint = _endpoint(location)
    if endpoint:
        config["endpoint"] = endpoint
    return _obstore(location).store.S3Store(
        location.bucket,
        prefix=location.path or None,  # "": the bucket root
        client_options={"allow_http": bool(endpoint and endpoint.startswith("http://"))},
        retry_config=retry_config,
        **config,
    )


_CREDENTIAL_CODES = (
    "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "ExpiredToken",
    "InvalidToken", "403 Forbidden",
)


@contextmanager
def _s3_errors(location: Location) -> Iterator[None]:
    """Turn obstore's errors into one-line ``StoreError``s naming the URL and the fix."""
    exceptions = _obstore(location).exceptions
    try:
        yield
    except (exceptions.BaseError, OSError) as error:
        message = str(error)
        if "NoSuchBucket" in message:
            raise StoreError(
                f"{location}: bucket '{location.bucket}' does not exist; create it or fix the URL"
            ) from None
        refused = (exceptions.PermissionDeniedError, exceptions.UnauthenticatedError)
        if isinstance(error, refused) or any(code in message for code in _CREDENTIAL_CODES):
            raise StoreError(
                f"{location}: the S3 server refused the credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or the storage options) to a key allowed on this bucket"
            ) from None
        if "error sending request" in message:
            raise StoreError(
                f"{location}: cannot reach {_endpoint(location) or 'the AWS endpoint'}; check the "
                "endpoint (AWS_ENDPOINT_URL or the endpoint_url option) and that the server runs"
            ) from None
        raise StoreError(f"{location}: {message.splitlines()[0]}") from None


_BACKENDS: dict[Kind, _Backend] = {"local": _Local(), "zip": _Zip(), "s3": _S3()}
