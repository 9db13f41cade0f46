"""Schema 2: the slide and annotation tables as arrays, a root zarr.json whose size does not
grow with the cohort, plans written as they arrive, and schema 1 stores read and migrated."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import zarr

import wsizarr
from wsizarr import StoreError, extract, migrate, open_dataset, store_info, verify
from wsizarr.annotations._files import read_annotation_file
from wsizarr.slides._demo import write_demo_annotations, write_demo_slide
from wsizarr.store._manifest import RunState, plan_sha256, read_table
from wsizarr.store._store import begin_run, read_manifest

from .conftest import slide_rows
from .test_cli import run

KWARGS = dict(level=1, patch_size=32, per_annotation=3, shard_size=16, seed=4)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    """Five small distinct slides with their annotation files, named alike."""
    root = tmp_path_factory.mktemp("schema")
    (root / "annotations").mkdir()
    slides = []
    for i in range(5):
        slide = write_demo_slide(root / f"S{i}.svs", width=1536, height=1024, n_glomeruli=2 + i,
                                 glomerulus_px=160, seed=40 + i)
        write_demo_annotations(slide, root / "annotations" / f"S{i}.xml")
        slides.append(slide.path)
    return slides, root / "annotations"


def _root_json(store) -> dict:
    return json.loads((store / "zarr.json").read_text())


def test_root_metadata_does_not_grow_with_the_cohort(tmp_path, small_cohort):
    slides, annotations = small_cohort
    one, five = tmp_path / "one.zarr", tmp_path / "five.zarr"
    extract(slides[:1], annotations, one, **KWARGS)
    extract(slides, annotations, five, **KWARGS)
    attrs_one, attrs_five = (json.dumps(_root_json(s)["attributes"]) for s in (one, five))
    assert "S0.svs" not in attrs_five and "Glomerulus" not in attrs_five  # no per-slide records
    assert abs(len(attrs_five) - len(attrs_one)) < 16  # only counts differ
    texts = []
    for store in (one, five):  # the whole root document differs in numbers (shapes, counts) and labels only
        document = _root_json(store)
        document["attributes"]["wsizarr"]["label_names"] = []
        document["consolidated_metadata"]["metadata"]["label"]["attributes"]["label_names"] = []
        texts.append(re.sub(r"\d+", "0", json.dumps(document)))
    assert texts[0] == texts[1]
    manifest = read_manifest(zarr.open_group(five, mode="r"))
    assert manifest.n_slides == 5 and manifest.n_annotations == sum(2 + i for i in range(5))
    assert manifest.schema_version == wsizarr.SCHEMA_VERSION == 2


def test_the_tables_hold_each_slide_and_annotation(tmp_path, small_cohort):
    slides, annotations = small_cohort
    store = tmp_path / "tables.zarr"
    extract(slides, annotations, store, **KWARGS)
    group = zarr.open_group(store, mode="r")
    table = read_table(group["slides"])
    patch_slide = np.asarray(group["slide"][:])
    arrays = {name: np.asarray(group[name][:]) for name in ("x", "y", "level", "annotation_id", "label", "slide", "padded")}
    for i, path in enumerate(slides):
        rows = slice(int(table["first_patch"][i]), int(table["first_patch"][i] + table["n_patches"][i]))
        assert table["path"][i] == str(path)
        assert set(patch_slide[rows].tolist()) == {i} and (patch_slide == i).sum() == table["n_patches"][i]
        assert table["plan_sha256"][i] == plan_sha256({k: v[rows] for k, v in arrays.items()})
        assert table["level_downsamples"][i][1] == pytest.approx(4.0, rel=1e-3)
        assert np.isnan(table["level_downsamples"][i][3:]).all()  # padded past the slide's levels
    stored = read_table(group["annotations"])
    names = wsizarr.read_patch_table(store).label_names
    for i, path in enumerate(slides):
        file = read_annotation_file(annotations / f"S{i}.xml")
        first = int(table["first_annotation"][i])
        rows = range(first, first + int(table["n_annotations"][i]))
        assert list(stored["name"][rows.start:rows.stop]) == [a.name for a in file.annotations]
        assert [names[c] for c in stored["label"][rows.start:rows.stop]] == [a.label for a in file.annotations]
        for k, annotation in zip(rows, file.annotations):
            np.testing.assert_array_equal(stored["bbox"][k], annotation.bbox)
            ring = int(stored["first_ring"][k])
            start, length = (int(group[f"annotations/{c}"][ring]) for c in ("ring_start", "ring_length"))
            np.testing.assert_array_equal(group["annotations/vertices"][start: start + length], annotation.vertices)


def test_open_dataset_attaches_names_on_request(tmp_path, small_cohort):
    slides, annotations = small_cohort
    store = tmp_path / "names.zarr"
    extract(slides[:2], annotations, store, background=2, **KWARGS)
    plain = open_dataset(store)
    assert "slide_path" not in plain.coords
    ds = open_dataset(store, names=True)
    slide_index = ds["slide"].values
    assert list(ds["slide_path"].values) == [str(slides[i]) for i in slide_index]
    background = ds["annotation_id"].values < 0
    assert background.sum() == 4 and set(ds["annotation_name"].values[background]) == {""}
    rows = slide_rows(store)
    for k in np.flatnonzero(~background)[::7]:
        assert ds["annotation_name"].values[k] == rows[slide_index[k]]["annotation_names"][ds["annotation_id"].values[k]]


def test_a_run_killed_while_planning_is_planned_again(tmp_path, small_cohort):
    """Nothing is written to the shards before the whole plan is in the store, so a run that
    stopped half-way through planning (rows of some slides written) is planned again."""
    slides, annotations = small_cohort
    direct, killed = tmp_path / "direct.zarr", tmp_path / "killed.zarr"
    extract(slides, annotations, direct, **KWARGS)
    extract(slides[:1], annotations, killed, **KWARGS)
    group = zarr.open_group(killed, mode="r+")
    manifest = read_manifest(group)
    writers = begin_run(group, replace(manifest, run=RunState(0, 0, 0), complete=False))
    writers["patches"].append({name: np.full(50, 7, group[name].dtype) for name in
                               ("x", "y", "level", "annotation_id", "label", "slide", "padded")})
    writers["patches"].close()  # a partial plan of other rows, then killed
    with pytest.raises(StoreError, match="did not finish"):
        extract(slides, annotations, killed, append=True, **KWARGS)
    extract(slides, annotations, killed, resume=True, **KWARGS)
    for name in ("patches", "x", "y", "slide", "slides/plan_sha256", "annotations/vertices"):
        np.testing.assert_array_equal(zarr.open_group(direct, mode="r")[name][:], zarr.open_group(killed, mode="r")[name][:])
    assert verify(killed, sample=4).ok


def _as_schema_1(store) -> None:
    """Rewrite ``store`` the way wsizarr 0.1 (schema 1) wrote it: the slide table in the root
    attributes, no table arrays."""
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    rows = slide_rows(store)
    manifest = read_manifest(group)
    arrays = {name: np.asarray(group[name][:]) for name in ("x", "y", "level", "annotation_id", "label", "slide", "padded")}
    legacy = {k: v for k, v in manifest.to_attrs().items() if k not in ("n_slides", "n_annotations")}
    legacy["schema_version"] = 1
    legacy["plan_digest"] = plan_sha256(arrays)
    legacy["slides"] = [
        {k: v for k, v in row.items() if k != "plan_sha256"} for row in rows
    ]
    for table in ("slides", "annotations"):
        del group[table]
    group.attrs["wsizarr"] = legacy
    zarr.consolidate_metadata(group.store)


def test_schema_1_stores_read_and_migrate(tmp_path, small_cohort):
    slides, annotations = small_cohort
    store = tmp_path / "old.zarr"
    extract(slides[:2], annotations, store, **KWARGS)
    before = slide_rows(store)
    _as_schema_1(store)
    info = store_info(store)
    assert info["schema_version"] == 1 and list(info["per_slide"]) == [str(s) for s in slides[:2]]
    assert "read-only: `wsizarr migrate` rewrites it" in run("info", store).stdout
    assert len(open_dataset(store).patch) == info["n_patches"]
    assert verify(store, sample=4).ok
    with pytest.raises(StoreError, match="schema 1.*wsizarr migrate STORE"):
        extract(slides[2], annotations / "S2.xml", store, append=True, **KWARGS)
    result = run("migrate", store)
    assert result.returncode == 0, result.stderr
    assert "schema 2, 2 slides" in result.stdout
    after = slide_rows(store)
    for old, new in zip(before, after):
        assert {k: new[k] for k in ("path", "content_hash", "level", "read_size_px", "annotation_names", "plan_sha256")} == \
            {k: old[k] for k in ("path", "content_hash", "level", "read_size_px", "annotation_names", "plan_sha256")}
    assert verify(store, sample=4).ok
    extract(slides[2], annotations / "S2.xml", store, append=True, **KWARGS)  # now it takes appends
    assert store_info(store)["n_slides"] == 3 and verify(store, sample=4).ok
    assert migrate(store).schema_version == 2  # already schema 2: left as it is


def test_an_append_that_cannot_be_planned_leaves_the_store_as_it_was(tmp_path, small_cohort):
    """An append whose slides give no patch fails before any shard is written: the finished
    store is put back exactly (still complete, same tables), not left looking interrupted."""
    import shutil

    from .helpers import assert_same_store

    slides, annotations = small_cohort
    store, before = tmp_path / "store.zarr", tmp_path / "before.zarr"
    extract(slides[:2], annotations, store, **KWARGS)
    shutil.copytree(store, before)
    outside = tmp_path / "outside.xml"  # one polygon far outside the slide
    outside.write_text(
        '<ASAP_Annotations><Annotations><Annotation Name="far" Type="Polygon" PartOfGroup="glomerulus">'
        '<Coordinates><Coordinate Order="0" X="900000" Y="900000"/><Coordinate Order="1" X="900100" Y="900000"/>'
        '<Coordinate Order="2" X="900100" Y="900100"/></Coordinates></Annotation></Annotations></ASAP_Annotations>'
    )
    with pytest.raises(wsizarr.ParameterError, match="the plan has no patches"):
        extract(slides[2], outside, store, append=True, **KWARGS)
    assert_same_store(before, store)
    assert store_info(store)["complete"] and verify(store, sample=2).ok
    assert not (store / "_shards_done").exists()
