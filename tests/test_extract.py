from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

import wsizarr
from wsizarr import IncompleteStoreError, ParameterError, StoreError, extract, open_dataset
from wsizarr.annotations._files import read_annotations
from wsizarr.extraction._sampling import plan_jitter
from wsizarr.slides._slide import open_slide, slide_info

from .conftest import ANNOTATIONS, SLIDES, read_level_pixels, read_like_openslide, slide_rows
from .helpers import assert_same_store


def _assert_pixel_exact(store, slide_path, patch_size):
    """Stored patches equal an independent decode: the level's own pixels (tifffile's page
    decode) for the tiles reader, read_region for OpenSlide's; at whole downsamples both."""
    group = zarr.open_group(store, mode="r")
    patches = group["patches"][:]
    (slide,) = slide_rows(store)
    whole = float(slide["level_downsamples"][int(group["level"][0])]).is_integer()
    references = [read_level_pixels] if slide["reader"] == "tiles" else [read_like_openslide]
    references += [read_like_openslide, read_level_pixels] if whole else []
    for i in range(patches.shape[0]):
        for reference in references:
            expected = reference(slide_path, int(group["x"][i]), int(group["y"][i]), int(group["level"][i]), patch_size)
            np.testing.assert_array_equal(patches[i], expected, err_msg=f"patch {i}, {reference.__name__}")


@pytest.mark.parametrize("reader", ["tiles", "openslide"])
@pytest.mark.parametrize("case_name", ["aperio_case", "aperio_even_case", "generic_case", "wsipacker_case"])
def test_every_patch_equals_an_independent_decode_at_every_level(request, tmp_path, case_name, reader):
    case = request.getfixturevalue(case_name)
    with open_slide(case.slide) as slide:
        levels = range(slide.level_count)
    for level in levels:
        store = tmp_path / f"{case.name}-{level}.zarr"
        summary = extract(
            case.slide, case.annotations, store, level=level, patch_size=64,
            per_annotation=6, shard_size=16, seed=level, reader=reader,
        )
        assert summary.n_patches == 6 * len(read_annotations(case.annotations))
        assert slide_rows(store)[0]["reader"] == reader
        _assert_pixel_exact(store, case.slide, 64)


def test_real_cmu_slide_with_generated_annotations(tmp_path):
    xml = tmp_path / "cmu.xml"
    xml.write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        + "".join(
            f'<Annotation Name="g{i}" Type="Rectangle" PartOfGroup="glom"><Coordinates>'
            + "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}" />' for k, (x, y) in enumerate(
                [(cx, cy), (cx + 150, cy), (cx + 150, cy + 150), (cx, cy + 150)]))
            + "</Coordinates></Annotation>"
            for i, (cx, cy) in enumerate([(300, 400), (1200, 1800), (2100, 2900)])
        )
        + "</Annotations></ASAP_Annotations>"
    )
    store = tmp_path / "cmu.zarr"
    extract(SLIDES / "CMU-1-Small-Region.svs", xml, store, per_annotation=10, patch_size=128, shard_size=8)
    _assert_pixel_exact(store, SLIDES / "CMU-1-Small-Region.svs", 128)
    dataset = open_dataset(store)
    assert (dataset.label == "glom").all()
    assert dataset.patches.mean() < 250  # real tissue, not blank


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory, aperio_even_case):
    store = tmp_path_factory.mktemp("store") / "demo.zarr"
    summary = extract(
        aperio_even_case.slide, aperio_even_case.annotations, store,
        level=1, patch_size=96, per_annotation=30, shard_size=64, seed=7,
    )
    return store, summary


def test_store_layout_and_attributes(demo_store, aperio_even_case):
    store, summary = demo_store
    assert summary.n_patches == 240 and summary.n_shards == 4 and summary.shards_written == 4
    group = zarr.open_group(store, mode="r")
    patches = group["patches"]
    assert patches.shape == (240, 96, 96, 3) and patches.dtype == np.uint8
    assert patches.chunks == (1, 96, 96, 3) and patches.shards == (64, 96, 96, 3)
    assert patches.metadata.dimension_names == ("patch", "row", "column", "channel")
    codecs = json.loads((store / "patches" / "zarr.json").read_text())["codecs"]
    assert codecs[0]["name"] == "sharding_indexed"
    assert [c["name"] for c in codecs[0]["configuration"]["codecs"]] == ["bytes", "zstd", "crc32c"]
    for name, dtype in [("x", "int64"), ("y", "int64"), ("level", "int32"),
                        ("annotation_id", "int64"), ("label", "int32"), ("slide", "int32"),
                        ("padded", "bool")]:
        assert group[name].shape == (240,) and group[name].dtype == np.dtype(dtype)
        assert group[name].metadata.dimension_names == ("patch",)
    shard_files = sorted((store / "patches").rglob("c/*/0/0/0"))
    assert len(shard_files) == 4  # one file per shard of 64 patches
    meta = group.attrs["wsizarr"]
    assert meta["schema_version"] == wsizarr.SCHEMA_VERSION and meta["complete"] is True
    assert meta["wsizarr_version"] == wsizarr.__version__
    assert meta["parameters"] == {
        "sampler": "jitter", "level": 1, "mpp": None, "magnification": None, "patch_size": 96,
        "per_annotation": 30, "stride": None,
        "min_overlap": 0.5, "background": 0, "masks": False, "quality": True, "drop_partial": False, "seed": 7,
        "shard_size": 64, "codec": "zstd", "color": "unchanged", "label_map": None, "keep_only": False,
        "label_from": "name", "exclude_detections": False, "exclude_labels": [],
        "strict_annotations": False, "reader": "auto",
    }
    (slide,) = slide_rows(store)
    assert slide["vendor"] == "aperio" and slide["level_downsamples"] == [1.0, 4.0, 16.0]
    assert slide["level"] == 1 and slide["read_size_px"] == 96 and slide["effective_mpp"] == 1.0
    assert len(slide["content_hash"]) >= 40
    assert slide["dimensions"] == [4096, 3072] and slide["mpp"] == [0.25, 0.25]
    assert slide["annotation_names"][:2] == ["Glomerulus 0", "Glomerulus 1"]
    assert meta["label_names"] == group["label"].attrs["label_names"]
    assert "_shards_done" not in group


