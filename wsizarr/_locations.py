"""Where a store lives: a local directory, a single ``.zip`` file or an S3 prefix.

:class:`Location` is the contract every kind of location fills in: open a zarr ``Store`` on it,
say whether anything is there, list, measure, delete, and swap in a store built
:meth:`~Location.beside` it. ``LocalLocation``, ``ZipLocation`` and ``S3Location`` are the
three kinds; ``parse_location`` turns what a user typed into one of them, so callers never ask
which kind they hold (``can_append`` says what differs). A location may also name one file or S3
object, e.g. a slide: ``size`` and ``read_range`` read it.

S3 goes through zarr's own ``ObjectStore`` over obstore (``pip install 'wsizarr[cloud]'``).
Credentials, endpoint and region come from the storage options, else from the usual AWS
environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``). Every S3 request has a timeout (the ``timeout`` storage
option, seconds, default 30) and a bounded number of retries, so a server that stops answering
gives a ``StoreError`` within about three timeouts instead of a hang.
"""

from __future__ import annotations

import mmap
import os
import re
import shutil
import zipfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ._errors import ParameterError, StoreError, StoreExistsError, option
from ._output import new_partial_file

if TYPE_CHECKING:
    from obstore.store import RetryConfig, S3Store

__all__ = [
    "PARTIAL_WRITE",
    "STORAGE_OPTIONS",
    "LocalLocation",
    "Location",
    "Mode",
    "S3Location",
    "ZipLocation",
    "parse_location",
    "parse_store_location",
    "positive_seconds",
]

Mode = Literal["r", "w", "a"]  # read only; create; add to an existing store (resume)
STORAGE_OPTIONS = (
    "access_key_id", "secret_access_key", "session_token", "endpoint_url", "region", "timeout",
)
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
DEFAULT_TIMEOUT_SECONDS = 30.0  # one S3 request, connecting to the end of the body
# Retries stop once twice the timeout has passed since the first try, so a server that accepts
# connections and never answers costs about three timeouts (90 s by default), never a hang.
# Listing and deleting retry 3 times (they give up within a second when the endpoint is down);
# the data path 10 times, riding out a busy server's 5xx answers (backoff up to 5 s).
_FEW_RETRIES = 3
_DATA_RETRIES = 10
PARTIAL_WRITE = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr LocalStore's temporary files
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: packing the same store gives the same zip


