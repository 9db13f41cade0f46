"""``wsizarr.subset`` / ``wsizarr subset``: the new store holds exactly the selected patches
(pixels, masks, coordinates, quality and added arrays), passes ``verify``, reads like any store,
and bad input leaves the output as it was; on a directory, a zip and S3."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import zarr

import wsizarr
from wsizarr import IncompleteStoreError, ParameterError, StoreError, StoreExistsError
from wsizarr.curate._added import add_array
from wsizarr._locations import parse_location
from wsizarr.store._manifest import read_table
from wsizarr.store._shards import ShardIndex, shard_key
from wsizarr.store._store import open_for_writing, read_manifest, write_manifest

from .helpers import assert_one_line_error, assert_same_store, run, store_bytes

# 48 patches of 32 x 32 at level 1 in 12 shards of 4, with masks, from two slides
SMALL = dict(level=1, patch_size=32, per_annotation=3, shard_size=4, seed=1, masks=True)
COMPARED = ("patches", "masks", "x", "y", "level", "annotation_id", "label", "padded", "slide_path",
            "annotation_name", "tissue_fraction", "sharpness", "pen_fraction", "brightness", "saturation")


def mean_colour(batch: np.ndarray) -> np.ndarray:
    return batch.reshape(len(batch), -1, 3).mean(axis=1, dtype=np.float64).astype(np.float32)


@pytest.fixture(scope="module")
def source(tmp_path_factory, aperio_even_case, generic_case):
    """A two-slide store with masks, quality arrays and an added array ``colour``."""
    url = str(tmp_path_factory.mktemp("subset") / "source.zarr")
    slides = [aperio_even_case.slide, generic_case.slide]
    wsizarr.extract(slides, [aperio_even_case.annotations, generic_case.annotations], url, **SMALL)
    add_array(url, "colour", mean_colour, workers=1)
    return url


def _same_patches(source: str, chosen: np.ndarray, subset, options=None) -> None:
    """The subset's dataset is the source's ``isel(patch=chosen)`` (slides compared by path)."""
    expected = wsizarr.open_dataset(source, names=True).isel(patch=chosen)
    got = wsizarr.open_dataset(subset, names=True, storage_options=options)
    assert got.sizes["patch"] == len(chosen)
    for name in (*COMPARED, "colour"):
        np.testing.assert_array_equal(got[name].values, expected[name].values, err_msg=name)


def test_by_label_copies_exactly_the_selected_patches(source, tmp_path):
    table = wsizarr.read_patch_table(source)
    chosen = table.select(labels=["sclerotic"])
    assert 0 < len(chosen) < len(table)
    summary = wsizarr.subset(source, tmp_path / "s.zarr", labels=["sclerotic"], workers=2)
    assert summary.n_patches == len(chosen) and summary.source_patches == len(table)
    _same_patches(source, chosen, tmp_path / "s.zarr")
    report = wsizarr.verify(tmp_path / "s.zarr", sample=16)
    assert report.ok, report.problems
    manifest = read_manifest(zarr.open_group(str(tmp_path / "s.zarr"), mode="r"))
    assert manifest.label_names == table.label_names and manifest.subset is not None
    assert manifest.subset.source == source and manifest.subset.source_patches == len(table)
    assert manifest.subset.selection == {"labels": ["sclerotic"]}
    assert manifest.added["colour"].complete and manifest.added["colour"].shape == (len(chosen), 3)


def test_the_chunks_are_the_sources_bytes(source, tmp_path):
    """Copied as stored: every chunk of the new shards is the source's chunk of that patch."""
    table = wsizarr.read_patch_table(source)
    chosen = table.select(labels=["glomerulus"], include_padded=False)
    wsizarr.subset(source, tmp_path / "s.zarr", labels=["glomerulus"], include_padded=False)
    for name, ndim in (("patches", 4), ("masks", 3)):
        def chunk(store, patch):
            data = (tmp_path / store / shard_key(name, patch // 4, ndim)).read_bytes() if store != "src" else \
                open(f"{source}/{shard_key(name, patch // 4, ndim)}", "rb").read()
            offset, nbytes = ShardIndex.parse(data, 4).chunk(patch % 4)
            return data[offset:offset + nbytes]
        for new, old in enumerate(chosen.tolist()):
            assert chunk("s.zarr", new) == chunk("src", old), (name, new)


def test_by_slide_keeps_only_that_slides_tables(source, tmp_path):
    table = wsizarr.read_patch_table(source)
    chosen = table.select(slides=["generic"])
    wsizarr.subset(source, tmp_path / "s.zarr", slides=["generic.tif"])
    _same_patches(source, chosen, tmp_path / "s.zarr")
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    old = zarr.open_group(source, mode="r")
    slides = read_table(group["slides"])
    assert [str(p) for p in slides["path"]] == [str(read_table(old["slides"])["path"][1])]
    assert int(slides["first_patch"][0]) == 0 and int(slides["n_patches"][0]) == len(chosen)
    mine = read_table(old["annotations"])["slide"] == 1
    annotations = read_table(group["annotations"])
    assert (annotations["slide"] == 0).all() and len(annotations["id"]) == int(mine.sum())
    np.testing.assert_array_equal(annotations["id"], read_table(old["annotations"])["id"][mine])
    before = wsizarr.store._manifest.read_annotations(old["annotations"], range(int(np.argmax(mine)), len(mine)))
    after = wsizarr.store._manifest.read_annotations(group["annotations"], range(0, len(annotations["id"])))
    for a, b in zip(before, after):
        assert a.id == b.id and a.bbox == b.bbox and all(np.array_equal(x, y) for x, y in zip(a.rings, b.rings))
    assert wsizarr.verify(tmp_path / "s.zarr", sample=8).ok


def test_a_split_gives_two_stores_that_partition_the_source(source, tmp_path):
    table = wsizarr.read_patch_table(source)
    train, validation = table.split(0.25, by="annotation", seed=0)
    wsizarr.subset(source, tmp_path / "train.zarr", indices=train)
    wsizarr.subset(source, tmp_path / "validation.zarr", indices=validation)
    _same_patches(source, train, tmp_path / "train.zarr")
    _same_patches(source, validation, tmp_path / "validation.zarr")
    assert len(train) + len(validation) == len(table) and not set(train) & set(validation)
    manifest = read_manifest(zarr.open_group(str(tmp_path / "train.zarr"), mode="r"))
    digest = hashlib.sha256(np.unique(train).astype("<i8").tobytes()).hexdigest()
    assert manifest.subset.selection == {"indices_sha256": digest, "n_indices": len(train)}
    for half in ("train.zarr", "validation.zarr"):
        assert wsizarr.verify(tmp_path / half, sample=8).ok
        batches = list(wsizarr.iter_batches(tmp_path / half, 8, shuffle=False, added=("colour",)))
        assert sum(len(b["index"]) for b in batches) == len(train if half == "train.zarr" else validation)


def test_quality_bounds_select_and_are_recorded(source, tmp_path):
    table = wsizarr.read_patch_table(source)
    assert set(table.quality) == {"tissue_fraction", "sharpness", "pen_fraction", "brightness", "saturation"}
    tissue, sharpness = table.quality["tissue_fraction"], table.quality["sharpness"]
    low, high = np.percentile(tissue, 30), float(np.median(sharpness))
    chosen = table.select(min_tissue=low, min_sharpness=high, max_pen=0.5, bounds={"brightness": (0.0, 0.99)})
    expected = np.flatnonzero((tissue >= low) & (sharpness >= high) & (table.quality["pen_fraction"] <= 0.5)
                              & (table.quality["brightness"] <= 0.99))
    np.testing.assert_array_equal(chosen, expected)
    assert 0 < len(chosen) < len(table)
    wsizarr.subset(source, tmp_path / "q.zarr", min_tissue=low, min_sharpness=high, max_pen=0.5,
                   bounds={"brightness": (0.0, 0.99)})
    _same_patches(source, chosen, tmp_path / "q.zarr")
    assert wsizarr.verify(tmp_path / "q.zarr", sample=8).ok
    recorded = read_manifest(zarr.open_group(str(tmp_path / "q.zarr"), mode="r")).subset.selection["quality"]
    assert recorded == {"brightness": [0.0, 0.99], "tissue_fraction": [float(low), None],
                        "sharpness": [high, None], "pen_fraction": [None, 0.5]}


def test_on_every_kind_of_location(source, store_location, tmp_path):
    """A zip or S3 source, written to a directory, a zip or S3, then replaced (--overwrite)."""
    packed = tmp_path / "source.zip"
    parse_location(str(packed)).pack(parse_location(source))
    options = store_location.options
    table = wsizarr.read_patch_table(source)
    chosen = table.select(labels=["glomerulus"], slides=["even", 1])
    wsizarr.subset(packed, store_location.url, labels=["glomerulus"], slides=["even", 1],
                   storage_options=options)
    _same_patches(source, chosen, store_location.url, options)
    assert wsizarr.verify(store_location.url, sample=4, storage_options=options).ok
    wsizarr.subset(packed, store_location.url, slides=[0], overwrite=True, storage_options=options)
    _same_patches(source, table.select(slides=[0]), store_location.url, options)
    sibling = store_location.sibling("of-subset")  # the subset as a source
    wsizarr.subset(store_location.url, sibling.url, labels=["glomerulus"], storage_options=options)
    _same_patches(source, table.select(slides=[0], labels=["glomerulus"]), sibling.url, options)


def test_bad_input_is_one_line_and_leaves_out_as_it_was(source, tmp_path):
    out = tmp_path / "s.zarr"
    wsizarr.subset(source, out, labels=["sclerotic"])
    before = store_bytes(out)
    for kwargs, error, fragment in [
        ({"labels": ["glomerulus"]}, StoreExistsError, "overwrite=True"),
        ({"labels": ["nope"], "overwrite": True}, ParameterError, "no label 'nope'"),
        ({"min_tissue": 1.5, "overwrite": True}, ParameterError, "no patch matches"),
        ({"bounds": {"blur": (0, 1)}, "overwrite": True}, ParameterError, "no quality measure 'blur'"),
        ({"indices": [10**6], "overwrite": True}, ParameterError, "patch indices must lie"),
    ]:
        with pytest.raises(error, match=fragment) as caught:
            wsizarr.subset(source, out, **kwargs)
        assert "\n" not in str(caught.value)
        assert store_bytes(out) == before
        assert not (tmp_path / "s.zarr.partial.zarr").exists()
    with pytest.raises(ParameterError, match="source store itself"):
        wsizarr.subset(source, source, labels=["sclerotic"], overwrite=True)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="is not a wsizarr store"):
        wsizarr.subset(source, folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_sources_it_cannot_copy_are_refused(source, tmp_path, aperio_even_case):
    plain = tmp_path / "plain.zarr"
    wsizarr.extract(aperio_even_case.slide, aperio_even_case.annotations, plain, **{**SMALL, "masks": False}, quality=False)
    with pytest.raises(ParameterError, match="has no tissue_fraction; extract with quality=True"):
        wsizarr.subset(plain, tmp_path / "q.zarr", min_tissue=0.5)
    assert not (tmp_path / "q.zarr").exists()
    unfinished = tmp_path / "unfinished.zarr"
    shutil.copytree(source, unfinished)
    group = open_for_writing(str(unfinished))
    write_manifest(group, wsizarr.store._manifest.Manifest(**{**read_manifest(group).__dict__, "complete": False}))
    with pytest.raises(IncompleteStoreError):
        wsizarr.subset(unfinished, tmp_path / "u.zarr")
    legacy = tmp_path / "legacy.zarr"
    shutil.copytree(plain, legacy)
    raw = zarr.open_group(str(legacy), mode="r+", use_consolidated=False)
    raw.attrs["wsizarr"] = {**raw.attrs["wsizarr"], "schema_version": 1, "slides": []}
    with pytest.raises(StoreError, match="wsizarr migrate"):
        wsizarr.subset(legacy, tmp_path / "l.zarr")


def test_an_interrupted_subset_leaves_out_as_it_was_and_is_cleared_next_time(source, tmp_path):
    out = tmp_path / "s.zarr"
    wsizarr.subset(source, out, labels=["sclerotic"])
    before = store_bytes(out)

    def crash(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wsizarr.subset(source, out, labels=["glomerulus"], overwrite=True, progress=crash, workers=1)
    assert store_bytes(out) == before
    partial = tmp_path / "s.zarr.partial.zarr"
    assert partial.exists() and not read_manifest(zarr.open_group(str(partial), mode="r")).complete
    wsizarr.subset(source, out, labels=["glomerulus"], overwrite=True)
    assert not partial.exists()
    wsizarr.subset(source, tmp_path / "direct.zarr", labels=["glomerulus"])
    assert_same_store(out, tmp_path / "direct.zarr")


def test_cli(source, tmp_path):
    indices = tmp_path / "train.txt"
    train, _ = wsizarr.read_patch_table(source).split(0.5, seed=1)
    indices.write_text("\n".join(map(str, train)))
    result = run("subset", source, tmp_path / "s.zip", "--indices", indices, "--exclude-padded", "--min-tissue", "0")
    assert f"of {len(wsizarr.read_patch_table(source))} patches" in result.stdout
    chosen = wsizarr.read_patch_table(source).select(indices=train, include_padded=False)
    _same_patches(source, chosen, tmp_path / "s.zip")
    info = run("info", tmp_path / "s.zip").stdout
    assert "subset of" in info and "indices_sha256=" in info and "include_padded=False" in info
    assert run("verify", tmp_path / "s.zip", "--sample", "4").returncode == 0
    assert_one_line_error(run("subset", source, tmp_path / "s.zip", expect=1), "--overwrite")
    assert_one_line_error(run("subset", source, tmp_path / "t.zarr", "--label", "nope", expect=1), "no label 'nope'")
    assert not (tmp_path / "t.zarr").exists()


def test_a_damaged_source_chunk_is_named_and_nothing_is_published(source, tmp_path):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(source, damaged)
    shard = damaged / shard_key("patches", 1, 4)
    data = bytearray(shard.read_bytes())
    offset, _ = ShardIndex.parse(bytes(data), 4).chunk(2)
    data[offset + 5] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(wsizarr.CorruptStoreError, match=r"shard 1 of 'patches' is unreadable \(patch 6 "):
        wsizarr.subset(damaged, tmp_path / "s.zarr", workers=1)
    assert not (tmp_path / "s.zarr").exists()
    wsizarr.subset(damaged, tmp_path / "s.zarr", indices=[0, 1, 2, 3, 8])  # the damaged shard avoided
    assert wsizarr.verify(tmp_path / "s.zarr", sample=0).ok
