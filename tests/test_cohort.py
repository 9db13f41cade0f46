"""Many slides into one store: matching by name, skipping unreadable slides, appending."""

from __future__ import annotations

import shutil

import pytest
import zarr

from wsizarr import IncompleteStoreError, ParameterError, StoreError, WsizarrError, extract, open_dataset, store_info
from wsizarr.slides._demo import write_demo_annotations, write_demo_slide

from .helpers import assert_same_store, run

KWARGS = dict(level=1, patch_size=48, per_annotation=7, shard_size=16, seed=3, masks=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three small Aperio-style slides in slides/, their ASAP files in annotations/."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "slides").mkdir()
    (root / "annotations").mkdir()
    slides = []
    for i, name in enumerate(["A-001", "B-002", "C-003"]):
        slide = write_demo_slide(root / "slides" / f"{name}.svs", width=2048, height=1536,
                                 n_glomeruli=3 + i, glomerulus_px=180, seed=10 + i)
        write_demo_annotations(slide, root / "annotations" / f"{name}.xml")
        slides.append(slide.path)
    return root, slides


def test_a_folder_of_annotations_matches_slides_by_name(tmp_path, cohort):
    root, slides = cohort
    orphan = root / "annotations" / "Z-999.xml"
    shutil.copy(root / "annotations" / "A-001.xml", orphan)
    lonely = tmp_path / "D-004.svs"
    shutil.copy(slides[0], lonely)
    try:
        summary = extract([*slides, lonely], root / "annotations", tmp_path / "c.zarr", **KWARGS)
    finally:
        orphan.unlink()
    assert summary.n_slides == 3 and summary.n_patches == (3 + 4 + 5) * 7
    assert summary.slides_without_annotations == (str(lonely),)
    assert summary.annotations_without_slides == (str(orphan),)
    info = store_info(tmp_path / "c.zarr")
    assert list(info["per_slide"].values()) == [21, 28, 35]
    dataset = open_dataset(tmp_path / "c.zarr")
    assert sorted(set(dataset.slide.values.tolist())) == [0, 1, 2]


def test_an_unreadable_slide_is_skipped_unless_strict(tmp_path, cohort):
    root, slides = cohort
    broken_dir = tmp_path / "slides"
    broken_dir.mkdir()
    broken = broken_dir / "B-002.svs"
    broken.write_bytes(b"II*\x00 not really a tiff")
    summary = extract([slides[0], broken, slides[2]], root / "annotations", tmp_path / "s.zarr", **KWARGS)
    assert summary.n_slides == 2 and [f.path for f in summary.failed_slides] == [str(broken)]
    assert "B-002.svs" in summary.failed_slides[0].reason
    assert summary.n_patches == (3 + 5) * 7
    with pytest.raises(WsizarrError, match="B-002.svs"):
        extract([slides[0], broken], root / "annotations", tmp_path / "strict.zarr", strict=True, **KWARGS)
    assert not (tmp_path / "strict.zarr").exists()
    result = run("extract", slides[0], broken, "--annotations", root / "annotations", "--out",
                 tmp_path / "cli.zarr", "--level", "1", "--patch-size", "48", "--per-annotation", "2")
    assert "wsizarr: skipped" in result.stderr and "B-002.svs" in result.stderr


def test_append_equals_extracting_everything_at_once(tmp_path, cohort):
    root, slides = cohort
    everything = tmp_path / "all.zarr"
    extract(slides, root / "annotations", everything, **KWARGS)
    grown = tmp_path / "grown.zarr"
    extract(slides[:1], root / "annotations", grown, **KWARGS)  # 21 patches: a partial shard
    summary = extract(slides[1:], root / "annotations", grown, append=True, **KWARGS)
    assert summary.n_patches == 84 and summary.n_slides == 3
    assert summary.shards_written == 5  # the partial shard 1 rewritten with its old patches, 2..5 new
    assert_same_store(everything, grown)
    assert store_info(grown)["complete"] is True


def test_append_refuses_a_slide_already_in_the_store(tmp_path, cohort):
    root, slides = cohort
    store = tmp_path / "dup.zarr"
    extract(slides[:2], root / "annotations", store, **KWARGS)
    copy = tmp_path / "renamed" / "C-003.svs"
    copy.parent.mkdir()
    shutil.copy(slides[0], copy)  # A's content under C's name
    with pytest.raises(StoreError, match="C-003.svs: this slide \\(same content\\) is already in"):
        extract([copy], root / "annotations", store, append=True, **KWARGS)
    assert store_info(store)["complete"] is True and store_info(store)["n_patches"] == 49


def test_append_keeps_label_codes_and_adds_new_labels_at_the_end(tmp_path, cohort):
    root, slides = cohort
    relabelled = tmp_path / "C-003.xml"
    relabelled.write_text((root / "annotations" / "C-003.xml").read_text().replace('PartOfGroup="glomerulus"', 'PartOfGroup="aaa-new"'))
    store = tmp_path / "labels.zarr"
    extract(slides[:1], root / "annotations", store, **KWARGS)
    before = zarr.open_group(store, mode="r").attrs["wsizarr"]["label_names"]
    extract(slides[2], relabelled, store, append=True, **KWARGS)
    after = zarr.open_group(store, mode="r").attrs["wsizarr"]["label_names"]
    assert after[: len(before)] == before and after[-1] == "aaa-new"
    dataset = open_dataset(store)
    assert set(dataset.label.values[dataset.slide.values == 1]) <= {"aaa-new", "sclerotic"}


def test_label_order_fixes_codes(tmp_path, cohort):
    root, slides = cohort
    store = tmp_path / "order.zarr"
    extract(slides[0], root / "annotations" / "A-001.xml", store, label_order=["sclerotic", "glomerulus", "other"], **KWARGS)
    assert zarr.open_group(store, mode="r").attrs["wsizarr"]["label_names"] == ["sclerotic", "glomerulus", "other"]
    with pytest.raises(ParameterError, match="labels glomerulus are not in the label order"):
        extract(slides[0], root / "annotations" / "A-001.xml", tmp_path / "x.zarr", label_order=["sclerotic"], **KWARGS)


def test_several_slides_need_matching_annotations(tmp_path, cohort):
    root, slides = cohort
    with pytest.raises(ParameterError, match="several slides need a folder"):
        extract(slides, root / "annotations" / "A-001.xml", tmp_path / "x.zarr")
    with pytest.raises(ParameterError, match="no annotation file matches any slide"):
        extract(slides, tmp_path, tmp_path / "x.zarr")


def test_an_interrupted_append_resumes_to_the_same_store(tmp_path, cohort):
    root, slides = cohort
    everything = tmp_path / "all.zarr"
    extract(slides, root / "annotations", everything, **KWARGS)
    grown = tmp_path / "grown.zarr"
    extract(slides[:1], root / "annotations", grown, **KWARGS)

    def interrupt(done, total):
        if done > 21:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(slides[1:], root / "annotations", grown, append=True, workers=1, progress=interrupt, **KWARGS)
    with pytest.raises(IncompleteStoreError):
        open_dataset(grown)
    with pytest.raises(StoreError, match=r"did not finish; finish it \(resume=True\)"):
        extract(slides[1:], root / "annotations", grown, append=True, **KWARGS)
    with pytest.raises(StoreError, match=r"the interrupted run read 2 slide\(s\), this one 1"):
        extract(slides[2:], root / "annotations", grown, append=True, resume=True, **KWARGS)
    extract(slides[1:], root / "annotations", grown, append=True, resume=True, **KWARGS)
    assert_same_store(everything, grown)