def test_store_matches_the_plan(demo_store, aperio_even_case):
    store, _ = demo_store
    with open_slide(aperio_even_case.slide) as slide:
        info = slide_info(slide, aperio_even_case.slide)
    plan = plan_jitter(read_annotations(aperio_even_case.annotations), info, level=1,
                       patch_size=96, per_annotation=30, seed=7)
    group = zarr.open_group(store, mode="r")
    for name, values in plan.arrays().items():
        np.testing.assert_array_equal(group[name][:], values, err_msg=name)


def test_xarray_open_zarr_gives_patch_coordinates(demo_store):
    store, _ = demo_store
    dataset = xr.open_zarr(store)
    assert dataset["patches"].dims == ("patch", "row", "column", "channel")
    assert dataset["patches"].dtype == np.uint8
    for name in ("x", "y", "level", "annotation_id", "label", "slide", "padded"):
        assert name in dataset.coords and dataset[name].dims == ("patch",)
    assert set(dataset.data_vars) == {"patches", *wsizarr.QUALITY_MEASURES}
    assert dataset.tissue_fraction.dims == ("patch",) and dataset.sharpness.dtype == np.float32


def test_open_dataset_decodes_labels(demo_store):
    store, _ = demo_store
    dataset = open_dataset(store)
    names = zarr.open_group(store, mode="r").attrs["wsizarr"]["label_names"]
    assert set(np.unique(dataset.label.values)) <= set(names)
    np.testing.assert_array_equal(dataset.label.values, np.array(names)[dataset.label_code.values])
    first = dataset.isel(patch=0)
    assert first.patches.shape == (96, 96, 3)


def test_resume_with_other_parameters_is_refused(demo_store, aperio_even_case):
    store, _ = demo_store
    with pytest.raises(StoreError, match="other parameters"):
        extract(aperio_even_case.slide, aperio_even_case.annotations, store, level=1,
                patch_size=96, per_annotation=30, shard_size=64, seed=8, resume=True)


def test_incomplete_store_is_resumed_to_the_identical_store(tmp_path, aperio_even_case):
    kwargs = dict(level=0, patch_size=64, per_annotation=10, shard_size=16, seed=1)
    reference = tmp_path / "reference.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, reference, **kwargs)
    crashed = tmp_path / "crashed.zarr"

    def stop_after_two_shards(done, total):
        if done >= 32:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(aperio_even_case.slide, aperio_even_case.annotations, crashed, workers=1,
                progress=stop_after_two_shards, **kwargs)
    assert wsizarr.store_info(crashed)["complete"] is False
    with pytest.raises(IncompleteStoreError, match="run the same extraction with resume=True"):
        open_dataset(crashed)
    summary = extract(aperio_even_case.slide, aperio_even_case.annotations, crashed, resume=True, **kwargs)
    assert 0 < summary.shards_written < summary.n_shards
    assert_same_store(reference, crashed)
    # the count and the rate are of the patches this run wrote, the others said to be there
    already = 16 * (summary.n_shards - summary.shards_written)  # whole shards, the last one written now
    assert already >= 32 and summary.patches_written == summary.n_patches - already
    assert summary.patches_per_second == summary.patches_written / summary.seconds
    assert f"written) in {summary.seconds:.1f} s, {summary.patches_written} patches written now and {already} already there, " in str(summary)


