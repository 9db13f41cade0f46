"""What a run will do, decided from the store's manifest and the prepared slides alone.

Two pure functions, tested without slides or stores: :func:`where_to_build` (build in place,
or beside the target to swap in when complete) and :func:`plan_run` (create, resume or append:
the first slide, patch and annotation row of the run, its label names, and whether its plan
is still to be written).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import ParameterError, StoreError, StoreExistsError, option
from ..store._manifest import Manifest, RunState
from ._options import Mode
from ._planning import PreparedSlide, label_names

__all__ = ["Building", "RunPlan", "plan_run", "recorded_parameters", "where_to_build"]


@dataclass(frozen=True)
class Building:
    """Where a run builds: ``beside`` the target (a zip, or a store being replaced, is built
    in ``<target>.partial.zarr`` and swapped in once complete) or in place; ``exists`` says
    whether a store is already there."""

    beside: bool
    exists: bool


def where_to_build(
    mode: Mode, *, target: str, partial: str, target_exists: bool, partial_exists: bool,
    can_append: bool,
) -> Building:
    """Where a run in ``mode`` builds, or the one-line error when the mode does not fit what
    exists (a store without overwrite, resume or append; an unfinished store beside it; nothing
    to append to; a zip to append to). A location that cannot be appended to (a zip) is
    written whole, so always built beside."""
    if mode == "append" and not can_append:
        raise ParameterError(
            f"{target}: a zip cannot be appended to; append to a directory store, then pack it into a "
            "zip (`wsizarr pack`)"
        )
    if partial_exists and mode not in ("overwrite", "resume"):
        raise StoreError(
            f"{target}: an earlier run left an unfinished store at {partial}; finish it "
            f"({option('resume', True)}) or start again ({option('overwrite', True)})"
        )
    beside = not can_append or (mode == "overwrite" and target_exists) or (partial_exists and mode in ("overwrite", "resume"))
    exists = partial_exists if beside else target_exists
    if mode == "create" and (target_exists or exists):
        raise StoreExistsError(
            f"{target}: already exists; replace it ({option('overwrite', True)}), finish it "
            f"({option('resume', True)}) or add slides to it ({option('append', True)})"
        )
    if mode == "append" and not exists:
        raise StoreError(
            f"{target}: store not found, nothing to append to; create it without {option('append', True)}"
        )
    return Building(beside, exists)


@dataclass(frozen=True)
class RunPlan:
    """What a run does: ``finished`` (the store is complete: nothing to do), or a ``run`` adding
    slides from ``run.first_slide`` with ``label_names``; ``write_plan`` is False when resuming a
    run whose plan is in the store already (then it is checked, not rewritten)."""

    finished: bool
    run: RunState | None = None
    label_names: tuple[str, ...] = ()
    write_plan: bool = True


# Options added after stores were made, as those stores were made: no exclusions, not strict,
# read with OpenSlide (so appending to one needs reader openslide, not a mix of pixels), colours
# unchanged, without quality measures.
_OLDER_STORES = {
    "exclude_labels": [], "strict_annotations": False, "reader": "openslide", "color": "unchanged", "quality": False,
}


def recorded_parameters(manifest: Manifest) -> dict[str, Any]:
    """A store's parameters as this version records them (older stores lack newer options and
    recorded level 0 as None), to compare with a resume's or an append's."""
    recorded = {**_OLDER_STORES, **manifest.parameters}
    if all(recorded.get(name) is None for name in ("level", "mpp", "magnification")):
        recorded["level"] = 0
    return recorded


def is_stillborn(manifest: Manifest) -> bool:
    """A store killed while being created, before any run began: it is created again."""
    return not manifest.complete and manifest.run is None and manifest.n_slides == 0


def plan_run(
    mode: Mode, existing: Manifest | None, *, store: str, parameters: Mapping[str, Any],
    prepared: Sequence[PreparedSlide], existing_hashes: Sequence[str], wants_background: bool,
    label_order: Sequence[str] | None,
) -> RunPlan:
    """Decide the run from the store's manifest (None: a new store) and the prepared slides.

    ``existing_hashes`` are the content hashes of the slides already in the store before the
    run (an appended slide must not be one of them). Raises a one-line error when the store
    was made with other parameters, is unfinished and not resumed, or already holds a slide.
    """
    found = {name for p in prepared for name in p.label_names}
    if existing is None:
        names = label_names((), found, wants_background, label_order)
        return RunPlan(False, RunState(0, 0, 0), names)
    if recorded_parameters(existing) != dict(parameters):
        raise StoreError(
            f"{store}: was made with other parameters ({dict(existing.parameters)}); use the same "
            f"ones to resume or append, or replace it ({option('overwrite', True)})"
        )
    if not existing.complete and mode != "resume":
        raise StoreError(f"{store}: an earlier extraction did not finish; finish it ({option('resume', True)})")
    if existing.complete and mode != "append":
        return RunPlan(True)
    if existing.complete:  # append
        if existing.added:
            raise StoreError(
                f"{store}: holds arrays added after extraction ({', '.join(existing.added)}), which "
                "new patches would leave short; append to a copy without them, or extract a new store"
            )
        if existing.subset is not None:
            raise StoreError(
                f"{store}: is a subset of {existing.subset.source}, not all the patches of its slides; "
                "append to the source, then make the subset again (`wsizarr subset`)"
            )
        run = RunState(existing.n_slides, existing.n_patches, existing.n_annotations)
        names = label_names(existing.label_names, found, wants_background, label_order)
    else:
        run = existing.run
        assert run is not None
        names = existing.label_names if run.planned else label_names(
            existing.label_names if run.first_slide else (), found, wants_background, label_order
        )
    known = set(existing_hashes[: run.first_slide])
    for p in prepared:
        if p.content_hash in known:
            raise StoreError(
                f"{p.source.path}: this slide (same content) is already in {store}; leave it out of "
                "the slides to append"
            )
    return RunPlan(False, run, tuple(names), write_plan=not (existing.run is not None and existing.run.planned))


def check_same_slides(
    store: str, recorded: Mapping[str, np.ndarray], prepared: Sequence[PreparedSlide],
) -> None:
    """Refuse to resume a planned run when its slides or annotations changed: the shards it
    wrote would not match the recorded coordinates. ``recorded`` are the run's rows of the
    slide table (``path``, ``content_hash``, ``annotations_sha256``)."""
    fix = f"resume with the same inputs, or start again ({option('overwrite', True)})"
    before = [str(p) for p in recorded["path"]]
    now = [p.source.info.path for p in prepared]  # resolved, as recorded, however it was typed
    if len(before) != len(now):
        raise StoreError(
            f"{store}: the interrupted run read {len(before)} slide(s), this one {len(now)}; {fix}"
        )
    for index, (was, is_now) in enumerate(zip(before, now)):
        if was != is_now:
            raise StoreError(f"{store}: slide {index + 1} of the interrupted run was {was}, now {is_now}; {fix}")
    for before_hash, before_annotations, now in zip(recorded["content_hash"], recorded["annotations_sha256"], prepared):
        if before_hash != now.content_hash:
            raise StoreError(f"{store}: the slide {now.source.path} changed since the interrupted run; {fix}")
        if before_annotations != now.annotations_sha256:
            raise StoreError(
                f"{store}: the annotations of {now.source.path} ({now.annotations_file or 'records'}) "
                f"changed since the interrupted run; {fix}"
            )

