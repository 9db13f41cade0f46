"""One writer per store: a lock beside the store, held from before a writer creates, deletes or
resizes anything until the store is finalised.

The lock is keyed on the location the user named (``--out``; for a ``.zip`` target the zip):

* on a local disk, the file ``<out>.lock`` held with ``flock``: the kernel releases it when the
  holder dies, so a killed writer never blocks the next one. The file names its holder (JSON)
  and is removed on release;
* on S3, the object ``<prefix>.lock`` written with a conditional PUT (``If-None-Match: *``,
  which SeaweedFS and AWS honour), holding ``{token, host, pid, started, heartbeat}``. The
  holder rewrites the heartbeat in a background thread (``If-Match`` its last ETag). A lock is
  stale when its holder ran on this host and its process is gone, or when its heartbeat is older
  than the lease (``WSIZARR_LOCK_LEASE_SECONDS``, default 120 s); a new writer then takes it over
  (again conditionally) and warns. ``WriterLock.check`` tells the holder, before it finalises the
  store, whether its lock is still its own.

``break_lock`` (``wsizarr unlock``) removes a lock by hand.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from .._errors import ParameterError, StoreError, StoreLockedError, option
from .._locations import Location, S3Location, positive_seconds

__all__ = [
    "LEASE_ENV", "Holder", "StaleLockWarning", "WriterLock", "break_lock", "lock_name",
    "writer_lock",
]

LEASE_ENV = "WSIZARR_LOCK_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 120.0
_MARK = "wsizarr-writer-lock"  # every lock wsizarr writes says so: it never removes anything else
_ATTEMPTS = 20


class StaleLockWarning(UserWarning):
    """A writer took over the lock of a writer that is gone."""


def _machine() -> str:
    """This boot of this machine and this pid namespace: where a pid means one process (two
    containers may share a host name, never both)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}/{namespace}"


@dataclass(frozen=True)
class Holder:
    """Who holds a lock."""

    token: str
    host: str
    pid: int
    started: float  # seconds since the epoch
    heartbeat: float
    machine: str = ""  # ``_machine()`` of the holder

    @classmethod
    def me(cls, token: str | None = None, started: float | None = None) -> Holder:
        now = time.time()
        return cls(token or uuid.uuid4().hex, socket.gethostname(), os.getpid(), started or now,
                   now, _machine())

    def to_bytes(self) -> bytes:
        return json.dumps({"lock": _MARK, **asdict(self)}).encode()

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        """The holder a lock's content names; None when it is not a wsizarr lock."""
        try:
            fields = json.loads(data)
            if fields.get("lock") != _MARK:
                return None
            return cls(str(fields["token"]), str(fields["host"]), int(fields["pid"]),
                       float(fields["started"]), float(fields["heartbeat"]), str(fields.get("machine", "")))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def describe(self, heartbeat: bool = False) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        beat = f", last heartbeat {max(0.0, time.time() - self.heartbeat):.0f} s ago" if heartbeat else ""
        return f"host {self.host}, pid {self.pid}, since {since}{beat}"


class WriterLock(ABC):
    """A held lock: ``check()`` raises ``StoreLockedError`` if it is no longer this writer's."""

    location: Location

    @abstractmethod
    def check(self) -> None: ...

    @abstractmethod
    def release(self) -> None: ...


@contextmanager
def writer_lock(location: Location) -> Iterator[WriterLock]:
    """Hold the writer lock of ``location`` (as the user named it) for the ``with`` block.

    ``StoreLockedError`` naming the holder and the fix when another live writer holds it.
    """
    lock: WriterLock = (
        _S3Lock.acquire(location) if isinstance(location, S3Location) else _LocalLock.acquire(location)
    )
    try:
        yield lock
    finally:
        lock.release()


def lock_name(location: Location) -> str:
    """Where the lock of ``location`` lives: a file path or an ``s3://`` URL."""
    if isinstance(location, S3Location):
        return f"s3://{location.bucket}/{_s3_key(location)}"
    return str(_lock_path(location))


def break_lock(location: Location) -> str | None:
    """Remove the lock of ``location`` by hand; returns whom it named (None: there was none).

    A local lock held by a running process is refused (``StoreLockedError``): the kernel says
    that writer lives. An S3 lock is removed whoever holds it.
    """
    if isinstance(location, S3Location):
        return _S3Lock.break_(location)
    return _LocalLock.break_(location)


