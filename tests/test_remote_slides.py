"""Slides and annotations read straight from S3 (the suite's SeaweedFS server): ranged GETs of
the TIFF header and the tiles patches touch, the same store as from local files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import zarr

from wsizarr import SlideError, extract, verify
from wsizarr._locations import parse_location
from wsizarr.slides._tiles import RangedFile, TileReader, tiff_slide_info

from .conftest import slide_rows
from .helpers import assert_same_store, run

# Where each run read its slide and annotations from, and the slide's content hash: OpenSlide's
# quickhash-1 for a local file, SHA-256 of size, first and last MiB for a remote one (so the same
# slide has two hashes; append's duplicate check cannot see a local slide again from S3).
REMOTE_PATHS = ("path", "annotations", "content_hash")
REMOTE_ARRAYS = tuple(f"slides/{name}" for name in REMOTE_PATHS)


def _upload(server, key, path):
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        server.bucket, endpoint=server.endpoint, access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key, client_options={"allow_http": True},
    )
    obstore.put(store, key, path.read_bytes())
    return server.url(key)


def test_extract_from_s3_equals_local_and_verifies(s3_server, aperio_case, tmp_path):
    slide = _upload(s3_server, "one/aperio.svs", aperio_case.slide)
    annotations = _upload(s3_server, "one/aperio.xml", aperio_case.annotations)
    kwargs = dict(level=1, patch_size=64, per_annotation=10, shard_size=32, seed=4)
    local = tmp_path / "local.zarr"
    extract(aperio_case.slide, aperio_case.annotations, local, **kwargs)
    out = s3_server.url("one/aperio.zarr")
    summary = extract(slide, annotations, out, storage_options=s3_server.options, **kwargs)
    assert summary.n_patches == 80
    remote = zarr.open_group(parse_location(out, s3_server.options).open("r"), mode="r")
    assert_same_store(local, remote, ignore_attrs=REMOTE_PATHS, ignore_arrays=REMOTE_ARRAYS)
    (entry,) = slide_rows(out, s3_server.options)
    assert entry["path"] == slide and entry["annotations"] == annotations and entry["reader"] == "tiles"
    report = verify(out, sample=20, storage_options=s3_server.options)
    assert report.ok and report.patches_compared == 20


def test_cli_cohort_from_s3_prefixes_with_background(s3_server, aperio_case, aperio_even_case, tmp_path):
    for case in (aperio_case, aperio_even_case):
        _upload(s3_server, f"cohort/slides/{case.slide.name}", case.slide)
        _upload(s3_server, f"cohort/annotations/{case.annotations.name}", case.annotations)
    _upload(s3_server, "cohort/annotations/orphan.xml", aperio_case.annotations)
    options = [f"--storage-option={k}={v}" for k, v in s3_server.options.items()]
    common = ["--level", "2", "--patch-size", "32", "--per-annotation", "3", "--background", "4"]
    result = run(
        "extract", s3_server.url("cohort/slides/"), "--annotations", s3_server.url("cohort/annotations/"),
        "--out", str(tmp_path / "remote.zarr"), *common, *options,
    )
    assert "no slide for s3://" in result.stderr and "orphan.xml" in result.stderr
    remote = zarr.open_group(tmp_path / "remote.zarr", mode="r")
    local = tmp_path / "local.zarr"  # the same cohort from local files: the same store
    extract([aperio_case.slide, aperio_even_case.slide], [aperio_case.annotations, aperio_even_case.annotations],
            local, level=2, patch_size=32, per_annotation=3, background=4)
    assert_same_store(local, remote, ignore_attrs=REMOTE_PATHS, ignore_arrays=REMOTE_ARRAYS)
    assert [s["path"] for s in slide_rows(tmp_path / "remote.zarr")] == [
        s3_server.url(f"cohort/slides/{case.slide.name}") for case in (aperio_case, aperio_even_case)
    ]
    assert "background" in remote["label"].attrs["label_names"]
    assert (remote["annotation_id"][:] == -1).sum() == 8  # four background patches a slide
    assert verify(tmp_path / "remote.zarr", sample=16, storage_options=s3_server.options).ok


@pytest.fixture(scope="module")
def large_remote_slide(s3_server, tmp_path_factory):
    from wsizarr.slides._demo import write_demo_slide

    slide = write_demo_slide(tmp_path_factory.mktemp("large") / "large.svs", width=12000, height=9000, seed=5)
    return slide.path, _upload(s3_server, "large/large.svs", slide.path)


def test_ranged_gets_fetch_the_header_and_the_tiles_only(s3_server, large_remote_slide):
    local, url = large_remote_slide
    info, remote_hash = tiff_slide_info(url, s3_server.options)
    local_info, local_hash = tiff_slide_info(str(local))
    assert info == dataclasses.replace(local_info, path=url) and remote_hash == local_hash
    with TileReader(info, s3_server.options) as remote, TileReader(local_info) as near:
        for x, y in ((5000, 4000), (5100, 4100), (200, 300)):
            np.testing.assert_array_equal(remote.read(0, x, y, 256), near.read(0, x, y, 256))
        assert isinstance(remote.source, RangedFile)
        fetched, size = remote.source.bytes_fetched, remote.source.size
    assert fetched < 0.1 * size, (fetched, size)


def test_slides_without_tile_access_on_s3_say_copy_them(s3_server, tmp_path, aperio_case):
    import tifffile

    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, np.zeros((600, 600), np.uint8), tile=(256, 256))
    url = _upload(s3_server, "bad/grey.tif", grey)
    annotations = _upload(s3_server, "bad/grey.xml", aperio_case.annotations)
    with pytest.raises(SlideError, match=r"^s3://.*/bad/grey.tif: cannot be read tile by tile from S3 .*copy it to a local disk"):
        extract(url, annotations, tmp_path / "x.zarr", storage_options=s3_server.options)
    slide = _upload(s3_server, "bad/aperio.svs", aperio_case.slide)
    with pytest.raises(SlideError, match=r"OpenSlide reads local files only; copy the slide to a local disk"):
        extract(slide, annotations, tmp_path / "y.zarr", storage_options=s3_server.options, reader="openslide")
    missing = s3_server.url("bad/missing.svs")
    with pytest.raises(SlideError, match="missing.svs.*no such object; check the URL"):
        extract(missing, annotations, tmp_path / "z.zarr", storage_options=s3_server.options)
