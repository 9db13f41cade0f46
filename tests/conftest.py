"""Session fixtures: real pyramidal TIFFs written with tifffile, and the shared real data."""

from __future__ import annotations

import functools
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from wsizarr.slides._demo import write_demo_annotations, write_demo_slide
from wsizarr.slides._slide import composite_on_white

from .helpers import storage_option_args


def _shared_data() -> Path:
    candidates = [
        os.environ.get("WSIZARR_SHARED_DATA"),
        Path(__file__).resolve().parents[2] / "shared" / "data",
        "/work/shared/data",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "SHA256SUMS").is_file():
            return Path(candidate)
    raise RuntimeError(
        "the shared test data (../shared/data beside the repository) was not found; "
        "set WSIZARR_SHARED_DATA to its path"
    )


SHARED = _shared_data()
SLIDES = SHARED / "slides"
ANNOTATIONS = SHARED / "annotations"


@dataclass(frozen=True)
class SlideCase:
    name: str
    slide: Path
    annotations: Path


@pytest.fixture(scope="session")
def aperio_case(tmp_path_factory) -> SlideCase:
    """Aperio-style SVS: JPEG tiles, downsample-4 levels, sizes that make them non-integer."""
    folder = tmp_path_factory.mktemp("aperio")
    slide = write_demo_slide(folder / "aperio.svs", width=4001, height=3003, n_glomeruli=8, seed=1)
    return SlideCase("aperio", slide.path, write_demo_annotations(slide, folder / "aperio.xml"))


@pytest.fixture(scope="session")
def aperio_even_case(tmp_path_factory) -> SlideCase:
    """Aperio-style SVS whose downsamples are exactly 1, 4, 16 (neighbourhood reads apply)."""
    folder = tmp_path_factory.mktemp("aperio_even")
    slide = write_demo_slide(folder / "even.svs", width=4096, height=3072, n_glomeruli=8, seed=2)
    return SlideCase("aperio_even", slide.path, write_demo_annotations(slide, folder / "even.xml"))


@pytest.fixture(scope="session")
def generic_case(tmp_path_factory) -> SlideCase:
    """Generic tiled pyramidal TIFF with downsample-2 levels."""
    folder = tmp_path_factory.mktemp("generic")
    slide = write_demo_slide(
        folder / "generic.tif", width=3000, height=2000, levels=4, downsample=2,
        aperio=False, n_glomeruli=6, seed=3,
    )
    return SlideCase("generic", slide.path, write_demo_annotations(slide, folder / "generic.xml"))


@pytest.fixture(scope="session")
def wsipacker_case() -> SlideCase:
    return SlideCase(
        "wsipacker", SLIDES / "wsipacker_example.tif", ANNOTATIONS / "wsipacker_example.xml"
    )


def read_like_openslide(slide_path: Path, x: int, y: int, level: int, size: int) -> np.ndarray:
    """What a user gets from OpenSlide for a stored patch: read_region composited onto white."""
    import openslide

    with openslide.OpenSlide(slide_path) as slide:
        rgba = np.asarray(slide.read_region((x, y), level, (size, size)))
    return composite_on_white(rgba)


@functools.lru_cache(maxsize=8)
def _level_page(slide_path: Path, level: int) -> np.ndarray:
    """The whole level decoded by tifffile's own page reader (not wsizarr's tile reader): the
    tiled page with OpenSlide's size for the level."""
    import openslide
    import tifffile

    with openslide.OpenSlide(slide_path) as slide:
        width, height = slide.level_dimensions[level]
    with tifffile.TiffFile(slide_path) as tif:
        (page,) = [p for p in tif.pages if p.is_tiled and (p.imagewidth, p.imagelength) == (width, height)]
        return page.asarray()