def lease_seconds() -> float:
    """The S3 lease: ``WSIZARR_LOCK_LEASE_SECONDS``, default 120."""
    value = os.environ.get(LEASE_ENV)
    if not value:
        return DEFAULT_LEASE_SECONDS
    seconds = positive_seconds(value)
    if seconds is None:
        raise ParameterError(f"{LEASE_ENV}={value!r}: write a positive number of seconds, e.g. 120")
    return seconds


def _locked(location: Location, holder: Holder | None, heartbeat: bool, fix: str) -> StoreLockedError:
    who = holder.describe(heartbeat) if holder else "holder not yet known"
    return StoreLockedError(
        f"{location}: another wsizarr writer is using this store ({who}; lock {lock_name(location)}); {fix}"
    )


# --- local disk: flock on <out>.lock --------------------------------------------------------------


def _lock_path(location: Location) -> Path:
    path = Path(os.path.abspath(location.path))
    return path.with_name(f"{path.name}.lock")


def _read(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)


class _LocalLock(WriterLock):
    def __init__(self, location: Location, path: Path, fd: int) -> None:
        self.location, self.path, self._fd = location, path, fd

    @classmethod
    def acquire(cls, location: Location) -> _LocalLock:
        path = _lock_path(location)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # as the store itself would be
        except OSError as error:
            raise StoreError(f"{location}: cannot create {path.parent} ({error.strerror}); check the path") from None
        for _ in range(_ATTEMPTS):
            opened = _open(location, path, create=True)
            if opened is None:
                continue  # removed between two calls: try again
            created, fd = opened
            previous = cls._hold(location, path, fd, created, "wait for it to finish, or stop it")
            if previous is None:
                continue
            if previous is not False:  # a file left by a writer that died: the kernel let go
                warnings.warn(
                    f"{location}: took over the lock left by a writer that is gone "
                    f"({previous.describe()})", StaleLockWarning, stacklevel=3,
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, Holder.me().to_bytes(), 0)
            return cls(location, path, fd)
        raise StoreLockedError(f"{location}: the lock {path} keeps changing hands; try again")

    @staticmethod
    def _hold(location: Location, path: Path, fd: int, created: bool, fix: str) -> Holder | bool | None:
        """flock ``fd`` and check ``path`` still names it; the holder a reused file named (False
        for a fresh one), None to try again. Closes ``fd`` unless it returns a holder or False."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.parse(_read(fd))
            os.close(fd)
            raise _locked(location, holder, False, fix) from None
        if not _names(path, fd):  # removed (or replaced) by its holder before we got it
            os.close(fd)
            return None
        if created:
            return False
        content = _read(fd)
        holder = Holder.parse(content)
        if content and holder is None:
            os.close(fd)
            raise StoreError(
                f"{location}: {path} exists and is not a wsizarr lock; move it away (wsizarr "
                "keeps its writer lock there)"
            )
        return holder or False

    def check(self) -> None:
        if not _names(self.path, self._fd):
            raise StoreLockedError(
                f"{self.location}: this writer's lock {self.path} was removed while it ran, so "
                "another writer may have used the store; the store was not finalised: check no "
                f"other writer runs, then rerun with {option('resume', True)}"
            )

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            if _names(self.path, self._fd):  # unlink while holding it: a waiter then retries
                self.path.unlink()
        finally:
            os.close(self._fd)
            self._fd = -1

    @classmethod
    def break_(cls, location: Location) -> str | None:
        path = _lock_path(location)
        for _ in range(_ATTEMPTS):
            opened = _open(location, path, create=False)
            if opened is None:
                return None
            _, fd = opened
            fix = "that process is running, so the lock is not stale: stop it first if it must go"
            held = cls._hold(location, path, fd, False, fix)
            if held is None:
                continue
            try:
                path.unlink()
            finally:
                os.close(fd)
            return held.describe() if held else "an empty lock file"
        raise StoreLockedError(f"{location}: the lock {path} keeps changing hands; try again")


def _open(location: Location, path: Path, *, create: bool) -> tuple[bool, int] | None:
    """``(created, fd)`` of the lock file; None if it vanished (or, without ``create``, is absent)."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        if create:
            try:
                return True, os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
        return False, os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as error:  # a directory, a symlink, no permission
        raise StoreError(
            f"{location}: cannot use {path} as its writer lock ({error.strerror}); move it away "
            "or make the folder writable"
        ) from None


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        here, mine = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev)


# --- S3: a conditionally written object <prefix>.lock with a heartbeat ---------------------------


