"""The README's Python snippets run as written, on a small demo slide named as they name it
(``slide.svs``, ``slide.xml``; they write ``patches.zarr``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import wsizarr

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[str]:
    """Every fenced ```python block of the README, in order."""
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def snippet(start: str) -> str:
    """The one Python snippet that contains ``start``."""
    found = [text for text in python_snippets() if start in text]
    assert len(found) == 1, f"{len(found)} README Python snippets contain {start!r}"
    return found[0]


def run_snippet(text: str) -> dict:
    """Run a snippet alone, as a user pasting it would: its own imports, a fresh namespace."""
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(text, str(README), "exec"), namespace)
    return namespace


@pytest.fixture
def demo_folder(tmp_path, monkeypatch) -> Path:
    """A folder with ``slide.svs`` and ``slide.xml`` (a small demo slide), the working directory."""
    slide = wsizarr.write_demo_slide(tmp_path / "slide.svs", width=2048, height=1536, n_glomeruli=4,
                                     glomerulus_px=180)
    wsizarr.write_demo_annotations(slide, tmp_path / "slide.xml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_first_snippet_extracts_and_selects_uint8_patches(demo_folder, capsys):
    found = run_snippet(snippet('wsizarr.extract("slide.svs", "slide.xml", "patches.zarr"'))
    glomeruli = found["glomeruli"]
    assert glomeruli.dtype == np.uint8 and glomeruli.dims[0] == "patch"
    assert (glomeruli.label.values == "glomerulus").all() and glomeruli.sizes["patch"] > 0
    assert len(found["annotations"]) == 4
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("120 patches in patches.zarr") and printed[1].startswith("PatchTable('patches.zarr': 120")


def test_add_array_snippet_runs_with_its_imports(demo_folder):
    pytest.importorskip("torch")
    wsizarr.extract("slide.svs", "slide.xml", "patches.zarr", level=1, per_annotation=5, patch_size=64)
    found = run_snippet(snippet("def mean_colour(batch):"))
    assert found["ds"].colour.shape == (20, 3)
    image, colour = found["data"][0]
    assert tuple(image.shape) == (3, 64, 64) and tuple(colour.shape) == (3,)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript, deprecated in torch 2.13
def test_model_snippet_makes_a_model_embed_runs(demo_folder):
    pytest.importorskip("torch")
    from .helpers import run

    wsizarr.extract("slide.svs", "slide.xml", "patches.zarr", level=1, per_annotation=5, patch_size=64)
    run_snippet(snippet('.save("model.pt")'))
    result = run("embed", "patches.zarr", "--model", "model.pt", "--name", "features", cwd=demo_folder)
    assert result.stdout.startswith("features: (20, 16) float16 in patches.zarr")
    assert wsizarr.open_dataset("patches.zarr").features.shape == (20, 16)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript, deprecated in torch 2.13
def test_several_encoders_then_slide_bags(demo_folder, capsys):
    pytest.importorskip("torch")
    wsizarr.extract("slide.svs", "slide.xml", "patches.zarr", level=1, per_annotation=5, patch_size=64)
    found = run_snippet(snippet("def colour_stats():"))
    assert found["ds"].features_a.shape == (20, 8) and found["ds"].features_b.shape == (20, 6)
    table = wsizarr.read_patch_table("patches.zarr")
    assert table.added["features_a"].fn.endswith(", normalize imagenet")
    assert table.added["features_b"].fn.startswith("python __readme__:colour_stats") and table.added["features_b"].fn.endswith(", bf16")
    bags = run_snippet(snippet("from wsizarr.torch import SlideBags"))["bags"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("('slide.svs',) (20, 8) (20, 2) ")
    features, coords, target = bags[0]
    assert tuple(features.shape) == (20, 8) and int(target) == 1
