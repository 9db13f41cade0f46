"""True colour: each slide's ICC profile recorded in the slide table, and ``color="srgb"``
converting pixels as read from that profile to sRGB (slides without one left unchanged)."""

from __future__ import annotations

import hashlib
import io
import struct

import numpy as np
import pytest
import zarr
from PIL import Image, ImageCms

from wsizarr import StoreError, extract, verify
from wsizarr.slides._demo import write_demo_annotations, write_demo_slide
from wsizarr.slides._slide import open_slide, resize_patch, slide_info
from wsizarr.store._store import consolidate, slide_table
from wsizarr.slides._tiles import tiff_slide_info

from .conftest import SLIDES, SlideCase, read_like_openslide
from .helpers import assert_one_line_error, run

# sRGB's primaries adapted to D50, as its ICC profile holds them
_SRGB_RED, _SRGB_GREEN, _SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)
_D50 = (0.9642, 1.0, 0.8249)
DESCRIPTION = "wsizarr test: red and blue primaries swapped"


def icc_rgb_profile(description: str, red: tuple[float, float, float], green: tuple[float, float, float],
                    blue: tuple[float, float, float], gamma: float = 2.2) -> bytes:
    """The bytes of an ICC v2 RGB display profile (matrix/TRC): header, tag table, ``desc``,
    ``cprt``, ``wtpt``, the primaries' XYZ (D50) and one gamma curve per channel."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(value: tuple[float, float, float]) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in value)

    text = description.encode("ascii") + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + struct.pack(">IIHB", 0, 0, 0, 0) + bytes(67)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))
    tags = [(b"desc", desc), (b"cprt", b"text\0\0\0\0No copyright, test data\0"), (b"wtpt", xyz(_D50)),
            (b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)), (b"bXYZ", xyz(blue)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)  # tag data starts on 4-byte boundaries
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (
        struct.pack(">I", offset + len(data)) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + bytes(24) + struct.pack(">I", 0)
        + b"".join(s15(v) for v in _D50) + bytes(48)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


PROFILE = icc_rgb_profile(DESCRIPTION, red=_SRGB_BLUE, green=_SRGB_GREEN, blue=_SRGB_RED)


def littlecms_to_srgb(pixels: np.ndarray) -> np.ndarray:
    """ImageCms's own conversion of RGB pixels from ``PROFILE`` to sRGB (perceptual)."""
    transform = ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(PROFILE)), ImageCms.createProfile("sRGB"), "RGB", "RGB",
    )
    return np.stack([np.asarray(ImageCms.applyTransform(Image.fromarray(p), transform)) for p in pixels])


@pytest.fixture(scope="module", params=["aperio", "generic"])
def profiled_case(request, tmp_path_factory) -> SlideCase:
    """A JPEG pyramidal TIFF embedding ``PROFILE``: Aperio-style (downsamples ~4, fractional)
    or generic (downsample 2)."""
    folder = tmp_path_factory.mktemp(f"icc_{request.param}")
    aperio = request.param == "aperio"
    slide = write_demo_slide(
        folder / ("swapped.svs" if aperio else "swapped.tif"), width=2001, height=1503, levels=3,
        downsample=4 if aperio else 2, aperio=aperio, n_glomeruli=3, glomerulus_px=200, seed=7,
        icc_profile=PROFILE,
    )
    return SlideCase(request.param, slide.path, write_demo_annotations(slide, folder / "swapped.xml"))


KWARGS = dict(patch_size=32, per_annotation=4, shard_size=8, seed=3)


def test_the_test_profile_is_valid_and_far_from_srgb():
    profile = ImageCms.ImageCmsProfile(io.BytesIO(PROFILE))
    assert profile.profile.profile_description == DESCRIPTION
    pink = np.array([[[232, 172, 205]]], np.uint8)
    converted = littlecms_to_srgb(pink[None])[0, 0, 0].astype(int)
    assert pink[0, 0, 0] - pink[0, 0, 2] > 20 and converted[2] - converted[0] > 20  # red and blue swap places