def test_a_store_killed_while_being_created_is_created_again_on_resume(tmp_path, aperio_even_case):
    """A kill between the group's attributes and its arrays (create_store writes them in that
    order) leaves a store without a run: --resume creates it again instead of failing."""
    import shutil

    from wsizarr.store._manifest import Manifest
    from wsizarr.store._store import create_store

    kwargs = dict(level=1, patch_size=64, per_annotation=5, shard_size=16, seed=1)
    reference = tmp_path / "reference.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, reference, **kwargs)
    crashed = tmp_path / "crashed.zarr"
    metadata = dict(zarr.open_group(reference, mode="r").attrs["wsizarr"])
    create_store(crashed, Manifest(wsizarr.__version__, metadata["parameters"], 16, "zstd"), patch_size=64)
    shutil.rmtree(crashed / "annotations")  # as if killed before the last table was created
    summary = extract(aperio_even_case.slide, aperio_even_case.annotations, crashed, resume=True, **kwargs)
    assert summary.shards_written == summary.n_shards
    assert_same_store(reference, crashed)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"level": 7}, ParameterError, "level 7 does not exist"),
        ({"patch_size": -1}, ParameterError, "patch_size"),
        ({"codec": "gif"}, ParameterError, "unknown codec 'gif'"),
        ({"workers": 0}, ParameterError, "workers must be at least 1"),
        ({"shard_size": 0}, ParameterError, "shard_size"),
    ],
)
def test_invalid_parameters_leave_nothing_behind(tmp_path, aperio_case, kwargs, error, message):
    store = tmp_path / "out.zarr"
    with pytest.raises(error, match=message):
        extract(aperio_case.slide, aperio_case.annotations, store, **kwargs)
    assert not store.exists()


def test_no_annotations_is_an_error(tmp_path, aperio_case):
    empty = tmp_path / "empty.xml"
    empty.write_text("<ASAP_Annotations><Annotations/></ASAP_Annotations>")
    with pytest.raises(ParameterError, match="no annotations to extract around"):
        extract(aperio_case.slide, empty, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_records_instead_of_a_file(tmp_path, wsipacker_case):
    records = read_annotations(ANNOTATIONS / "wsipacker_example.xml")
    summary = extract(wsipacker_case.slide, records, tmp_path / "r.zarr", patch_size=64, per_annotation=4)
    assert summary.n_patches == 4
    assert open_dataset(tmp_path / "r.zarr").label.values.tolist() == [""] * 4


@pytest.mark.parametrize("codec", sorted(wsizarr.store._store.CODECS))
def test_every_codec_writes_shards_zarr_reads(tmp_path, aperio_even_case, codec):
    kwargs = dict(level=1, patch_size=48, per_annotation=5, shard_size=16, seed=2)
    store = tmp_path / f"{codec}.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, codec=codec, **kwargs)
    group = zarr.open_group(store, mode="r")
    meta = group.attrs["wsizarr"]
    assert meta["codec"] == codec
    assert len(list((store / "patches").rglob("c/*/0/0/0"))) == 3  # 40 patches, 16 a shard
    if meta["codec_lossless"]:
        _assert_pixel_exact(store, aperio_even_case.slide, 48)
    else:
        patches = group["patches"][:].astype(float)
        expected = np.stack([
            read_like_openslide(aperio_even_case.slide, int(x), int(y), 1, 48)
            for x, y in zip(group["x"][:], group["y"][:])
        ]).astype(float)
        psnr = 10 * np.log10(255**2 / np.mean((patches - expected) ** 2))
        assert psnr > 30, psnr
    assert meta["requires"] == ([] if codec in ("zstd", "blosc-lz4", "none") else ["wsizarr", "imagecodecs"])


def test_optional_codec_store_reads_in_plain_zarr_through_entry_points(tmp_path, aperio_even_case):
    import subprocess
    import sys

    store = tmp_path / "jxl.zarr"
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, codec="jpegxl",
            level=1, patch_size=32, per_annotation=2, shard_size=8)
    expected = zarr.open_group(store, mode="r")["patches"][:]
    code = (
        "import sys, zarr, numpy as np; "
        f"a = zarr.open_group({str(store)!r}, mode='r')['patches'][:]; "
        "np.save(sys.stdout.buffer, a)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    import io

    np.testing.assert_array_equal(np.load(io.BytesIO(result.stdout)), expected)


def test_a_store_made_before_newer_options_takes_appends(tmp_path, aperio_even_case, aperio_case):
    """A store recorded without the options added since (exclude_labels, strict_annotations,
    reader; level 0 as None) is appended to when the run matches how it was made."""
    store = tmp_path / "older.zarr"
    kwargs = dict(patch_size=64, per_annotation=2, shard_size=16, reader="openslide")
    extract(aperio_even_case.slide, aperio_even_case.annotations, store, **kwargs)
    group = zarr.open_group(store, mode="r+")
    meta = group.attrs["wsizarr"]
    older = {k: v for k, v in meta["parameters"].items() if k not in ("exclude_labels", "strict_annotations", "reader")}
    group.attrs["wsizarr"] = {**meta, "parameters": {**older, "level": None}}
    with pytest.raises(StoreError, match="other parameters"):  # tiles would mix pixel semantics
        extract(aperio_case.slide, aperio_case.annotations, store, append=True, **{**kwargs, "reader": "auto"})
    summary = extract(aperio_case.slide, aperio_case.annotations, store, append=True, **kwargs)
    assert summary.n_slides == 2 and summary.n_patches == 32
