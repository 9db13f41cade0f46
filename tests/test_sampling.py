from __future__ import annotations

import numpy as np
import pytest

from wsizarr import Annotation, ParameterError, plan_jitter
from wsizarr.slides._slide import SlideInfo


def _slide(downsamples=(1.0, 4.0025, 16.02)) -> SlideInfo:
    dims = tuple((int(10000 / d), int(8000 / d)) for d in downsamples)
    return SlideInfo("s.svs", "aperio", dims[0], dims, downsamples, (0.25, 0.25), 40.0)


def _annotation(i, x, y, r=100, label="glom") -> Annotation:
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    return Annotation(i, f"A{i}", label, "Polygon", np.column_stack([x + r * np.cos(angles), y + r * np.sin(angles)]))


ANNOTATIONS = [_annotation(0, 2000, 3000), _annotation(1, 6000, 1500, label=None), _annotation(2, 9950, 7950, label="scl")]


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_patch_overlaps_its_bounding_box(level):
    slide = _slide()
    plan = plan_jitter(ANNOTATIONS, slide, level=level, patch_size=256, per_annotation=50, seed=3)
    assert len(plan) == 150
    downsample = slide.level_downsamples[level]
    for i in range(len(plan)):
        a = ANNOTATIONS[plan.annotation_id[i]]
        x_min, y_min, x_max, y_max = a.bbox
        extent = 256 * downsample
        assert plan.x[i] < x_max and plan.x[i] + extent > x_min
        assert plan.y[i] < y_max and plan.y[i] + extent > y_min
        assert np.floor(plan.x[i] / downsample) * downsample <= plan.x[i]
    assert plan.label.tolist() == [0] * 50 + [-1] * 50 + [1] * 50
    assert set(plan.level.tolist()) == {level} and set(plan.slide.tolist()) == {0}


def test_patches_stay_inside_the_slide_when_possible():
    plan = plan_jitter(ANNOTATIONS, _slide(), level=0, patch_size=256, per_annotation=200)
    assert (plan.x >= 0).all() and (plan.y >= 0).all()
    assert (plan.x + 256 <= 10000).all() and (plan.y + 256 <= 8000).all()


def test_jitter_is_random_and_reproducible():
    a = plan_jitter(ANNOTATIONS, _slide(), per_annotation=30, seed=0)
    b = plan_jitter(ANNOTATIONS, _slide(), per_annotation=30, seed=0)
    c = plan_jitter(ANNOTATIONS, _slide(), per_annotation=30, seed=1)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    assert len(np.unique(a.x[:30])) > 20  # jittered, not a fixed offset


def test_an_annotation_keeps_its_patches_when_others_are_added():
    alone = plan_jitter(ANNOTATIONS[1:2], _slide(), per_annotation=30)
    together = plan_jitter(ANNOTATIONS, _slide(), per_annotation=30)
    np.testing.assert_array_equal(alone.x, together.x[30:60])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"patch_size": 0}, "patch size"), ({"per_annotation": 0}, "per_annotation must be at least 1"), ({"level": 3}, "level 3 does not exist")],
)
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        plan_jitter(ANNOTATIONS, _slide(), **kwargs)