@pytest.mark.parametrize("reader", ["tiles", "openslide"])
def test_the_slide_table_records_the_embedded_profile(tmp_path, profiled_case, reader):
    store = tmp_path / "store.zarr"
    extract(profiled_case.slide, profiled_case.annotations, store, reader=reader, **KWARGS)
    group = zarr.open_group(store, mode="r")
    table = slide_table(group)
    assert table.reader(0) == reader
    assert table.icc_profile(0) == PROFILE and table.info(0).icc_profile == PROFILE
    assert table.columns["icc_description"][0] == DESCRIPTION
    assert table.columns["icc_sha256"][0] == hashlib.sha256(PROFILE).hexdigest()
    assert table.color(0) == "unchanged"  # the default, recorded as such
    assert group.attrs["wsizarr"]["parameters"]["color"] == "unchanged"
    # slides on S3 are read from the TIFF header alone: the same profile
    assert tiff_slide_info(str(profiled_case.slide))[0].icc_profile == PROFILE


def test_srgb_patches_are_littlecms_conversions_of_the_pixels_read(tmp_path, profiled_case):
    unchanged, srgb = tmp_path / "unchanged.zarr", tmp_path / "srgb.zarr"
    extract(profiled_case.slide, profiled_case.annotations, unchanged, level=1, **KWARGS)
    extract(profiled_case.slide, profiled_case.annotations, srgb, level=1, color="srgb", **KWARGS)
    before, after = zarr.open_group(unchanged, mode="r"), zarr.open_group(srgb, mode="r")
    np.testing.assert_array_equal(before["x"][:], after["x"][:])  # the same plan, the same pixels read
    np.testing.assert_array_equal(after["patches"][:], littlecms_to_srgb(before["patches"][:]))
    assert np.abs(after["patches"][:].astype(int) - before["patches"][:]).mean() > 10
    assert slide_table(after).color(0) == "srgb"
    assert verify(srgb, sample=16).ok  # its patches re-read from the slide and converted alike
    assert after.attrs["wsizarr"]["parameters"]["color"] == "srgb"
    processes = tmp_path / "processes.zarr"  # each worker process builds its own transform
    extract(profiled_case.slide, profiled_case.annotations, processes, level=1, color="srgb",
            executor="processes", workers=2, **KWARGS)
    np.testing.assert_array_equal(zarr.open_group(processes, mode="r")["patches"][:], after["patches"][:])


def test_conversion_comes_before_the_resize(tmp_path, profiled_case):
    store = tmp_path / "srgb.zarr"  # 0.75 mpp from a 0.25 mpp slide: no level has it, a larger read is resized
    extract(profiled_case.slide, profiled_case.annotations, store, mpp=0.75, reader="openslide", color="srgb", **KWARGS)
    group = zarr.open_group(store, mode="r")
    resolution = slide_table(group).resolution(0)
    assert resolution.read_size_px > 32
    for i in range(3):
        x, y = int(group["x"][i]), int(group["y"][i])
        region = read_like_openslide(profiled_case.slide, x, y, resolution.level, resolution.read_size_px)
        expected = resize_patch(littlecms_to_srgb(region[None])[0], 32)
        np.testing.assert_array_equal(group["patches"][i], expected)
    assert verify(store, sample=8).ok


def test_a_slide_without_a_profile_is_left_unchanged_and_reported(tmp_path, profiled_case, aperio_case):
    slides, annotations = [profiled_case.slide, aperio_case.slide], [profiled_case.annotations, aperio_case.annotations]
    unchanged, srgb = tmp_path / "unchanged.zarr", tmp_path / "srgb.zarr"
    extract(slides, annotations, unchanged, **KWARGS)
    summary = extract(slides, annotations, srgb, color="srgb", **KWARGS)
    assert summary.slides_without_profile == (str(aperio_case.slide),)
    assert "1 slide without a colour profile left unchanged" in str(summary)
    before, after = zarr.open_group(unchanged, mode="r"), zarr.open_group(srgb, mode="r")
    table = slide_table(after)
    assert [table.color(i) for i in range(2)] == ["srgb", "unchanged"]
    assert table.icc_profile(1) is None and table.columns["icc_description"][1] == ""
    assert table.columns["icc_sha256"][1] == ""
    mine = after["slide"][:] == 1
    np.testing.assert_array_equal(after["patches"][:][mine], before["patches"][:][mine])
    assert not np.array_equal(after["patches"][:][~mine], before["patches"][:][~mine])