def parse_location(
    text: str | os.PathLike[str] | Location, storage_options: Mapping[str, str] | None = None
) -> Location:
    """Parse ``s3://bucket/prefix``, a ``.zip`` file or a local directory (a ``Location`` is
    returned as it is).

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
    if "timeout" in options:
        _timeout_seconds(text, options["timeout"])
    if options.get("endpoint_url"):
        _check_endpoint(text, options["endpoint_url"], "the endpoint_url option")
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
        prefix = prefix.rstrip("/")
        if not bucket or not prefix:
            raise ParameterError(
                f"{text}: name a bucket and a prefix, e.g. s3://bucket/cohort.zarr"
            )
        if any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ParameterError(
                f"{text}: S3 keys are not paths, so '.', '..' and '//' would name other objects "
                "than they seem to; write the prefix plainly, e.g. s3://bucket/a/b.zarr"
            )
        return S3Location(prefix, bucket, options)
    return ZipLocation(text) if text.lower().endswith(".zip") else LocalLocation(text)


def parse_store_location(
    text: str | os.PathLike[str] | Location, storage_options: Mapping[str, str] | None
) -> Location:
    """``parse_location`` for a store whose run may also read slides on S3: the storage options
    serve the slides too, so a local store ignores them instead of refusing them."""
    if isinstance(text, Location):
        return text
    return parse_location(text, storage_options if os.fspath(text).startswith("s3://") else None)


@dataclass(frozen=True)
class Location(ABC):
    """Where a store lives (or one file or S3 object, e.g. a slide); ``str()`` gives it back as
    the user would write it."""

    path: str  # a filesystem path; on S3 the key (or key prefix) inside the bucket

    can_append = True
    """Whether a store here can be added to piecewise (resumed, appended to); when not, a store
    is built :meth:`beside` it and written here whole at the end."""

    def __str__(self) -> str:
        return self.path

    def open(self, mode: Mode = "r", *, check: bool = True) -> Store:
        """A zarr ``Store`` here: ``"r"`` read only, ``"w"`` create, ``"a"`` add to it.

        ``check`` first asks whether anything is here (on S3 one LIST, which also diagnoses
        bucket and credentials): ``StoreError`` when the location cannot be reached or, for
        ``"r"`` and ``"a"``, holds nothing. ``StoreExistsError`` for a zip opened with ``"w"``
        that exists.
        """
        if check:
            found = self.exists()
            if mode != "w" and not found:
                raise StoreError(f"{self}: store not found; check the location")
        return self._open(mode)

    @abstractmethod
    def _open(self, mode: Mode) -> Store: ...

    @abstractmethod
    def exists(self) -> bool:
        """Whether anything is stored here."""

    @abstractmethod
    def delete(self) -> None:
        """Delete everything stored here (for overwriting); nothing here is fine."""

    def keys(self, prefix: str = "") -> list[str]:
        """The sorted keys (relative to the store's root) under the folder-like ``prefix``."""
        return sorted(key for key, _ in self._listing(prefix.strip("/")))

    @abstractmethod
    def _listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        """``(key, size in bytes)`` of every key under ``prefix`` ("" or "a/b", no slashes)."""

    def usage(self) -> tuple[int, int]:
        """Bytes stored and the number of files (or objects) that hold them."""
        sizes = [size for _, size in self._listing("")]
        return sum(sizes), len(sizes)

    def read_key(self, store: Store, key: str) -> np.ndarray | None:
        """The whole value at ``key`` as a read-only uint8 array (None if absent), read through
        ``store`` (opened here); a local file is mapped, not copied."""
        buffer = sync(store.get(key, default_buffer_prototype()))
        return None if buffer is None else buffer.as_numpy_array().view(np.uint8).reshape(-1)

    def remove_partial_writes(self) -> None:
        """Remove the temporary files of writes that never finished (zarr's local store writes
        ``<key>.<uuid hex>.partial`` and renames it; a killed writer leaves it behind). Only a
        store's own writer, holding it, may call this. Nothing to do where a write is atomic
        (S3 PUTs, a zip written whole)."""

    @abstractmethod
    def beside(self, suffix: str) -> Location:
        """The location ``<this>{suffix}`` beside this one, where a store is built before it
        replaces this one: a directory for a local directory or a zip, a prefix on S3."""

    @abstractmethod
    def replace_with(self, source: Location) -> None:
        """Make the finished store built at ``source`` (:meth:`beside` this one) the store here,
        replacing what is here only now that the new store is whole; ``source`` is gone
        afterwards."""

    def pack(self, source: Location) -> None:
        """Copy every key of the finished store at ``source`` into the zip here (see
        ``ZipLocation``); only a zip can be packed into."""
        raise ParameterError(f"{self}: a packed store must be a .zip file; name it *.zip")

    @abstractmethod
    def size(self) -> int:
        """The size in bytes of the one file or object here (e.g. a slide); ``StoreError``
        naming it when it is absent or unreachable."""

    @abstractmethod
    def read_range(self, start: int, length: int) -> bytes:
        """``length`` bytes of the one file or object here from ``start`` (on S3 one ranged GET)."""


class _OnDisk(Location):
    """What the local kinds share: one file's size and bytes read from the file system."""

    def size(self) -> int:
        try:
            return Path(self.path).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"{self}: no such file; check the path") from None

    def read_range(self, start: int, length: int) -> bytes:
        try:
            with open(self.path, "rb") as file:
                file.seek(start)
                return file.read(length)
        except FileNotFoundError:
            raise StoreError(f"{self}: no such file; check the path") from None


