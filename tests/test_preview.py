"""Contact sheets, overlays and the HTML report: real PNGs checked for size and content."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import zarr
from PIL import Image

from wsizarr import ParameterError, extract, overlay, preview, write_report
from wsizarr.inspect._preview import LABEL_COLOURS

from .conftest import ANNOTATIONS, SLIDES
from .helpers import run

KWARGS = dict(level=0, patch_size=64, per_annotation=4, shard_size=16, seed=6)


@pytest.fixture(scope="module")
def store(tmp_path_factory, aperio_even_case):
    path = tmp_path_factory.mktemp("preview") / "s.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, path, **KWARGS)
    return path


def test_contact_sheet_has_one_block_per_label(store, tmp_path):
    out = preview(store, tmp_path / "m.png", per_label=5)
    image = np.asarray(Image.open(out).convert("RGB"))
    names = zarr.open_group(store, mode="r").attrs["wsizarr"]["label_names"]
    assert image.shape[1] == 8 * 128
    header_rows = [y for y in range(image.shape[0]) if (image[y, 500] == LABEL_COLOURS[0]).all()
                   or (len(names) > 1 and (image[y, 500] == LABEL_COLOURS[1]).all())]
    assert len(header_rows) >= 20 * len(names) - 2  # a 20-px coloured header per label
    tiles = image[20:148, :128]
    assert tiles.std() > 5  # a real patch, not blank
    # below the patches, a histogram per quality measure with a line in each label's colour
    below = image[-200:]
    for code in range(len(names)):
        assert (below == LABEL_COLOURS[code]).all(axis=2).sum() > 100


def test_a_store_without_quality_has_no_histograms(store, aperio_even_case, tmp_path):
    path = tmp_path / "plain.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, path, **KWARGS, quality=False)
    plain = Image.open(preview(path, tmp_path / "p.png", per_label=5))
    full = Image.open(preview(store, tmp_path / "q.png", per_label=5))
    assert plain.width == full.width and plain.height < full.height


def test_overlay_draws_boxes_where_the_coordinates_say(store, tmp_path):
    out = overlay(store, tmp_path / "o.png", max_px=1024)
    image = np.asarray(Image.open(out).convert("RGB"))
    group = zarr.open_group(store, mode="r")
    scale = image.shape[1] / 4096
    codes = group["label"][:]
    hits = 0
    for i in range(0, len(codes), 3):
        colour = LABEL_COLOURS[int(codes[i])]
        x, y = int(group["x"][i] * scale), int(group["y"][i] * scale)
        if y < 40 and x < 180:
            continue  # under the legend
        patch = image[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].reshape(-1, 3)
        hits += any((p == colour).all() for p in patch)
    assert hits >= 0.8 * len(range(0, len(codes), 3))  # the box corner sits at the stored x, y


def test_overlay_on_a_real_slide_and_slide_choice(tmp_path):
    path = tmp_path / "wsipacker.zarr"
    extract(SLIDES / "wsipacker_example.tif", ANNOTATIONS / "wsipacker_example.xml", path, patch_size=64, per_annotation=5)
    out = overlay(path, tmp_path / "w.png", slide="wsipacker_example")
    image = np.asarray(Image.open(out).convert("RGB"))
    assert abs(image.shape[1] / image.shape[0] - 1472 / 690) < 0.01
    unlabelled = (image == (90, 90, 90)).all(axis=2)  # its one annotation has no label
    assert unlabelled[:, 300:].sum() > 100  # outline and boxes right of the legend
    with pytest.raises(ParameterError, match="no slide 'other'"):
        overlay(path, tmp_path / "x.png", slide="other")


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed by the test suite itself where it is missing."""
    found = shutil.which("chromium")
    if found is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                       check=True, timeout=900, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        found = shutil.which("chromium")
    assert found, "chromium could not be installed"
    return found


def test_report_renders_in_headless_chromium(store, tmp_path, chromium):
    report = write_report(store, tmp_path / "report.html")
    text = report.read_text()
    assert text.count("data:image/png;base64,") == 3 and "Parameters" in text
    assert "Quality measures per label" in text and "tissue_fraction" in text
    assert not list(tmp_path.glob("report.*.png"))  # images only embedded
    shot = tmp_path / "shot.png"
    subprocess.run([
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        report.as_uri(),
    ], check=True, timeout=120, capture_output=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    assert (pixels.reshape(-1, 3) != 255).any(axis=1).mean() > 0.05  # text and images, not blank


def test_cli_preview_overlay_report(store, tmp_path):
    for command, out in [("preview", "m.png"), ("overlay", "o.png"), ("report", "r.html")]:
        result = run(command, store, "--out", tmp_path / out)
        assert (tmp_path / out).stat().st_size > 1000, result.stderr


def test_written_files_honour_the_umask(store, tmp_path):
    """Every file a command writes for a person (and every file of a store it packs or
    subsets) gets the mode the umask gives, like any other tool's: not tempfile's 0600."""
    previous = os.umask(0o027)  # the commands below inherit it
    try:
        for command, out in [("preview", "m.png"), ("overlay", "o.png"), ("report", "r.html"),
                             ("export", "exported"), ("subset", "s.zip"), ("pack", "p.zip"),
                             ("subset", "s.zarr")]:
            target = [tmp_path / out] if command in ("export", "subset", "pack") else ["--out", tmp_path / out]
            run(command, store, *target)
    finally:
        os.umask(previous)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in (tmp_path / "exported").iterdir()} >= {"metadata.csv"}
    assert len([p for p in written if p.suffix == ".png"]) > 2
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in written}
    assert set(modes.values()) == {oct(0o640)}, modes
