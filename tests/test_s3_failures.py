"""S3 failures give one line naming the cause and the fix, never a traceback, a panic or a hang:
bad endpoints, prefixes with '.', '..' or '//', and a server that stops answering (a loopback
listener that accepts and never replies, and a proxy to SeaweedFS that goes silent mid-run)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import zarr

from wsizarr import ParameterError, StoreError, extract, open_dataset, store_info
from wsizarr._locations import parse_location
from wsizarr.store._reader import PatchReader

from .helpers import WSIZARR, assert_one_line_error, run
from .test_crash import _extract_args

SILENT = "did not answer within 1 s"


class Proxy:
    """A TCP proxy on 127.0.0.1 to ``upstream``; ``go_silent()`` makes it swallow every byte
    both ways on open and new connections without closing them, like a hung server."""

    def __init__(self, upstream: tuple[str, int] | None) -> None:
        self.upstream = upstream
        self.silent = threading.Event()
        if upstream is None:
            self.silent.set()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def go_silent(self) -> None:
        self.silent.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self.silent.is_set() or self.upstream is None:
                continue  # accepted, never answered
            server = socket.create_connection(self.upstream)
            self._sockets.append(server)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                if not self.silent.is_set():
                    target.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def silent_server():
    proxy = Proxy(None)
    yield proxy
    proxy.close()


@pytest.fixture
def proxy(s3_server):
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)))
    yield proxy
    proxy.close()


def _options(s3_server, endpoint, **extra):
    return {**s3_server.options, "endpoint_url": endpoint, "timeout": "1", **extra}


def _cli_options(options):
    return [f"--storage-option={k}={v}" for k, v in options.items()]


# --- endpoints and prefixes are checked before obstore sees them --------------------------------


@pytest.mark.parametrize("endpoint", ["notaurl", "ftp://host:21", "http://", "http://host:port", "127.0.0.1:9000"])
def test_a_bad_endpoint_in_the_environment_is_one_line(endpoint):
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    result = run("info", "s3://bucket/x.zarr", env=env, timeout=60, expect=1)
    assert_one_line_error(result, f"the S3 endpoint {endpoint!r} (from AWS_ENDPOINT_URL)", "http://host:9000")
    assert "panicked" not in result.stderr


@pytest.mark.parametrize("endpoint", ["notaurl", "ftp://host:21", "http://", "https://host:99999"])
def test_a_bad_endpoint_option_is_refused_when_parsed(endpoint):
    with pytest.raises(ParameterError, match="from the endpoint_url option.*not an http"):
        parse_location("s3://bucket/x.zarr", {"endpoint_url": endpoint})
    result = run("info", "s3://bucket/x.zarr", f"--storage-option=endpoint_url={endpoint}", expect=1)
    assert_one_line_error(result, "is not an http(s) URL with a host")


@pytest.mark.parametrize("url", ["s3://bucket/a/../b", "s3://bucket/./a", "s3://bucket/a//b",
                                 "s3://bucket/a/..", "s3://bucket//a"])
def test_prefixes_with_dot_segments_or_empty_segments_are_refused(url, aperio_even_case):
    with pytest.raises(ParameterError, match="S3 keys are not paths.*s3://bucket/a/b.zarr"):
        parse_location(url)
    assert_one_line_error(run(*_extract_args(aperio_even_case, url), expect=1), url, "'..' and '//'")


def test_plain_prefixes_still_parse():
    assert parse_location("s3://bucket/a/b.zarr/").path == "a/b.zarr"
    assert parse_location("s3://bucket/a.b/c..d/x.zarr").path == "a.b/c..d/x.zarr"


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
def test_the_timeout_option_must_be_positive_seconds(value):
    with pytest.raises(ParameterError, match=f"timeout storage option.*{value!r}"):
        parse_location("s3://bucket/x.zarr", {"timeout": value})


# --- a server that accepts connections and never answers ----------------------------------------


def _timed(call):
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def _without_warnings(result):
    """``result`` with its ``wsizarr: warning:`` lines (a lock left behind) left out of stderr."""
    kept = [line for line in result.stderr.splitlines(True) if not line.startswith("wsizarr: warning:")]
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout, "".join(kept))


def test_silent_server_info_and_extract_give_one_line_in_seconds(s3_server, silent_server, aperio_even_case):
    options = _cli_options(_options(s3_server, silent_server.endpoint))
    url = s3_server.url("silent.zarr")
    info, seconds = _timed(lambda: run("info", url, *options, expect=1))
    assert_one_line_error(info, url, SILENT, "check the server", "timeout=SECONDS")
    assert seconds < 20
    extracted, seconds = _timed(lambda: run(*_extract_args(aperio_even_case, url), *options, expect=1))
    assert_one_line_error(extracted, url, SILENT)
    assert seconds < 20


def test_silent_server_reading_raises_store_error(s3_server, silent_server):
    options = _options(s3_server, silent_server.endpoint)
    url = s3_server.url("silent.zarr")
    store = parse_location(url, options).open("r", check=False)  # zarr's own path, no listing
    for call in (lambda: open_dataset(url, storage_options=options),
                 lambda: PatchReader(url, storage_options=options),
                 lambda: store_info(parse_location(url, options)),
                 lambda: zarr.open_group(store, mode="r")):
        start = time.monotonic()
        with pytest.raises(StoreError, match=SILENT) as info:
            call()
        assert time.monotonic() - start < 10 and "\n" not in str(info.value)


def test_a_server_going_silent_while_reading_raises_store_error(s3_server, proxy, aperio_even_case):
    url = s3_server.url("proxied-read.zarr")
    extract(aperio_even_case.slide, aperio_even_case.annotations, url, storage_options=s3_server.options,
            level=0, patch_size=64, per_annotation=5, shard_size=8)
    options = _options(s3_server, proxy.endpoint)
    reader = PatchReader(url, storage_options=options)
    first = reader.read_patches([0, 1])
    dataset = open_dataset(url, storage_options=options)
    table_patches = dataset.patches
    proxy.go_silent()
    for call in (lambda: reader.read_patches([2, 30]), lambda: reader.read_shard(3),
                 lambda: np.asarray(table_patches[10:20].values)):
        start = time.monotonic()
        with pytest.raises(StoreError, match=SILENT):
            call()
        assert time.monotonic() - start < 15
    assert first.shape == (2, 64, 64, 3)


def test_a_server_going_silent_mid_extract_leaves_a_resumable_store(s3_server, proxy, aperio_even_case):
    url = s3_server.url("proxied-write.zarr")
    direct = parse_location(url, s3_server.options)
    options = _cli_options(_options(s3_server, proxy.endpoint))
    process = subprocess.Popen([WSIZARR, *map(str, _extract_args(aperio_even_case, url, "--workers", "1")), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(direct.keys("_shards_done/c/")) < 2:
        time.sleep(0.02)
    assert process.poll() is None, "the extraction finished before the server went silent"
    proxy.go_silent()
    silenced = time.monotonic()
    out, err = process.communicate(timeout=60)
    assert time.monotonic() - silenced < 30
    assert_one_line_error(_without_warnings(subprocess.CompletedProcess([], process.returncode, out, err)), url, SILENT)
    info = store_info(direct)
    assert not info["complete"] and info["shards_done"] >= 2
    run(*_extract_args(aperio_even_case, url, "--resume"), *_cli_options(s3_server.options))
    assert store_info(direct)["complete"]