def read_level_pixels(slide_path: Path, x: int, y: int, level: int, size: int) -> np.ndarray:
    """An independent decode of a stored patch: the level's own pixels at
    ``floor(x / downsample), floor(y / downsample)``, white outside the level."""
    import openslide

    with openslide.OpenSlide(slide_path) as slide:
        downsample = slide.level_downsamples[level]
    pixels = _level_page(slide_path, level)
    px, py = math.floor(x / downsample), math.floor(y / downsample)
    out = np.full((size, size, 3), 255, np.uint8)
    top, left = max(py, 0), max(px, 0)
    part = pixels[top : py + size, left : px + size]
    out[top - py : top - py + part.shape[0], left - px : left - px + part.shape[1]] = part
    return out


# --- S3: a real S3-compatible server on 127.0.0.1 (tests/s3server.py) ---------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS (moto's server mode where it cannot start): endpoint, credentials, a fresh bucket.

    Sets nothing global; tests pass ``s3_server.options`` to ``parse_location``.
    """
    from .s3server import s3_server as start

    with start(tmp_path_factory.mktemp("s3")) as server:
        yield server


def slide_rows(store, storage_options=None) -> list[dict]:
    """The store's slide table as one dict per slide (the shape schema 1 kept in the
    attributes), with the names of each slide's annotations."""
    from wsizarr._locations import parse_location
    from wsizarr.store._manifest import read_table
    from wsizarr.store._store import slide_table

    import zarr

    group = zarr.open_group(parse_location(store, storage_options).open("r"), mode="r")
    slides = slide_table(group)
    annotations = read_table(group["annotations"], ("slide", "name", "exclusion"))
    rows = []
    for i in range(len(slides)):
        info, resolution = slides.info(i), slides.resolution(i)
        mine = (annotations["slide"] == i) & ~annotations["exclusion"]
        rows.append({
            "path": info.path, "vendor": info.vendor, "dimensions": list(info.dimensions),
            "level_downsamples": list(info.level_downsamples),
            "level_dimensions": [list(d) for d in info.level_dimensions],
            "mpp": None if info.mpp is None else list(info.mpp), "level": resolution.level,
            "read_size_px": resolution.read_size_px, "effective_mpp": resolution.mpp,
            "reader": slides.reader(i), "content_hash": str(slides.columns["content_hash"][i]),
            "annotations": slides.annotations(i), "annotation_names": list(annotations["name"][mine]),
            "plan_sha256": str(slides.columns["plan_sha256"][i]),
        })
    return rows


# --- where a store lives: one fixture over every kind of location ----------------------------


@dataclass(frozen=True)
class StoreLocation:
    """An output location not yet used: a directory, a ``.zip`` file or an ``s3://`` prefix."""

    kind: str  # "dir", "zip" or "s3"
    url: str
    options: Mapping[str, str] | None = None  # storage options (S3 only)

    @property
    def cli(self) -> list[str]:
        """The ``--storage-option`` arguments the command line needs for this location."""
        return storage_option_args(self.options)

    def sibling(self, name: str) -> StoreLocation:
        """Another unused location of the same kind beside this one, named ``name``."""
        suffix = ".zip" if self.kind == "zip" else ".zarr"
        return StoreLocation(self.kind, f"{self.url.rsplit('/', 1)[0]}/{name}{suffix}", self.options)

    def __str__(self) -> str:
        return self.url


@pytest.fixture(params=["dir", "zip", "s3"])
def store_location(request, tmp_path) -> StoreLocation:
    """The output location of one test, once as a directory, once as a ``.zip`` file and once
    as a fresh prefix on the test S3 server (started only for the ``s3`` case)."""
    if request.param in ("dir", "zip"):
        (tmp_path / "out").mkdir()
    if request.param == "dir":
        return StoreLocation("dir", str(tmp_path / "out" / "store.zarr"))
    if request.param == "zip":
        return StoreLocation("zip", str(tmp_path / "out" / "store.zip"))
    server = request.getfixturevalue("s3_server")
    return StoreLocation("s3", server.url(f"{uuid.uuid4().hex}/store.zarr"), server.options)