def _s3_key(location: S3Location) -> str:
    return f"{location.path}.lock"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stale(holder: Holder, lease: float) -> str | None:
    """Why ``holder``'s lock is stale, or None if it is live."""
    here = holder.host == socket.gethostname() and holder.machine == _machine()
    if here and not _alive(holder.pid):
        return f"process {holder.pid} on this host is gone"
    age = time.time() - holder.heartbeat
    if age > lease:
        return f"no heartbeat for {age:.0f} s, more than the {lease:g} s lease"
    return None


class _S3Lock(WriterLock):
    def __init__(self, location: S3Location, holder: Holder, e_tag: str | None, lease: float) -> None:
        self.location, self.holder, self.lease = location, holder, lease
        self._key = _s3_key(location)
        self._e_tag = e_tag
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"wsizarr-lock {location}", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(cls, location: S3Location) -> _S3Lock:
        lease = lease_seconds()
        key = _s3_key(location)
        for _ in range(_ATTEMPTS):
            mine = Holder.me()
            e_tag = location.put_object(key, mine.to_bytes(), if_absent=True)
            if e_tag is not None:
                return cls(location, mine, e_tag, lease)
            current = cls._get(location)
            if current is None:
                continue  # released meanwhile
            holder, e_tag = current
            if holder is not None and holder.token == mine.token:  # our PUT landed, its answer was lost
                return cls(location, mine, e_tag, lease)
            if holder is None:
                raise StoreLockedError(
                    f"{location}: {lock_name(location)} is not a wsizarr lock; remove it with "
                    f"`wsizarr unlock {location}` if nothing writes this store"
                )
            why = _stale(holder, lease)
            if why is None:
                raise _locked(
                    location, holder, True,
                    f"wait for it to finish, or if that process is gone run `wsizarr unlock {location}`",
                )
            taken = location.put_object(key, mine.to_bytes(), if_match=e_tag)
            if taken is None:
                continue  # refreshed, released or taken by another writer meanwhile
            warnings.warn(
                f"{location}: took over a stale lock ({holder.describe(True)}: {why})",
                StaleLockWarning, stacklevel=3,
            )
            return cls(location, mine, taken, lease)
        raise StoreLockedError(f"{location}: the lock {lock_name(location)} keeps changing hands; try again")

    @staticmethod
    def _get(location: S3Location) -> tuple[Holder | None, str | None] | None:
        found = location.get_object(_s3_key(location))
        return None if found is None else (Holder.parse(found[0]), found[1])

    def _beat(self) -> None:
        """Rewrite the heartbeat every quarter lease, if the lock is still ours."""
        refreshed = time.monotonic()
        while not self._stop.wait(self.lease / 4):
            beat = Holder.me(self.holder.token, self.holder.started)
            try:
                e_tag = self.location.put_object(self._key, beat.to_bytes(), if_match=self._e_tag)
            except Exception as error:  # a passing network fault: try again, within the lease
                if time.monotonic() - refreshed > self.lease:
                    cause = str(error).removeprefix(f"{self.location}: ").splitlines()[0]
                    self._lost = f"its heartbeat could not be written for the whole lease ({cause})"
                    return
                continue
            if e_tag is None:
                self._lost = "another writer took it over or it was removed (`wsizarr unlock`)"
                return
            self._e_tag, refreshed = e_tag, time.monotonic()

    def check(self) -> None:
        reason = self._lost
        if reason is None:
            current = self._get(self.location)
            if current is None:
                reason = "it was removed (`wsizarr unlock`)"
            elif current[0] is None or current[0].token != self.holder.token:
                other = current[0].describe(True) if current[0] else "not a wsizarr lock"
                reason = f"another writer took it over ({other})"
        if reason is not None:
            raise StoreLockedError(
                f"{self.location}: this writer lost its lock: {reason}; the store was not "
                f"finalised: make sure no other writer runs, then rerun with {option('resume', True)}"
            )

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            current = self._get(self.location)
            if current is not None and current[0] is not None and current[0].token == self.holder.token:
                self.location.delete_object(self._key)
        except StoreError as error:
            cause = str(error).removeprefix(f"{self.location}: ").split(";")[0]
            warnings.warn(
                f"{self.location}: could not remove its lock {lock_name(self.location)} ({cause}); "
                "the next writer on this host takes it over at once, elsewhere after "
                f"{self.lease:g} s; or run `wsizarr unlock`", StaleLockWarning, stacklevel=3,
            )

    @classmethod
    def break_(cls, location: S3Location) -> str | None:
        current = cls._get(location)
        if current is None:
            return None
        location.delete_object(_s3_key(location))
        return current[0].describe(True) if current[0] else "an object that is not a wsizarr lock"