@pytest.mark.parametrize(
    ("name", "description"),
    [
        ("tcga-cr-7395-01a-01-ts1.svs", "sRGB IEC61966-2.1"),  # 3144 bytes, in level 0
        ("CMU-1-Small-Region.svs", None),
        ("wsipacker_example.tif", None),
    ],
)
def test_the_real_slides_profiles(name, description):
    with open_slide(SLIDES / name) as handle:
        profile = slide_info(handle, SLIDES / name).icc_profile
    assert tiff_slide_info(str(SLIDES / name))[0].icc_profile == profile
    if description is None:
        assert profile is None
    else:
        assert ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.profile_description == description


def test_color_on_the_command_line_and_a_change_refused(tmp_path, profiled_case, aperio_case):
    out = tmp_path / "cli.zarr"
    common = ["--patch-size", "32", "--per-annotation", "2", "--shard-size", "8"]
    run("extract", profiled_case.slide, "--annotations", profiled_case.annotations, "--out", out, "--color", "srgb", *common)
    group = zarr.open_group(out, mode="r")
    assert group.attrs["wsizarr"]["parameters"]["color"] == "srgb" and slide_table(group).color(0) == "srgb"
    resumed = run("extract", profiled_case.slide, "--annotations", profiled_case.annotations, "--out", out,
                  "--resume", *common, expect=1)
    assert_one_line_error(resumed, "was made with other parameters", "'color': 'srgb'", "--overwrite")
    appended = run("extract", aperio_case.slide, "--annotations", aperio_case.annotations, "--out", out,
                   "--append", "--color", "unchanged", *common, expect=1)
    assert_one_line_error(appended, "was made with other parameters")
    with pytest.raises(StoreError, match="other parameters"):
        extract(aperio_case.slide, aperio_case.annotations, out, append=True, patch_size=32, per_annotation=2,
                shard_size=8)
    added = run("extract", aperio_case.slide, "--annotations", aperio_case.annotations, "--out", out,
                "--append", "--color", "srgb", *common)
    assert f"no colour profile, colours left unchanged: {aperio_case.slide}" in added.stderr
    assert [slide_table(zarr.open_group(out, mode="r")).color(i) for i in range(2)] == ["srgb", "unchanged"]


def test_a_store_made_before_profiles_were_recorded(tmp_path, profiled_case, aperio_case):
    """No colour columns and no ``color`` parameter: it opens as "no profile, unchanged", and an
    append adds the columns (empty for its slides)."""
    store = tmp_path / "old.zarr"
    extract(aperio_case.slide, aperio_case.annotations, store, **KWARGS)
    group = zarr.open_group(store, mode="r+", use_consolidated=False)  # as the store's writer opens it
    for name in ("icc_profile", "icc_description", "icc_sha256", "color"):
        del group["slides"][name]
    attrs = dict(group.attrs["wsizarr"])
    attrs["parameters"] = {k: v for k, v in attrs["parameters"].items() if k != "color"}
    group.attrs["wsizarr"] = attrs
    consolidate(group)
    table = slide_table(zarr.open_group(store, mode="r"))
    assert table.icc_profile(0) is None and table.color(0) == "unchanged" and table.info(0).icc_profile is None
    extract(profiled_case.slide, profiled_case.annotations, store, append=True, **KWARGS)
    table = slide_table(zarr.open_group(store, mode="r"))
    assert [table.icc_profile(i) for i in range(2)] == [None, PROFILE]
    assert [table.color(i) for i in range(2)] == ["unchanged", "unchanged"]
