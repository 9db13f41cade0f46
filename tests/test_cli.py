"""The command line, through the installed ``wsizarr`` entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from wsizarr.cli._main import main

from .conftest import ANNOTATIONS, SLIDES, slide_rows
from .helpers import assert_one_line_error, run


def test_demo_extract_and_info(tmp_path):
    demo = run("demo", tmp_path / "demo", "--per-annotation", "5", "--patch-size", "128")
    assert "120 patches in" in demo.stdout and "patches/s" in demo.stdout
    folder = tmp_path / "demo"
    assert {p.name for p in folder.iterdir()} == {"demo.svs", "demo.xml", "demo.zarr"}
    # it says what it writes before it writes it, and ends with the commands to try next, which run
    lines = demo.stdout.splitlines()
    assert lines[0] == f"writing a synthetic Aperio-style slide and its annotations into {folder} ..."
    assert lines[1].startswith(f"wrote {folder / 'demo.svs'} (8000x6000) and {folder / 'demo.xml'} (24 annotations)")
    suggested = [line.split() for line in lines[lines.index(next(line for line in lines if line.startswith("next: "))) + 1:]]
    assert [words[:2] for words in suggested] == [["wsizarr", "info"], ["wsizarr", "verify"], ["wsizarr", "preview"],
                                                  ["wsizarr", "extract"]]
    assert "[complete]" in run(*suggested[0][1:]).stdout
    assert run(*suggested[1][1:], "--sample", "4").stdout.endswith("re-read from their slides: OK\n")
    out = tmp_path / "cli.zarr"
    result = run("extract", folder / "demo.svs", "--annotations", folder / "demo.xml", "--out", out,
                 "--level", "1", "--patch-size", "64", "--per-annotation", "3", "--seed", "5")
    assert result.stdout.strip().splitlines()[-1].startswith("72 patches in")
    info = run("info", out)
    assert "[complete]" in info.stdout and "72 x 64x64x3" in info.stdout
    assert "tables      1 slide, 24 annotations" in info.stdout
    data = json.loads(run("info", out, "--json").stdout)
    assert data["n_patches"] == 72 and sum(data["per_label"].values()) == 72
    # per 64 patches a shard file and a chunk per quality measure, plus a constant: metadata,
    # 1-D arrays and the tables
    assert data["parameters"]["seed"] == 5 and data["files"] <= 6 * 2 + 90
    again = run("extract", folder / "demo.svs", "--annotations", folder / "demo.xml", "--out", out, expect=1)
    assert_one_line_error(again, str(out), "--overwrite")
    replaced = run("extract", folder / "demo.svs", "--annotations", folder / "demo.xml", "--out", out,
                   "--per-annotation", "1", "--overwrite")
    assert "24 patches" in replaced.stdout


@pytest.mark.parametrize(
    ("slide", "annotations", "extra", "fragments"),
    [
        ("missing.svs", "{xml}", [], ["missing.svs", "slide not found"]),
        (SLIDES / "histolab_kidney-48-5.tif", "{xml}", [], ["histolab_kidney-48-5.tif", "tiled pyramidal TIFF"]),
        ("{svs}", "{bad}", [], ["bad.xml:1", "not well-formed XML"]),
        ("{svs}", "nothere.xml", [], ["nothere.xml", "not found"]),
        ("{svs}", "{xml}", ["--level", "9"], ["level 9 does not exist", "levels 0..1"]),
        ("{svs}", "{xml}", ["--patch-size", "0"], ["--patch-size must be at least 1"]),
        ("{svs}", "{xml}", ["--mpp", "0.1"],
         ["--mpp 0.1 is finer than level 0 (40x, 0.25 mpp); ask for --mpp 0.25 or coarser, or choose a --level"]),
    ],
    ids=["missing-slide", "unsupported-slide", "malformed-xml", "missing-xml", "bad-level", "bad-patch-size",
         "too-fine-mpp"],
)
def test_errors_are_one_line_and_leave_no_store(tmp_path, aperio_case, slide, annotations, extra, fragments):
    bad = tmp_path / "bad.xml"
    bad.write_text("<ASAP_Annotations><Annotations><Annotation")
    small = tmp_path / "small.svs"
    from wsizarr.slides._demo import write_demo_annotations, write_demo_slide

    written = write_demo_slide(small, width=1200, height=900, levels=2, n_glomeruli=2, glomerulus_px=100)
    xml = write_demo_annotations(written, tmp_path / "small.xml")
    fill = {"xml": xml, "svs": small, "bad": bad}
    out = tmp_path / "out.zarr"
    result = run("extract", str(slide).format(**fill), "--annotations", str(annotations).format(**fill),
                 "--out", out, *extra, expect=1)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_info_on_missing_and_foreign_paths(tmp_path):
    assert_one_line_error(run("info", tmp_path / "nope.zarr", expect=1), "nope.zarr", "store not found")
    (tmp_path / "plain").mkdir()
    assert_one_line_error(run("info", tmp_path / "plain", expect=1), "plain")


def test_main_can_be_called_directly(tmp_path, capsys):
    assert main(["info", str(tmp_path / "none.zarr")]) == 1
    assert "store not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["extract"])  # argparse usage error: exit code 2


def test_sampler_resolution_and_mask_options(tmp_path, aperio_even_case):
    out = tmp_path / "grid.zarr"
    run("extract", aperio_even_case.slide, "--annotations", aperio_even_case.annotations,
        "--out", out, "--sampler", "grid", "--mpp", "0.5", "--patch-size", "64",
        "--min-overlap", "0.3", "--masks", "--background", "5", "--drop-partial")
    data = json.loads(run("info", out, "--json").stdout)
    assert data["per_label"]["background"] == 5
    params = data["parameters"]
    assert params["sampler"] == "grid" and params["mpp"] == 0.5 and params["level"] is None
    assert params["masks"] is True and params["drop_partial"] is True
    (slide,) = slide_rows(out)
    assert slide["level"] == 0 and slide["read_size_px"] == 128 and slide["effective_mpp"] == 0.5
    bad = run("extract", aperio_even_case.slide, "--annotations", aperio_even_case.annotations,
              "--out", tmp_path / "bad.zarr", "--sampler", "spiral", expect=1)
    assert_one_line_error(bad, "unknown sampler 'spiral'")
    both = run("extract", aperio_even_case.slide, "--annotations", aperio_even_case.annotations,
               "--out", tmp_path / "bad.zarr", "--mpp", "0.5", "--level", "1", expect=2)
    assert "not allowed with argument" in both.stderr


def test_label_map_and_formats_through_the_cli(tmp_path, aperio_even_case):
    out = tmp_path / "mapped.zarr"
    result = run("extract", aperio_even_case.slide, "--annotations", aperio_even_case.annotations,
                 "--out", out, "--per-annotation", "2", "--patch-size", "32",
                 "--label-map", "glomerulus=Normal", "--keep-only", "--label-order", "Normal,Abnormal")
    data = json.loads(run("info", out, "--json").stdout)
    assert data["per_label"] == {"Normal": data["n_patches"]}
    meta = zarr.open_group(out, mode="r").attrs["wsizarr"]
    assert meta["label_names"] == ["Normal", "Abnormal"]
    assert meta["parameters"]["label_map"] == {"glomerulus": "Normal"}
    geojson = tmp_path / "slide.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"classification": {"name": "Tumor"}},
        "geometry": {"type": "Polygon", "coordinates": [[[500, 500], [900, 500], [900, 900], [500, 900], [500, 500]]]},
    }]}))
    result = run("extract", aperio_even_case.slide, "--annotations", geojson, "--out", tmp_path / "g.zarr",
                 "--sampler", "grid", "--patch-size", "100", "--min-overlap", "1")
    assert result.stdout.startswith("16 patches")
    bad = run("extract", aperio_even_case.slide, "--annotations", aperio_even_case.annotations,
              "--out", tmp_path / "bad.zarr", "--label-map", "glomerulus", expect=1)
    assert_one_line_error(bad, "is not old=new")


def test_annotations_command_describes_a_file(tmp_path, capsys):
    real = ANNOTATIONS / "WSI_handling_TCGA-EJ-5519-01Z-00-DX1.xml"
    result = run("annotations", real)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{real}: Aperio ImageScope XML, 5 annotations, 3 labels"
    assert lines[1].split() == ["CaP", "1", "Polygon", "1", "from", "layer", "1", "attribute", "name"]
    assert lines[3].split()[:4] == ["layer", "4", "3", "Polygon"]
    assert "repaired 2, skipped 0, exclusions 0" in result.stdout
    assert main(["annotations", str(ANNOTATIONS / "wsiprocess_CMU-1_detection.xml"), "--json",
                 "--slide", str(SLIDES / "CMU-1-Small-Region.svs"), "--exclude-labels", "benign"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "asap" and data["annotations"] == 23 and data["exclusions"] == 1
    assert [entry["label"] for entry in data["labels"]] == ["cell", "malignant"]
    assert data["outside_slide"] == 23  # CMU-1's annotations, and a 2220 x 2967 crop of it
    assert data["warnings"] == ["188: annotation 'Annotation 24': a Dot with several coordinates, read as a PointSet"]
    line = tmp_path / "line.geojson"
    line.write_text(json.dumps([{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]}}]))
    assert_one_line_error(run("annotations", line, expect=1), "line.geojson: feature 0: a LineString outlines no area")


def test_extract_says_first_what_was_skipped_and_honours_exclusions(tmp_path, aperio_even_case):
    from .test_annotation_files import write_camelyon

    folder = tmp_path / "annotations"
    folder.mkdir()
    path = write_camelyon(folder / "even.xml", tumour=[(1000, 1000), (2000, 1000), (2000, 2000), (1000, 2000)],
                          other=[(2500, 1000), (2500, 1100), (2500, 1200)],  # a line: skipped
                          hole=[(1200, 1200), (1800, 1200), (1800, 1800), (1200, 1800)])
    out = tmp_path / "cut.zarr"
    result = run("extract", aperio_even_case.slide, "--annotations", folder, "--out", out, "--sampler",
                 "random-in-polygon", "--per-annotation", "30", "--patch-size", "64", "--exclude-labels", "_2")
    first, summary = result.stdout.splitlines()
    assert first.startswith(f"{path}: 1 annotation; 1 skipped (no area 1)")
    assert summary.startswith("30 patches")
    store = zarr.open_group(out, mode="r")
    centres = np.column_stack([store["x"][:] + 32, store["y"][:] + 32])
    assert not ((centres > 1200) & (centres < 1800)).all(axis=1).any()
    assert store.attrs["wsizarr"]["parameters"]["exclude_labels"] == ["_2"]
    strict = run("extract", aperio_even_case.slide, "--annotations", path, "--out", tmp_path / "s.zarr",
                 "--strict-annotations", expect=1)
    assert_one_line_error(strict, "even.xml:5: annotation 'Annotation 1': it has no area", "--strict-annotations")


def test_counts_agree_with_their_nouns():
    from wsizarr._text import count

    assert [count(n, "slide") for n in (0, 1, 2)] == ["0 slides", "1 slide", "2 slides"]
    assert count(1, "patch") == "1 patch" and count(3, "edge patch") == "3 edge patches"
    assert count(1, "vertex") == "1 vertex" and count(2, "vertex") == "2 vertices"
    assert count(2, "png file") == "2 png files" and count(2, "datum", "data") == "2 data"


def test_extract_help_groups_its_options_and_ends_with_examples_that_parse():
    import shlex

    from wsizarr.cli._main import _parser

    text = run("extract", "--help").stdout
    groups = ["input: slides and annotations:", "whole-slide tiling:", "output:", "resolution and sampling:", "store layout:",
              "quality filters:", "execution:", "examples:"]
    at = [text.index(f"\n{title}\n") for title in groups]
    assert at == sorted(at)
    section = text[text.index("\nresolution and sampling:\n"):text.index("\nstore layout:\n")]
    assert "--mpp MPP" in section and "--per-annotation" in section and "--codec" not in section
    examples = text[text.index("\nexamples:\n"):].replace("\\\n", " ")
    commands = [line.split("wsizarr ", 1)[1] for line in examples.splitlines() if line.startswith("  wsizarr ")]
    assert len(commands) == 4
    for command in commands:  # each one an extraction the parser takes
        args = _parser().parse_args(shlex.split(command))
        assert args.command == "extract" and args.out.endswith(".zarr")


def test_info_and_report_say_how_each_slide_was_read(tmp_path, aperio_case):
    """Reader, level, level pixels read per patch and the patches' mpp, per slide, in the
    text, the JSON and the HTML report, as the extraction chose them."""
    from wsizarr.slides._slide import open_slide, resolve_resolution, slide_info

    store = tmp_path / "s.zarr"
    run("extract", aperio_case.slide, "--annotations", aperio_case.annotations, "--out", store,
        "--mpp", "1.3", "--patch-size", "64", "--per-annotation", "2", "--seed", "1")
    with open_slide(aperio_case.slide) as slide:
        info = slide_info(slide, aperio_case.slide)
    chosen = resolve_resolution(info, 64, mpp=1.3)
    assert chosen.level == 1 and chosen.read_size_px != 64  # resized: the case this is for
    slides = json.loads(run("info", store, "--json").stdout)["slides"]
    assert slides == [{
        "path": info.path, "vendor": "aperio", "reader": "tiles", "level": 1,
        "downsample": info.level_downsamples[1], "read_size_px": chosen.read_size_px,
        "effective_mpp": pytest.approx(chosen.mpp), "color": "unchanged",
    }]
    text = run("info", store).stdout
    assert (f"read        {aperio_case.slide.name}: reader tiles, level 1 (downsample {info.level_downsamples[1]:.6g}), "
            f"{chosen.read_size_px} px read per patch, {chosen.mpp:.4g} mpp") in text
    run("report", store, "--out", tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert (f"<td>{aperio_case.slide.name}</td><td>tiles</td><td>1</td><td>{info.level_downsamples[1]:.6g}</td>"
            f"<td>{chosen.read_size_px}</td><td>{chosen.mpp:.6g}</td><td>unchanged</td>") in html
