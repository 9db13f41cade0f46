"""One writer per store: real concurrent `wsizarr extract` processes on one --out, locally and
on S3 (SeaweedFS), stale locks (killed writers, expired leases) and `wsizarr unlock`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings

import pytest

from wsizarr import StoreLockedError, WsizarrError, store_info
from wsizarr.store._lock import Holder, StaleLockWarning, break_lock, lock_name, writer_lock
from wsizarr._locations import parse_location

from .helpers import WSIZARR, assert_one_line_error, assert_same_store, run
from .test_crash import _extract_args, start_and_kill

LOCKED = "another wsizarr writer is using this store"


def _together(*commands, env=None):
    """Start every ``wsizarr`` command at once; their finished ``CompletedProcess``es."""
    processes = [
        subprocess.Popen([WSIZARR, *map(str, args)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for args in commands
    ]
    results = []
    for args, process in zip(commands, processes):
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return results


def _one_winner(results, *fragments):
    """Exactly one run succeeded and every other one said, in one line, that the store is locked."""
    codes = sorted(r.returncode for r in results)
    assert codes == [0] + [1] * (len(results) - 1), [(r.stdout, r.stderr) for r in results]
    for loser in (r for r in results if r.returncode == 1):
        assert_one_line_error(loser, LOCKED, *fragments)
    return next(r for r in results if r.returncode == 0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, aperio_even_case):
    """The store a single run makes (seed 11, as ``_extract_args``)."""
    out = tmp_path_factory.mktemp("reference") / "reference.zarr"
    run(*_extract_args(aperio_even_case, out))
    return out


@pytest.fixture(scope="module")
def reference_seed_12(tmp_path_factory, aperio_even_case):
    out = tmp_path_factory.mktemp("reference") / "seed12.zarr"
    run(*_extract_args(aperio_even_case, out), "--seed", "12")
    return out


def _two_plans(case, out):
    """Two --overwrite runs of one store with different plans (seeds 11 and 12)."""
    args = _extract_args(case, out, "--overwrite", "--workers", "1")
    return args, [*args, "--seed", "12"]


def _s3_env(s3_server, **extra):
    return {
        **os.environ, "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": "us-east-1", **extra,
    }


def _lock_object(location):
    found = location.get_object(f"{location.path}.lock")
    return None if found is None else json.loads(found[0])


def _put_lock(location, **fields):
    now = time.time()
    body = {"lock": "wsizarr-writer-lock", "token": "someone-else", "host": "elsewhere",
            "pid": 1, "started": now, "heartbeat": now, **fields}
    location.put_object(f"{location.path}.lock", json.dumps(body).encode())


# --- local disk ---------------------------------------------------------------------------------


def test_two_overwrites_at_once_on_a_local_store(tmp_path, aperio_even_case, reference, reference_seed_12):
    out = tmp_path / "both.zarr"
    results = _together(*_two_plans(aperio_even_case, out))
    winner = _one_winner(results, str(out), "pid ")
    assert "800 patches" in winner.stdout
    # the store is the winner's plan, whole: not a mix of both
    assert_same_store(reference if results[0] is winner else reference_seed_12, out)
    assert not (tmp_path / "both.zarr.lock").exists()  # released and removed


def test_two_resumes_of_a_killed_run(tmp_path, aperio_even_case, reference):
    out = tmp_path / "killed.zarr"
    markers = out / "_shards_done" / "c"
    start_and_kill(_extract_args(aperio_even_case, out, "--workers", "1"),
                   when=lambda: markers.is_dir() and sum(1 for _ in markers.iterdir()) >= 2)
    lock_file = tmp_path / "killed.zarr.lock"
    assert json.loads(lock_file.read_text())["pid"] > 0  # the killed writer's lock file stays...
    args = _extract_args(aperio_even_case, out, "--resume", "--workers", "1")
    winner = _one_winner(_together(args, args), str(out))  # ...and blocks no one: flock died with it
    assert "KeyError" not in winner.stderr and "Traceback" not in winner.stderr
    assert "took over the lock left by a writer that is gone" in winner.stderr
    assert store_info(out)["complete"]
    assert_same_store(reference, out)
    assert not lock_file.exists()


def test_a_held_lock_blocks_extract_and_pack_with_one_line(tmp_path, aperio_even_case, reference):
    for out in (tmp_path / "held.zarr", tmp_path / "held.zip"):
        with writer_lock(parse_location(out)) as lock:
            result = run(*_extract_args(aperio_even_case, out), expect=1)
            assert_one_line_error(result, str(out), f"pid {os.getpid()}", socket.gethostname(),
                                  "wait for it to finish")
            lock.check()
        assert not out.exists() and not (tmp_path / f"{out.name}.partial.zarr").exists()
        assert not (tmp_path / f"{out.name}.lock").exists()
    packed = tmp_path / "packed.zip"
    with writer_lock(parse_location(packed)):
        assert_one_line_error(run("pack", reference, packed, expect=1), LOCKED)
    assert not packed.exists()
    run("pack", reference, packed)


def test_same_process_cannot_take_a_lock_twice(tmp_path):
    location = parse_location(tmp_path / "twice.zarr")
    with writer_lock(location):
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            with writer_lock(location):
                pass
    with writer_lock(location):  # released: free again
        pass


def test_a_lock_path_that_is_not_a_wsizarr_lock_is_never_touched(tmp_path, aperio_even_case):
    out = tmp_path / "mine.zarr"
    precious = tmp_path / "mine.zarr.lock"
    precious.write_text("my notes")
    assert_one_line_error(run(*_extract_args(aperio_even_case, out), expect=1), "is not a wsizarr lock", "move it away")
    assert precious.read_text() == "my notes" and not out.exists()
    assert_one_line_error(run("unlock", out, expect=1), "is not a wsizarr lock")
    assert precious.read_text() == "my notes"
    precious.unlink()
    precious.mkdir()
    assert_one_line_error(run(*_extract_args(aperio_even_case, out), expect=1), "cannot use", "as its writer lock")
    assert precious.is_dir()


def test_unlock_local(tmp_path):
    out = tmp_path / "u.zarr"
    script = ("import os, sys; from wsizarr.store._lock import writer_lock; from wsizarr._locations import "
              "parse_location\nwith writer_lock(parse_location(sys.argv[1])): os._exit(0)")
    subprocess.run([sys.executable, "-c", script, str(out)], check=True)  # dies holding it: file stays
    assert (tmp_path / "u.zarr.lock").exists()
    result = run("unlock", out)
    assert "removed the writer lock" in result.stdout and "pid " in result.stdout
    assert not (tmp_path / "u.zarr.lock").exists()
    assert "no writer lock" in run("unlock", out).stdout
    with writer_lock(parse_location(out)) as lock:  # a live holder is not broken
        assert_one_line_error(run("unlock", out, expect=1), "that process is running", f"pid {os.getpid()}")
        lock.check()


def test_check_fails_once_the_lock_file_is_gone(tmp_path):
    location = parse_location(tmp_path / "c.zarr")
    with writer_lock(location) as lock:
        lock.check()
        os.unlink(lock_name(location))
        with pytest.raises(StoreLockedError, match="was removed while it ran.*resume=True"):
            lock.check()


# --- S3 -----------------------------------------------------------------------------------------


def test_two_overwrites_at_once_on_s3(s3_server, aperio_even_case, reference, reference_seed_12):
    url = s3_server.url("lock-both.zarr")
    results = _together(*_two_plans(aperio_even_case, url), env=_s3_env(s3_server))
    winner = _one_winner(results, url, "wsizarr unlock")
    assert "800 patches" in winner.stdout
    location = parse_location(url, s3_server.options)
    expected = reference if results[0] is winner else reference_seed_12
    assert_same_store(expected, location)
    assert _lock_object(location) is None


def test_a_killed_s3_writer_does_not_block_resume(s3_server, aperio_even_case, reference):
    url = s3_server.url("lock-killed.zarr")
    location = parse_location(url, s3_server.options)
    env = _s3_env(s3_server)
    start_and_kill(_extract_args(aperio_even_case, url, "--workers", "1"), env,
                   when=lambda: len(location.keys("_shards_done/c/")) >= 2, interval=0.02)
    left = _lock_object(location)
    assert left["host"] == socket.gethostname() and left["machine"]  # same host, dead pid: stale at once
    args = _extract_args(aperio_even_case, url, "--resume", "--workers", "1")
    winner = _one_winner(_together(args, args, env=env), url)
    assert "Traceback" not in winner.stderr
    assert f"took over a stale lock (host {left['host']}, pid {left['pid']}" in winner.stderr
    assert f"process {left['pid']} on this host is gone" in winner.stderr
    assert_same_store(reference, location)
    assert _lock_object(location) is None


def test_a_live_lock_on_s3_blocks_and_an_expired_lease_is_taken_over(s3_server, aperio_even_case):
    url = s3_server.url("lock-leased.zarr")
    location = parse_location(url, s3_server.options)
    args = [*_extract_args(aperio_even_case, url), "--per-annotation", "2"]
    _put_lock(location, heartbeat=time.time() - 10)  # another host, heartbeat 10 s ago
    blocked = run(*args, env=_s3_env(s3_server), expect=1)
    assert_one_line_error(blocked, url, "host elsewhere, pid 1", "last heartbeat 1", f"wsizarr unlock {url}")
    assert location.keys() == [] and _lock_object(location)["token"] == "someone-else"
    taken = run(*args, env=_s3_env(s3_server, WSIZARR_LOCK_LEASE_SECONDS="5"))
    assert "wsizarr: warning:" in taken.stderr and "took over a stale lock (host elsewhere, pid 1" in taken.stderr
    assert "more than the 5 s lease" in taken.stderr
    assert store_info(location)["complete"] and _lock_object(location) is None


def test_a_live_process_holding_the_s3_lock_blocks_the_cli(s3_server, aperio_even_case):
    url = s3_server.url("lock-live.zarr")
    location = parse_location(url, s3_server.options)
    with writer_lock(location) as lock:
        held = _lock_object(location)
        assert held["pid"] == os.getpid() and held["token"] == lock.holder.token
        result = run(*_extract_args(aperio_even_case, url, "--overwrite"), env=_s3_env(s3_server), expect=1)
        assert_one_line_error(result, LOCKED, f"pid {os.getpid()}", "since ")
        lock.check()
    assert _lock_object(location) is None


def test_heartbeat_and_a_lost_lock_on_s3(s3_server, monkeypatch):
    monkeypatch.setenv("WSIZARR_LOCK_LEASE_SECONDS", "0.8")
    location = parse_location(s3_server.url("lock-beat.zarr"), s3_server.options)
    with writer_lock(location) as lock:
        first = _lock_object(location)["heartbeat"]
        time.sleep(0.6)
        assert _lock_object(location)["heartbeat"] > first  # refreshed every quarter lease
        lock.check()
        _put_lock(location, token="thief")  # another writer took it over
        time.sleep(0.4)  # the next heartbeat finds an ETag it did not write
        with pytest.raises(StoreLockedError, match="lost its lock: another writer took it over.*resume=True"):
            lock.check()
    assert _lock_object(location)["token"] == "thief"  # release never removes another's lock
    break_lock(location)
    with writer_lock(location) as lock:
        break_lock(location)
        with pytest.raises(StoreLockedError, match="it was removed"):
            lock.check()


def test_unlock_on_s3(s3_server):
    url = s3_server.url("lock-unlock.zarr")
    location = parse_location(url, s3_server.options)
    options = [f"--storage-option={k}={v}" for k, v in s3_server.options.items()]
    _put_lock(location, host="gone-host", pid=4242)
    result = run("unlock", url, *options)
    assert f"removed the writer lock {url}.lock (host gone-host, pid 4242" in result.stdout
    assert _lock_object(location) is None
    assert "no writer lock" in run("unlock", url, *options).stdout
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleLockWarning)  # a fresh lock: no warning
        with writer_lock(location):
            pass


def test_a_lock_object_that_is_not_a_wsizarr_lock_is_refused(s3_server):
    location = parse_location(s3_server.url("lock-foreign.zarr"), s3_server.options)
    location.put_object("lock-foreign.zarr.lock", b"someone's data")
    with pytest.raises(StoreLockedError, match="is not a wsizarr lock; remove it with `wsizarr unlock"):
        with writer_lock(location):
            pass
    assert break_lock(location) == "an object that is not a wsizarr lock"


def test_lease_must_be_a_positive_number(s3_server, monkeypatch):
    monkeypatch.setenv("WSIZARR_LOCK_LEASE_SECONDS", "soon")
    with pytest.raises(WsizarrError, match="WSIZARR_LOCK_LEASE_SECONDS='soon'"):
        with writer_lock(parse_location(s3_server.url("lock-lease.zarr"), s3_server.options)):
            pass


def test_holder_parse_refuses_foreign_content():
    assert Holder.parse(b"{}") is None and Holder.parse(b"not json") is None and Holder.parse(b"[1]") is None
    mine = Holder.me()
    assert Holder.parse(mine.to_bytes()) == mine


def test_a_dead_pid_in_another_container_with_our_host_name_is_not_stale_at_once(s3_server):
    location = parse_location(s3_server.url("lock-container.zarr"), s3_server.options)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(gone.stdout)
    _put_lock(location, host=socket.gethostname(), pid=dead_pid, machine="another-boot/4026531836")
    with pytest.raises(StoreLockedError, match=f"pid {dead_pid}"):
        with writer_lock(location):
            pass
    _put_lock(location, host=socket.gethostname(), pid=dead_pid, machine=Holder.me().machine)
    with pytest.warns(StaleLockWarning, match=f"process {dead_pid} on this host is gone"):
        with writer_lock(location) as lock:
            lock.check()


def test_a_local_lock_creates_missing_folders_like_the_store(tmp_path):
    location = parse_location(tmp_path / "new" / "folder" / "x.zarr")
    with writer_lock(location):
        assert (tmp_path / "new" / "folder" / "x.zarr.lock").is_file()
    assert list((tmp_path / "new" / "folder").iterdir()) == []
