"""What a run does, decided without slides or stores: the pure functions of ``_runplan`` and
the option records of ``_options``."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from wsizarr._errors import ParameterError, StoreError, StoreExistsError, as_flag
from wsizarr.extraction._execution import SlideSource
from wsizarr.store._manifest import Manifest, RunState
from wsizarr.extraction._options import (
    ExecutionOptions, ExtractOptions, FilterOptions, LabelOptions, LayoutOptions, ResolutionOptions, SamplingOptions,
)
from wsizarr.extraction._planning import PreparedSlide
from wsizarr.extraction._runplan import check_same_slides, plan_run, recorded_parameters, where_to_build
from wsizarr.slides._slide import Resolution, SlideInfo

PARAMETERS = ExtractOptions().parameters()


def _prepared(path: str, labels: set[str], content_hash: str | None = None) -> PreparedSlide:
    info = SlideInfo(path, "aperio", (4000, 3000), ((4000, 3000), (1000, 750)), (1.0, 4.0004), (0.25, 0.25), 40.0)
    source = SlideSource(path, info, Resolution(0, 256, 0.25), "tiles")
    return PreparedSlide(source, content_hash or f"hash-{path}", path, f"{path}.xml", f"sha-{path}", frozenset(labels))


def _manifest(**changes) -> Manifest:
    return Manifest("0.1.0", PARAMETERS, 256, "zstd", **changes)


def _where(mode, **state):
    state = {"target_exists": False, "partial_exists": False, "can_append": True} | state
    return where_to_build(mode, target="out.zarr", partial="out.zarr.partial.zarr", **state)


def test_where_a_run_builds():
    assert not _where("create").beside and not _where("create").exists
    assert _where("create", can_append=False).beside  # a zip: built beside, packed at the end
    assert _where("overwrite", target_exists=True).beside  # the old store stays until the new one is complete
    assert not _where("overwrite").beside  # nothing to keep
    resumed = _where("resume", partial_exists=True)
    assert resumed.beside and resumed.exists  # finish an interrupted overwrite where it was built
    assert _where("append", target_exists=True).exists and not _where("append", target_exists=True).beside


@pytest.mark.parametrize(
    ("mode", "state", "error", "message"),
    [
        ("create", {"target_exists": True}, StoreExistsError, "already exists"),
        ("append", {}, StoreError, "nothing to append to"),
        ("append", {"target_exists": True, "can_append": False}, ParameterError, "zip cannot be appended"),
        ("create", {"partial_exists": True}, StoreError, "unfinished store at out.zarr.partial.zarr"),
        ("append", {"target_exists": True, "partial_exists": True}, StoreError, "unfinished store"),
    ],
)
def test_where_refuses_what_does_not_fit(mode, state, error, message):
    with pytest.raises(error, match=message):
        _where(mode, **state)


def test_a_new_store_starts_at_zero_with_sorted_labels():
    plan = plan_run("create", None, store="s", parameters=PARAMETERS,
                    prepared=[_prepared("b", {"tubule", "glomerulus"}), _prepared("a", {"artery"})],
                    existing_hashes=[], wants_background=True, label_order=None)
    assert not plan.finished and plan.write_plan
    assert plan.run == RunState(0, 0, 0)
    assert plan.label_names == ("artery", "background", "glomerulus", "tubule")


def test_append_starts_after_the_store_and_keeps_its_codes():
    existing = _manifest(label_names=("tubule",), n_patches=900, n_slides=3, n_annotations=40, complete=True)
    plan = plan_run("append", existing, store="s", parameters=PARAMETERS, prepared=[_prepared("d", {"artery", "tubule"})],
                    existing_hashes=["h0", "h1", "h2"], wants_background=False, label_order=None)
    assert plan.run == RunState(3, 900, 40)
    assert plan.label_names == ("tubule", "artery")  # old codes kept, new labels after them


def test_append_refuses_a_slide_already_in_the_store():
    existing = _manifest(n_patches=10, n_slides=1, complete=True)
    with pytest.raises(StoreError, match="same content.*already in s"):
        plan_run("append", existing, store="s", parameters=PARAMETERS, prepared=[_prepared("x", set(), "h0")],
                 existing_hashes=["h0"], wants_background=False, label_order=None)


def test_resume_continues_the_recorded_run():
    planned = _manifest(label_names=("a",), n_patches=500, n_slides=4,
                        run=RunState(2, 300, 20, planned=True))
    plan = plan_run("resume", planned, store="s", parameters=PARAMETERS, prepared=[_prepared("c", {"a", "zzz"})],
                    existing_hashes=["h0", "h1", "h2", "h3"], wants_background=False, label_order=None)
    assert plan.run == planned.run and not plan.write_plan
    assert plan.label_names == ("a",)  # a planned run's labels are the recorded ones
    unplanned = plan_run("resume", _manifest(run=RunState(0, 0, 0)), store="s", parameters=PARAMETERS,
                         prepared=[_prepared("c", {"b", "a"})], existing_hashes=[], wants_background=False,
                         label_order=None)
    assert unplanned.write_plan and unplanned.label_names == ("a", "b")  # nothing written yet: plan again


def test_finished_and_unfinished_stores():
    done = _manifest(n_patches=5, n_slides=1, complete=True)
    assert plan_run("resume", done, store="s", parameters=PARAMETERS, prepared=[], existing_hashes=["h"],
                    wants_background=False, label_order=None).finished
    with pytest.raises(StoreError, match="did not finish"):
        plan_run("append", _manifest(run=RunState(0, 0, 0)), store="s", parameters=PARAMETERS,
                 prepared=[], existing_hashes=[], wants_background=False, label_order=None)
    other = {**PARAMETERS, "seed": 3}
    with pytest.raises(StoreError, match="other parameters"):
        plan_run("append", done, store="s", parameters=other, prepared=[], existing_hashes=[],
                 wants_background=False, label_order=None)


def test_label_order_fixes_codes_and_must_cover_the_labels():
    plan = plan_run("create", None, store="s", parameters=PARAMETERS, prepared=[_prepared("a", {"b"})],
                    existing_hashes=[], wants_background=False, label_order=("b", "a"))
    assert plan.label_names == ("b", "a")
    with pytest.raises(ParameterError, match="labels c are not in the label order"):
        plan_run("create", None, store="s", parameters=PARAMETERS, prepared=[_prepared("a", {"c"})],
                 existing_hashes=[], wants_background=False, label_order=("b",))


def test_resume_refuses_changed_slides_and_annotations():
    prepared = [_prepared("a", set()), _prepared("b", set())]
    recorded = {"path": ["a", "b"], "content_hash": ["hash-a", "hash-b"], "annotations_sha256": ["sha-a", "sha-b"]}
    check_same_slides("s", recorded, prepared)
    with pytest.raises(StoreError, match="slide 2 of the interrupted run was c, now b"):
        check_same_slides("s", {**recorded, "path": ["a", "c"]}, prepared)
    with pytest.raises(StoreError, match=r"read 1 slide\(s\), this one 2"):
        check_same_slides("s", {k: v[:1] for k, v in recorded.items()}, prepared)
    with pytest.raises(StoreError, match="the slide b changed"):
        check_same_slides("s", {**recorded, "content_hash": ["hash-a", "new"]}, prepared)
    with pytest.raises(StoreError, match="the annotations of b .*b.xml.* changed"):
        check_same_slides("s", {**recorded, "annotations_sha256": ["sha-a", "edited"]}, prepared)


def test_older_stores_are_read_with_the_options_they_lacked():
    older = {k: v for k, v in PARAMETERS.items() if k not in ("exclude_labels", "strict_annotations", "reader", "color")}
    recorded = recorded_parameters(replace(_manifest(), parameters={**older, "level": None}))
    assert recorded == {**PARAMETERS, "reader": "openslide"}


# --- the option records ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "values", "message"),
    [
        (ResolutionOptions, {"level": 1, "mpp": 0.5}, "only one of level, mpp and magnification"),
        (ResolutionOptions, {"mpp": float("inf")}, "mpp must be a positive number"),
        (ResolutionOptions, {"patch_size": 0}, "patch_size must be at least 1"),
        (SamplingOptions, {"seed": -1}, "seed must be a whole number >= 0"),
        (SamplingOptions, {"sampler": "spiral"}, "unknown sampler 'spiral'"),
        (SamplingOptions, {"min_overlap": 0}, "min_overlap is a fraction"),
        (LayoutOptions, {"codec": "gif"}, "unknown codec 'gif'"),
        (LayoutOptions, {"shard_size": 0}, "shard_size must be at least 1"),
        (LayoutOptions, {"color": "p3"}, "unknown color 'p3'; choose one of unchanged, srgb"),
        (ExecutionOptions, {"workers": 0}, "workers must be at least 1"),
        (ExecutionOptions, {"reader": "vips"}, "unknown reader 'vips'"),
    ],
)
def test_options_are_checked_where_they_are_made(record, values, message):
    with pytest.raises(ParameterError, match=message):
        record(**values)


def test_errors_name_options_as_the_library_or_the_command_line_does():
    with pytest.raises(ParameterError) as info:
        SamplingOptions(min_overlap=2)
    assert str(info.value).startswith("min_overlap is a fraction")
    assert info.value.render(as_flag).startswith("--min-overlap is a fraction")
    with pytest.raises(ParameterError) as info:
        ExtractOptions.from_keywords(overwrite=True, resume=True)
    assert "overwrite=True excludes resume=True and append=True" in str(info.value)
    assert "--overwrite excludes --resume and --append" in info.value.render(as_flag)


def test_the_recorded_parameters_come_from_the_records():
    options = ExtractOptions.from_keywords(level=2, seed=5, exclude_labels=["_2"], codec="none", workers=1)
    parameters = options.parameters()
    assert parameters["level"] == 2 and parameters["seed"] == 5 and parameters["codec"] == "none"
    assert parameters["exclude_labels"] == ["_2"] and "workers" not in parameters
    assert "label_order" not in parameters  # the store's label_names record it
    recorded = {f.name for record in (ResolutionOptions, SamplingOptions, LabelOptions, LayoutOptions)
                for f in fields(record)} - {"label_order"}
    assert set(parameters) == recorded | {"reader"}
    with pytest.raises(TypeError, match="unknown options: colour"):
        ExtractOptions.from_keywords(colour="red")


def test_every_option_has_its_flag():
    from wsizarr.cli._main import _parser

    parser = _parser()
    extract = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("extract"))
    dests = {action.dest: action.default for action in extract._actions}
    for record in (ResolutionOptions, SamplingOptions, LabelOptions, LayoutOptions, ExecutionOptions, FilterOptions):
        for f in fields(record):
            if f.name in ("client", "progress", "on_note", "label_map"):
                continue  # built from --dask-scheduler, the progress bar, printed notes, --label-map's parser
            assert f.name in dests, f"--{f.name.replace('_', '-')} is missing"
            assert dests[f.name] == f.default, f.name


def test_the_typed_entry_point_is_extract(tmp_path, aperio_even_case):
    """``run_extraction`` with the option records makes the store ``extract``'s keywords make."""
    import wsizarr

    from .helpers import assert_same_store

    keywords = tmp_path / "keywords.zarr"
    wsizarr.extract(aperio_even_case.slide, aperio_even_case.annotations, keywords,
                    level=1, patch_size=32, per_annotation=3, seed=5, shard_size=16, masks=True)
    typed = tmp_path / "typed.zarr"
    options = wsizarr.ExtractOptions(
        resolution=wsizarr.ResolutionOptions(level=1, patch_size=32),
        sampling=wsizarr.SamplingOptions(per_annotation=3, seed=5),
        layout=wsizarr.LayoutOptions(shard_size=16, masks=True),
    )
    wsizarr.run_extraction(aperio_even_case.slide, aperio_even_case.annotations, typed, options)
    assert_same_store(keywords, typed)