@dataclass(frozen=True)
class LocalLocation(_OnDisk):
    """A directory on a local (or mounted) file system."""

    def _open(self, mode: Mode) -> Store:
        return zarr.storage.LocalStore(self.path, read_only=mode == "r")

    def exists(self) -> bool:
        return Path(self.path).exists()

    def delete(self) -> None:
        _delete_path(Path(self.path))

    def _listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        root = Path(self.path)
        for file in (root / prefix).rglob("*"):
            if file.is_file():
                yield file.relative_to(root).as_posix(), file.stat().st_size

    def read_key(self, store: Store, key: str) -> np.ndarray | None:
        # a map of the page cache: reading a shard into fresh memory cost more (copy and page
        # faults) than decoding it; the store's files are replaced by rename, never rewritten
        try:
            with open(Path(self.path, key), "rb", buffering=0) as file:
                if os.fstat(file.fileno()).st_size == 0:
                    return np.empty(0, np.uint8)
                return np.frombuffer(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        except FileNotFoundError:
            return None

    def remove_partial_writes(self) -> None:
        for file in Path(self.path).rglob("*.partial"):
            if PARTIAL_WRITE.search(file.name):
                file.unlink(missing_ok=True)

    def beside(self, suffix: str) -> LocalLocation:
        return LocalLocation(f"{self.path}{suffix}")

    def replace_with(self, source: Location) -> None:
        """Two renames: the old directory aside, the new one in; then the old one goes."""
        replaced = Path(f"{self.path}.{os.getpid()}.replaced")
        had_target = self.exists()
        if had_target:
            os.rename(self.path, replaced)
        os.rename(source.path, self.path)
        if had_target:
            _delete_path(replaced)


@dataclass(frozen=True)
class ZipLocation(_OnDisk):
    """A single ``.zip`` file, written whole (``ZIP_STORED``): read it, or create it once."""

    can_append = False

    def _open(self, mode: Mode) -> Store:
        if mode == "a":
            raise StoreError(
                f"{self}: a zip cannot be added to; write a directory, then `wsizarr pack` it"
            )
        if mode == "w" and self.exists():
            raise StoreExistsError(f"{self}: exists; delete it or choose another name")
        if mode == "r":  # opened now: zarr's ZipStore.get fails on a store not yet opened
            return sync(zarr.storage.ZipStore.open(self.path, mode="r"))
        return zarr.storage.ZipStore(self.path, mode=mode, compression=zipfile.ZIP_STORED)

    def exists(self) -> bool:
        return Path(self.path).exists()

    def delete(self) -> None:
        _delete_path(Path(self.path))

    def _listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        with zipfile.ZipFile(self.path) as archive:
            for info in archive.infolist():
                inside = not prefix or info.filename.startswith(f"{prefix}/")
                if inside and not info.is_dir():
                    yield info.filename, info.compress_size

    def usage(self) -> tuple[int, int]:
        return Path(self.path).stat().st_size, 1

    def beside(self, suffix: str) -> LocalLocation:
        return LocalLocation(f"{self.path}{suffix}")

    def replace_with(self, source: Location) -> None:
        """Packs ``source`` beside the zip and renames it over the old one."""
        _write_zip(source, Path(self.path))
        source.delete()

    def pack(self, source: Location) -> None:
        """The zip is written under a temporary name beside it and renamed when complete, so a
        crash never leaves a truncated zip. ``StoreExistsError`` if it exists."""
        path = Path(self.path)
        if not path.parent.is_dir():
            raise StoreError(f"{path}: its directory does not exist; create it first")
        if path.exists():
            raise StoreExistsError(f"{path}: exists; delete it or choose another name")
        _write_zip(source, path)


@dataclass(frozen=True)
class S3Location(Location):
    """An S3 key prefix (a store) or key (one object) in ``bucket``, reached with
    ``storage_options`` (see ``STORAGE_OPTIONS``) or the AWS environment variables."""

    bucket: str
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.path}"

    def _open(self, mode: Mode) -> Store:
        return _S3ZarrStore(_s3_store(self, _DATA_RETRIES), read_only=mode == "r", location=self)

    def exists(self) -> bool:
        return any(True for _ in self._listing(""))

    def delete(self) -> None:
        keys = [key for key, _ in self._listing("")]
        if keys:
            with _s3_errors(self):
                _obstore(self).delete(_s3_store(self), keys)

    def _listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        with _s3_errors(self):
            store = _s3_store(self)
            for batch in _obstore(self).list(store, prefix or None, chunk_size=1000):
                for meta in batch:
                    yield meta["path"], meta["size"]

    def beside(self, suffix: str) -> S3Location:
        return S3Location(f"{self.path}{suffix}", self.bucket, self.storage_options)

    def replace_with(self, source: Location) -> None:
        """The old store's root metadata goes first (so a half-copied prefix never looks
        complete), then its keys, then the new keys are copied server-side, root metadata last."""
        new = source.keys()
        old = self.keys()
        obstore = _obstore(self)
        bucket = _s3_store(self, root=True)
        with _s3_errors(self):
            if "zarr.json" in old:
                obstore.delete(bucket, f"{self.path}/zarr.json")
            obstore.delete(bucket, [f"{self.path}/{key}" for key in old if key != "zarr.json"])
            for key in sorted(new, key=lambda key: key == "zarr.json"):  # root metadata last
                obstore.copy(bucket, f"{source.path}/{key}", f"{self.path}/{key}")
        source.delete()

    def size(self) -> int:
        obstore = _obstore(self)
        with _s3_errors(self):
            try:
                return int(obstore.head(_s3_bucket(self), self.path)["size"])
            except (obstore.exceptions.NotFoundError, FileNotFoundError):
                raise StoreError(f"{self}: no such object; check the URL") from None

    def read_range(self, start: int, length: int) -> bytes:
        with _s3_errors(self):
            data = _obstore(self).get_range(_s3_bucket(self), self.path, start=start, length=length)
        return bytes(data)

    # Single objects by their key from the bucket's root (e.g. a writer lock beside a store);
    # failures are ``StoreError``s naming this location.

    def get_object(self, key: str) -> tuple[bytes, str | None] | None:
        """The content and ETag of the object ``key`` in this bucket; None when it is absent."""
        obstore = _obstore(self)
        with _s3_errors(self):
            try:
                result = obstore.get(_s3_bucket(self), key)
                return bytes(result.bytes()), result.meta["e_tag"]
            except (obstore.exceptions.NotFoundError, FileNotFoundError):
                return None

    def put_object(
        self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None
    ) -> str | None:
        """Write ``data`` to the object ``key`` in this bucket and return its ETag. Conditional
        (one request, decided by the server): ``if_absent`` only when no object is there,
        ``if_match`` only when the object still has that ETag; None when the condition fails."""
        obstore = _obstore(self)
        errors = obstore.exceptions
        failed: tuple[type[BaseException], ...] = ()
        mode: Any = "overwrite"
        if if_absent:
            mode, failed = "create", (errors.AlreadyExistsError,)
        elif if_match is not None:
            mode = {"e_tag": if_match}
            failed = (errors.PreconditionError, errors.NotFoundError, FileNotFoundError)
        with _s3_errors(self):
            try:
                return obstore.put(_s3_bucket(self), key, data, mode=mode)["e_tag"]
            except failed:
                return None

    def delete_object(self, key: str) -> None:
        """Delete the object ``key`` in this bucket (absent is fine)."""
        with _s3_errors(self):
            _obstore(self).delete(_s3_bucket(self), key)


