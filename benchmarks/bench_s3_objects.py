"""What the five quality arrays cost on S3: objects, requests, bytes and time per store.

A store's extraction writes, for each shard of 256 patches, the ``patches`` shard and one chunk of
each quality array (``tissue_fraction``, ``sharpness``, ``pen_fraction``, ``brightness``,
``saturation``: five float32 arrays chunked a shard at a time), plus a ``_shards_done`` marker that
finalising deletes again. This script extracts one plan (``wsizarr.extract``, public API) with
``quality=True`` and ``quality=False`` into ``s3://`` on a loopback SeaweedFS (tests/s3server.py)
and into a local directory, alternating, and reports per store: the objects it holds (the prefix
listed; files for the local store), their bytes, wall time and patches/s (medians of
``--repeats`` runs). One more run of each S3 configuration goes through a counting relay (a TCP
relay on 127.0.0.1 that reads each HTTP request line and passes every byte on unchanged) and
counts the requests by kind (single PUT, multipart create / part / complete, GET, HEAD, LIST,
DELETE) and by key (patches shard, quality chunk, done marker, metadata, ...). It also times a
single small PUT (a quality chunk's size) against the same server, and works out what one
``(N, 5)`` quality array chunked per shard (5 objects a shard -> 1) would save: objects, PUT
requests, seconds at the measured PUT latency and dollars at a PUT price for a 1M-patch store.

The slide is bench_load.py's: the Aperio-style 40,960 x 30,720 benchmark slide of real H&E tiles
(``bench_extract.make_slide``, cached in benchmarks/out/), 84 jittered 256-px patches around
each of its 120 annotations at level 1 (10,080 patches, 40 shards), 2 worker threads.

Run from the repository root:  python benchmarks/bench_s3_objects.py
(``--quick``: the small slide, one run each; results go to benchmarks/RESULTS.md between this
script's markers unless ``--no-write-results``.)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # the tests package, for its S3 server helper
from bench_extract import OUT, cached_slide, write_results_section  # noqa: E402

import wsizarr  # noqa: E402
from tests.s3server import S3Server, seaweedfs  # noqa: E402

QUALITY = tuple(wsizarr.QUALITY_MEASURES)
TIER1 = ("PUT object", "PUT part", "POST create multipart", "POST complete multipart", "COPY", "LIST", "POST other")
MILLION = 1_000_000


# --- counting the requests --------------------------------------------------------------------


def key_kind(key: str, prefix: str) -> str:
    """What an object key of the store under ``prefix`` is."""
    if key == f"{prefix}.lock":
        return "writer lock"
    if not key.startswith(prefix + "/"):
        return "outside the store"
    first = key[len(prefix) + 1:].partition("/")[0]
    if key.endswith("zarr.json"):
        return "metadata (zarr.json)"
    if first == "patches":
        return "patches shard"
    if first in QUALITY:
        return "quality chunk"
    if first == "_shards_done":
        return "shard-done marker"
    if first in ("slides", "annotations"):
        return "slide/annotation tables"
    return "1-D patch arrays"


class RequestCounter:
    """A TCP relay on 127.0.0.1 in front of the S3 server that counts the HTTP requests passing
    through it, by kind of request and kind of key; it reads only the request line, the headers
    and the body's framing, and passes every byte on unchanged (responses untouched)."""

    def __init__(self, server: S3Server, prefix: str) -> None:
        upstream = urllib.parse.urlsplit(server.endpoint)
        self.host, self.port, self.bucket, self.prefix = upstream.hostname, upstream.port, server.bucket, prefix
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.body_bytes: collections.Counter[tuple[str, str]] = collections.Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: set[asyncio.Task] = set()

    def __enter__(self) -> RequestCounter:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, "127.0.0.1", 0), self._loop).result()
        self.endpoint = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _kind(self, method: str, target: str, headers: dict[str, str]) -> tuple[str, str]:
        path, _, query = target.partition("?")
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        key = urllib.parse.unquote(path.lstrip("/"))
        key = key[len(self.bucket) + 1:] if key.startswith(self.bucket + "/") else ""
        if method == "PUT":
            kind = ("COPY" if "x-amz-copy-source" in headers else
                    "PUT part" if "partNumber" in params else "PUT object")
        elif method == "POST":
            kind = ("POST create multipart" if "uploads" in params else
                    "POST complete multipart" if "uploadId" in params else
                    "DELETE (batch)" if "delete" in params else "POST other")
        elif method == "GET" and not key:
            kind = "LIST"
        else:
            kind = method
        return kind, ("listing" if kind == "LIST" else "batch" if not key else key_kind(key, self.prefix))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        upstream_reader, upstream = await asyncio.open_connection(self.host, self.port)
        back = asyncio.ensure_future(self._pipe(upstream_reader, writer))
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *rest = head.decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ", 2)
                headers = {name.strip().lower(): value.strip()
                           for name, _, value in (h.partition(":") for h in rest if ":" in h)}
                kind = self._kind(method, target, headers)
                self.requests[kind] += 1
                upstream.write(head)
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    self.body_bytes[kind] += await self._relay_chunked(reader, upstream)
                else:
                    remaining = int(headers.get("content-length", 0))
                    self.body_bytes[kind] += remaining
                    while remaining:
                        data = await reader.read(min(remaining, 1 << 20))
                        if not data:
                            raise ConnectionResetError
                        upstream.write(data)
                        remaining -= len(data)
                        await upstream.drain()
                await upstream.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            upstream.close()
            back.cancel()
            await asyncio.gather(back, return_exceptions=True)
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _relay_chunked(reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> int:
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            upstream.write(line)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    upstream.write(trailer)
                upstream.write(b"\r\n")
                return total
            upstream.write(await reader.readexactly(size + 2))
            total += size

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


# --- one extraction ---------------------------------------------------------------------------


def _bucket(server: S3Server):  # noqa: ANN202 - an obstore S3Store
    from obstore.store import S3Store

    return S3Store(server.bucket, endpoint=server.endpoint, access_key_id=server.access_key_id,
                   secret_access_key=server.secret_access_key, client_options={"allow_http": True})


def s3_objects(server: S3Server, prefix: str) -> dict[str, list[int]]:
    """The sizes of the objects under ``prefix/``, by kind of key."""
    import obstore

    kinds: dict[str, list[int]] = collections.defaultdict(list)
    for batch in obstore.list(_bucket(server), prefix, chunk_size=1000):
        for meta in batch:
            kinds[key_kind(meta["path"], prefix)].append(int(meta["size"]))
    return kinds


def delete_s3(server: S3Server, prefix: str) -> None:
    import obstore

    store = _bucket(server)
    keys = [meta["path"] for batch in obstore.list(store, prefix, chunk_size=1000) for meta in batch]
    for start in range(0, len(keys), 1000):
        obstore.delete(store, keys[start:start + 1000])


def local_objects(path: Path) -> dict[str, list[int]]:
    kinds: dict[str, list[int]] = collections.defaultdict(list)
    for file in path.rglob("*"):
        if file.is_file():
            kinds[key_kind(f"store/{file.relative_to(path).as_posix()}", "store")].append(file.stat().st_size)
    return kinds


def extract(slide: Path, out: str, options: dict, quality: bool, codec: str,
            storage_options: dict | None) -> tuple[float, int]:
    """Seconds of one ``wsizarr.extract`` call and the patches it wrote."""
    started = time.perf_counter()
    summary = wsizarr.extract(slide, slide.with_suffix(".xml"), out, quality=quality, codec=codec,
                              storage_options=storage_options, **options)
    return time.perf_counter() - started, summary.n_patches


def put_latency(server: S3Server, size: int, count: int) -> dict[str, float]:
    """Median and 90th-percentile seconds of one PUT of ``size`` bytes (one after another), and
    of five such PUTs sent together (as a shard task sends its five quality chunks)."""
    import obstore

    store, data = _bucket(server), os.urandom(size)

    async def five(i: int) -> None:
        await asyncio.gather(*(obstore.put_async(store, f"latency/five-{i}-{k}", data) for k in range(5)))

    single, together = [], []
    for i in range(count):
        t = time.perf_counter()
        obstore.put(store, f"latency/one-{i}", data)
        single.append(time.perf_counter() - t)
        t = time.perf_counter()
        asyncio.run(five(i))
        together.append(time.perf_counter() - t)
    delete_s3(server, "latency")
    return {"single": statistics.median(single), "single_p90": float(np.percentile(single, 90)),
            "five": statistics.median(together), "five_p90": float(np.percentile(together, 90)), "size": size}


# --- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small slide (~1,000 patches), one run each")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every configuration (median)")
    parser.add_argument("--codecs", default="zstd,jpeg", help="patch codecs, comma-separated")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--put-price", type=float, default=0.005,
                        help="US$ per 1,000 PUT/COPY/POST/LIST requests (S3 Standard, us-east-1)")
    parser.add_argument("--no-write-results", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.quick:
        size, n_annotations, per_annotation, repeats = (4096, 3072), 12, 84, 1
    else:
        size, n_annotations, per_annotation, repeats = (40960, 30720), 120, 84, args.repeats
    slide = cached_slide("bench", size, n_annotations)
    options = {"level": 1, "per_annotation": per_annotation, "workers": args.workers}
    codecs = args.codecs.split(",")
    busy_before = _cpu_times()
    runs: dict[tuple[str, str, bool], list[dict]] = collections.defaultdict(list)
    counted: dict[tuple[str, bool], RequestCounter] = {}
    with tempfile.TemporaryDirectory(dir=OUT) as scratch, seaweedfs(_folder(Path(scratch) / "s3")) as server:
        print(f"SeaweedFS ready in {server.startup_seconds:.2f} s", flush=True)
        local_root = _folder(Path(scratch) / "local")
        for codec in codecs:  # warm-up, not timed: page cache, imports, the server's first volumes
            extract(slide, str(local_root / "warm-up.zarr"), options, True, codec, None)
            shutil.rmtree(local_root / "warm-up.zarr")
            extract(slide, server.url("warm-up.zarr"), options, True, codec, server.options)
            delete_s3(server, "warm-up.zarr")
        n = 0
        for run in range(repeats):
            for codec in codecs:
                for target in ("local", "s3"):
                    for quality in ((False, True) if run % 2 == 0 else (True, False)):
                        name = f"{codec}-q{int(quality)}-{run}.zarr"
                        if target == "s3":
                            seconds, n = extract(slide, server.url(name), options, quality, codec, server.options)
                            objects = s3_objects(server, name)
                            delete_s3(server, name)
                        else:
                            seconds, n = extract(slide, str(local_root / name), options, quality, codec, None)
                            objects = local_objects(local_root / name)
                            shutil.rmtree(local_root / name)
                        runs[(codec, target, quality)].append({"seconds": seconds, "objects": objects})
                        print(f"run {run + 1}/{repeats}  {codec:5s} {target:5s} quality={quality!s:5s} "
                              f"{n / seconds:7.0f} patches/s  {sum(map(len, objects.values()))} objects",
                              flush=True)
        for codec in codecs:  # one more run of each through the counting relay (not timed)
            for quality in (False, True):
                name = f"{codec}-q{int(quality)}-counted.zarr"
                with RequestCounter(server, name) as counter:
                    extract(slide, server.url(name), options, quality, codec,
                            {**server.options, "endpoint_url": counter.endpoint})
                delete_s3(server, name)
                counted[(codec, quality)] = counter
                print(f"counted {codec} quality={quality}: {sum(counter.requests.values())} requests", flush=True)
        chunk = statistics.median(
            statistics.median(r["objects"]["quality chunk"]) for (c, t, q), rs in runs.items() if q for r in rs)
        latency = put_latency(server, int(chunk), 50 if args.quick else 200)
        print(f"one PUT of {int(chunk)} B: median {latency['single'] * 1e3:.2f} ms; five together "
              f"{latency['five'] * 1e3:.2f} ms", flush=True)
    other = _other_share(busy_before)
    facts = {"n": n, "slide": slide, "per_annotation": per_annotation, "n_annotations": n_annotations,
             "repeats": repeats, "workers": args.workers, "quick": args.quick, "price": args.put_price,
             "seconds": time.perf_counter() - started, "other": other, "latency": latency}
    report = _report(runs, counted, codecs, facts)
    print()
    print(report)
    if not args.no_write_results:
        write_results_section("bench_s3_objects.py", report)
        print(f"wrote {HERE / 'RESULTS.md'}")


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _cpu_times() -> tuple[float, float, float]:
    import resource

    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    mine = sum(getattr(resource.getrusage(who), field)
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for field in ("ru_utime", "ru_stime"))
    return time.perf_counter(), busy, mine


def _other_share(before: tuple[float, float, float]) -> float:
    """Share of all cores used by processes other than this one and its children (SeaweedFS is
    a child) since ``before``."""
    wall, busy, mine = (b - a for a, b in zip(before, _cpu_times()))
    return max(0.0, busy - mine) / (wall * (os.cpu_count() or 1))


# --- the report -------------------------------------------------------------------------------


def _report(runs: dict, counted: dict, codecs: list[str], facts: dict) -> str:
    import obstore
    import zarr

    n, latency, price = facts["n"], facts["latency"], facts["price"]
    shards = math.ceil(n / 256)
    command = "python benchmarks/bench_s3_objects.py" + (" --quick" if facts["quick"] else "")
    lines = [
        f"## Quality arrays on S3: objects and requests (`{command}`)", "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {facts['seconds'] / 60:.1f} min in all).",
        f"Machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
        f"zarr {zarr.__version__}, obstore {obstore.__version__}, wsizarr {wsizarr.__version__}; SeaweedFS "
        "(`weed mini`, tests/s3server.py) on 127.0.0.1 sharing the same cores. Other processes used "
        f"{facts['other']:.0%} of the machine's CPU during the run.",
        f"Data: `{facts['slide'].name}` (Aperio-style, real H&E tiles), N = {n} patches of 256 px "
        f"({facts['per_annotation']} around each of its {facts['n_annotations']} annotations, level 1), "
        f"{shards} shards of 256; `wsizarr.extract(..., quality=True|False, codec=...)`, "
        f"{facts['workers']} worker threads, into `s3://bucket/NAME.zarr` (storage_options: endpoint and "
        "keys) or a local directory; every run a new store. Wall time = the `extract` call (planning, "
        f"reading, encoding, writing, finalising). Medians of {facts['repeats']} run"
        f"{'s' if facts['repeats'] > 1 else ''} per row, interleaved (quality off/on in alternating order), "
        "after one untimed warm-up extraction per codec and target.", "",
        "| codec | target | quality | patches/s | wall s | objects | of which quality chunks | bytes | "
        "quality bytes | runs patches/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (codec, target, quality), results in runs.items():
        objects = results[0]["objects"]
        rates = sorted(n / r["seconds"] for r in results)
        lines.append(
            f"| {codec} | {'S3 (loopback)' if target == 's3' else 'local dir'} | {'on' if quality else 'off'} | "
            f"{statistics.median(rates):.0f} | {statistics.median(r['seconds'] for r in results):.2f} | "
            f"{sum(map(len, objects.values()))} | {len(objects.get('quality chunk', []))} | "
            f"{sum(map(sum, objects.values())) / 1e6:.1f} MB | {sum(objects.get('quality chunk', [])) / 1e3:.1f} KB | "
            f"{', '.join(f'{x:.0f}' for x in rates)} |")
    kinds = sorted({k for c in counted.values() for k, _ in c.requests})
    lines += [
        "", "HTTP requests of one extraction to S3 (one more run of each, through the counting relay; "
        "not timed). Tier 1 = what AWS bills as PUT/COPY/POST/LIST requests:", "",
        "| codec | quality | requests | tier 1 (PUT, POST, LIST) | of which for quality chunks | "
        + " | ".join(kinds) + " |",
        "|---|---|---|---|---|" + "---|" * len(kinds),
    ]
    tier1: dict[tuple[str, bool], int] = {}
    for (codec, quality), counter in counted.items():
        by_kind = collections.Counter()
        for (kind, _), count in counter.requests.items():
            by_kind[kind] += count
        tier1[(codec, quality)] = sum(count for (kind, _), count in counter.requests.items() if kind in TIER1)
        quality_tier1 = sum(count for (kind, key), count in counter.requests.items()
                            if kind in TIER1 and key == "quality chunk")
        lines.append(f"| {codec} | {'on' if quality else 'off'} | {sum(counter.requests.values())} | "
                     f"{tier1[(codec, quality)]} | {quality_tier1} | "
                     + " | ".join(str(by_kind.get(k, 0)) for k in kinds) + " |")
    lines += ["", "Requests by key, quality on:", "",
              "| codec | key | requests by kind |", "|---|---|---|"]
    for (codec, quality), counter in counted.items():
        if not quality:
            continue
        by_key: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for (kind, key), count in counter.requests.items():
            by_key[key][kind] += count
        for key in sorted(by_key):
            lines.append(f"| {codec} | {key} | " + ", ".join(f"{k} {v}" for k, v in sorted(by_key[key].items())) + " |")
    # what one (N, 5) array would save
    saved_per_shard = len(QUALITY) - 1
    saved = saved_per_shard * shards
    million_shards = math.ceil(MILLION / 256)
    million_saved = saved_per_shard * million_shards
    lines += [
        "", f"One PUT of a quality chunk's size ({latency['size']} B) to this server: median "
        f"{latency['single'] * 1e3:.2f} ms (90th percentile {latency['single_p90'] * 1e3:.2f} ms), one "
        f"after another; five sent together, as a shard task sends them: {latency['five'] * 1e3:.2f} ms "
        f"({latency['five_p90'] * 1e3:.2f} ms).", "",
        "What one `(N, 5)` float32 quality array chunked `(256, 5)` (one chunk a shard) would save, "
        f"{len(QUALITY)} quality objects a shard -> 1:", "",
        "| store | shards | objects and PUTs saved | serial PUT time saved at "
        f"{latency['single'] * 1e3:.2f} ms | PUT cost saved at ${price:g} / 1,000 |",
        "|---|---|---|---|---|",
        f"| this one (N = {n}) | {shards} | {saved} | {saved * latency['single']:.2f} s | ${saved * price / 1000:.4f} |",
        f"| 1M patches | {million_shards} | {million_saved} | {million_saved * latency['single']:.1f} s | "
        f"${million_saved * price / 1000:.3f} |",
    ]
    lines += ["", *_reading(runs, counted, tier1, codecs, facts, shards), ""]
    return "\n".join(lines) + "\n"


def _reading(runs: dict, counted: dict, tier1: dict, codecs: list[str], facts: dict, shards: int) -> list[str]:
    latency, price = facts["latency"], facts["price"]

    def wall(codec: str, target: str, quality: bool) -> float:
        return statistics.median(r["seconds"] for r in runs[(codec, target, quality)])

    def requests(codec: str, quality: bool, key: str, kinds: tuple[str, ...] = TIER1) -> int:
        return sum(count for (kind, k), count in counted[(codec, quality)].requests.items() if k == key and kind in kinds)

    spread = max(((max(r["seconds"] for r in rs) - min(r["seconds"] for r in rs)) / statistics.median(r["seconds"] for r in rs)
                  for rs in runs.values()), default=0.0)
    out = ["Reading the figures:", ""]
    for codec in codecs:
        s3 = wall(codec, "s3", True) - wall(codec, "s3", False)
        local = wall(codec, "local", True) - wall(codec, "local", False)
        objects_on = sum(map(len, runs[(codec, "s3", True)][0]["objects"].values()))
        objects_off = sum(map(len, runs[(codec, "s3", False)][0]["objects"].values()))
        on, off = tier1[(codec, True)], tier1[(codec, False)]
        shard_requests = requests(codec, True, "patches shard") / shards
        out.append(
            f"- {codec}: the quality arrays add {objects_on - objects_off} objects ({shards} shards × "
            f"{len(QUALITY)} chunks + {len(QUALITY)} `zarr.json`) to the {objects_off} of the store without them "
            f"({objects_on / objects_off:.2f}×), but {on - off} tier-1 requests to {off} ({on / off:.2f}×; "
            f"{off / shards:.1f} → {on / shards:.1f} a shard): each patches shard is itself "
            f"{shard_requests:.1f} tier-1 requests, because obstore sends every object over 5 MiB as a "
            "multipart upload (create, one PUT per 5-MiB part, complete). Wall time with − without quality: "
            f"{s3:+.2f} s on S3, {local:+.2f} s on the local disk (the measures' computing is in both)."
        )
    fixed = {codec: (requests(codec, False, "metadata (zarr.json)", ("PUT object",)),
                     requests(codec, False, "metadata (zarr.json)", ("GET",))) for codec in codecs}
    million = (len(QUALITY) - 1) * math.ceil(MILLION / 256)
    out += [
        (f"- Noise: the runs of one row differ by up to {spread:.0%} of its median (other processes used "
         f"{facts['other']:.0%} of the CPU); compare the wall-time differences above with that. "
         if facts["repeats"] > 1 else
         f"- One run per row (other processes used {facts['other']:.0%} of the CPU): the wall-time "
         "differences above are single samples. ")
        + "The object and request counts are exact. What the extra objects cost in time is bounded by the latency "
        f"figures instead: five quality PUTs sent together take {latency['five'] * 1e3:.1f} ms on this "
        "server, sent while the shard's own parts are in flight.",
        f"- For a 1M-patch store one `(N, 5)` array saves {million:,} PUTs: ${million * price / 1000:.2f} at "
        f"${price:g} per 1,000, and at most {million * latency['single']:.0f} s of serial PUT latency "
        "on this loopback server (less in practice: a shard task sends its quality chunks together with "
        "its patches shard, so their latency overlaps). The price is S3 Standard's PUT/COPY/POST/LIST "
        "rate as third-party summaries quote it; AWS's own pricing page could not be read with the "
        "search tool here, so the figure is not cited from AWS (`--put-price` changes it).",
        "- Per extraction, whatever its size: " + "; ".join(
            f"{codec} {puts} PUTs and {gets} GETs of `zarr.json`" for codec, (puts, gets) in fixed.items())
        + " (store creation, the plan's resizes, consolidation), and " + "; ".join(
            f"{sum(c for (k, _), c in counted[(codec, True)].requests.items() if k == 'DELETE (batch)')} "
            f"batch DELETEs ({codec})" for codec in codecs)
        + " (the shard-done markers and the lock removed at the end; DELETEs are not counted as tier 1).",
        "",
        "Recommendation: keep the five 1-D arrays. One `(N, 5)` array with a `measure` dimension would "
        f"save {len(QUALITY) - 1} objects and {len(QUALITY) - 1} PUTs a shard (and {len(QUALITY) - 1} "
        f"`zarr.json` a store), ${million * price / 1000:.2f} per 1M-patch extraction, and no time this benchmark "
        "can see. Against that, the names are the interface: `open_dataset` gives each measure as its "
        "own variable along `patch` with its own `description` (`ds.tissue_fraction > 0.5`, next to the "
        "coordinates `x`, `y`, `label`, ...), `read_patch_table(...).quality[name]`, the filters "
        "(`min_tissue`, `min_sharpness`, `max_pen`, `bounds={name: ...}` of `PatchTable.select`, "
        "`subset`, `--min-tissue`) and the manifest's `quality` list address a measure by name, and "
        "any Zarr reader finds `tissue_fraction` without knowing a `measure` axis; one array would "
        "turn these into `ds.quality.sel(measure=...)`, need a schema version and a migration. If "
        "the request count on S3 matters, the larger lever is the patches shard itself: one PUT "
        "(obstore's `use_multipart=False`, up to 5 GB) instead of a multipart upload would save "
        + " / ".join(f"{requests(codec, True, 'patches shard') / shards - 1:.1f} ({codec})" for codec in codecs)
        + f" requests a shard against the {len(QUALITY) - 1} that one quality array would save.",
    ]
    return out


if __name__ == "__main__":
    main()