def _delete_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_zip(source: Location, path: Path) -> None:
    """Pack ``source`` into a zip written beside ``path`` and renamed over it when complete."""
    store = source.open("r")
    prototype = default_buffer_prototype()
    fd, partial = new_partial_file(path)
    try:
        with os.fdopen(fd, "wb") as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
            for key in source.keys():
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


def _s3_bucket(location: S3Location) -> S3Store:
    """One client per bucket, endpoint and credentials (kept: a client per request would
    repeat its set-up)."""
    key = (os.getpid(), location.bucket, tuple(sorted(location.storage_options.items())))
    if key not in _BUCKETS:
        _BUCKETS[key] = _s3_store(location, root=True)
    return _BUCKETS[key]


_BUCKETS: dict[tuple[Any, ...], S3Store] = {}


class _S3ZarrStore(zarr.storage.ObjectStore):  # type: ignore[type-arg]
    """zarr's ``ObjectStore`` whose S3 failures (a timeout, a refused connection, ...) come out
    as one-line ``StoreError``s, as they do from listing; a missing key stays what zarr expects."""

    def __init__(self, store: Any, *, read_only: bool = False, location: S3Location | None = None) -> None:
        super().__init__(store, read_only=read_only)
        self.location = location

    def with_read_only(self, read_only: bool = False) -> _S3ZarrStore:
        return type(self)(self.store, read_only=read_only, location=self.location)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        with self._errors():
            return await super().get(*args, **kwargs)

    async def get_partial_values(self, *args: Any, **kwargs: Any) -> Any:
        with self._errors():
            return await super().get_partial_values(*args, **kwargs)

    async def exists(self, key: str) -> bool:
        with self._errors():
            return await super().exists(key)

    async def set(self, *args: Any, **kwargs: Any) -> None:
        with self._errors():
            await super().set(*args, **kwargs)

    async def set_if_not_exists(self, *args: Any, **kwargs: Any) -> None:
        with self._errors():
            await super().set_if_not_exists(*args, **kwargs)

    async def delete(self, key: str) -> None:
        with self._errors():
            await super().delete(key)

    async def delete_dir(self, prefix: str) -> None:
        with self._errors():
            await super().delete_dir(prefix)

    async def getsize(self, key: str) -> int:
        with self._errors():
            return await super().getsize(key)

    async def getsize_prefix(self, prefix: str) -> int:
        with self._errors():
            return await super().getsize_prefix(prefix)

    def list(self) -> AsyncIterator[str]:  # type: ignore[override]
        return self._listing(super().list())

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        return self._listing(super().list_prefix(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        return self._listing(super().list_dir(prefix))

    async def _listing(self, keys: AsyncIterator[str]) -> AsyncIterator[str]:
        with self._errors():
            async for key in keys:
                yield key

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise
        except Exception as error:
            exceptions = _obstore(self.location).exceptions
            if isinstance(error, exceptions.NotFoundError) or not isinstance(
                error, (exceptions.BaseError, OSError)
            ):
                raise
            raise _s3_error(self.location, error) from None


def _endpoint(location: S3Location) -> str | None:
    """The endpoint from the storage options, else from the environment; None: AWS itself.

    ``ParameterError`` for one that is not an http(s) URL with a host (obstore would panic)."""
    endpoint = location.storage_options.get("endpoint_url")
    if endpoint:
        return _check_endpoint(str(location), endpoint, "the endpoint_url option")
    for name in _ENDPOINT_VARIABLES:
        if os.environ.get(name):
            return _check_endpoint(str(location), os.environ[name], name)
    return None


def _check_endpoint(where: str, endpoint: str, source: str) -> str:
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ParameterError(
            f"{where}: the S3 endpoint {endpoint!r} (from {source}) is not an http(s) URL with a "
            "host; write it like http://host:9000 or https://s3.example.com"
        )
    return endpoint


def positive_seconds(value: str) -> float | None:
    """``value`` as a positive, finite number of seconds; None when it is not one."""
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


def _timeout_seconds(where: str, value: str | None) -> float:
    """The ``timeout`` storage option in seconds (default ``DEFAULT_TIMEOUT_SECONDS``)."""
    if value is None:
        return DEFAULT_TIMEOUT_SECONDS
    seconds = positive_seconds(value)
    if seconds is None:
        raise ParameterError(
            f"{where}: the timeout storage option must be a positive number of seconds, "
            f"got {value!r}; e.g. timeout=30"
        )
    return seconds


def _obstore(location: S3Location) -> ModuleType:
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


def _s3_store(location: S3Location, retries: int = _FEW_RETRIES, *, root: bool = False) -> S3Store:
    """obstore's S3 client on the store's prefix (``root``: on the bucket), every request limited
    by the ``timeout`` option and retried at most ``retries`` times within twice that.

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
        name: value for name, value in location.storage_options.items()
        if name not in ("endpoint_url", "timeout")
    }
    endpoint = _endpoint(location)
    if endpoint:
        config["endpoint"] = endpoint
    timeout = timedelta(seconds=_timeout_seconds(str(location), location.storage_options.get("timeout")))
    retry: RetryConfig = {
        "max_retries": retries,
        "retry_timeout": 2 * timeout,
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": min(timeout, timedelta(seconds=5)),
            "base": 2,
        },
    }
    return _obstore(location).store.S3Store(
        location.bucket,
        prefix=None if root else location.path,
        client_options={
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "timeout": timeout,
            "connect_timeout": min(timeout, timedelta(seconds=5)),
        },
        retry_config=retry,
        **config,
    )


_CREDENTIAL_CODES = (
    "SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "ExpiredToken",
    "InvalidToken", "403 Forbidden",
)


@contextmanager
def _s3_errors(location: S3Location) -> Iterator[None]:
    """Turn obstore's errors into one-line ``StoreError``s naming the URL and the fix."""
    exceptions = _obstore(location).exceptions
    try:
        yield
    except StoreError:  # already one line naming the location (a StoreError is an OSError)
        raise
    except (exceptions.BaseError, OSError) as error:
        raise _s3_error(location, error) from None


def _s3_error(location: S3Location, error: BaseException) -> StoreError:
    """The one-line ``StoreError`` for an obstore error."""
    exceptions = _obstore(location).exceptions
    message = str(error)
    if "NoSuchBucket" in message:
        return StoreError(
            f"{location}: bucket '{location.bucket}' does not exist; create it or fix the URL"
        )
    refused = (exceptions.PermissionDeniedError, exceptions.UnauthenticatedError)
    if isinstance(error, refused) or any(code in message for code in _CREDENTIAL_CODES):
        return StoreError(
            f"{location}: the S3 server refused the credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or the storage options) to a key allowed on this bucket"
        )
    endpoint = _endpoint(location) or "the AWS endpoint"
    if "kind: Timeout" in message or "TimedOut" in message:
        seconds = _timeout_seconds(str(location), location.storage_options.get("timeout"))
        return StoreError(
            f"{location}: the S3 server at {endpoint} did not answer within {seconds:g} s "
            "(tried again, in vain); check the server is up and not overloaded, or raise the "
            f"timeout storage option (timeout=SECONDS); finish an extraction that stopped with {option('resume', True)}"
        )
    if "error sending request" in message:
        return StoreError(
            f"{location}: cannot reach {endpoint}; check the "
            "endpoint (AWS_ENDPOINT_URL or the endpoint_url option) and that the server runs"
        )
    return StoreError(f"{location}: {message.splitlines()[0] if message else type(error).__name__}")
