"""The scripts in examples/ run on the demo data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPECTED = {
    "curate_and_probe.py": ["540 patches from 3 slides", "tissue_fraction per label", "patches have less than 80% tissue",
                            "of 540 patches of", "features: (", "validation accuracy"],
    "extract_and_train.py": ["720 patches in", "glomerulus: 660 patches"],
    "glomerulus_workflow.py": ["re-read from their slides: OK", "held-out accuracy", "report:"],
    "tile_embed_mil.py": ["from 12 slides", "features_colour: (", "features_cnn: (", "added features_colour, features_cnn",
                          "wrote 12 h5 files"],
    "train_cnn.py": ["720 patches in", "labels ('background', 'glomerulus'): 540 training, 180 held-out patches",
                     "epoch 5: ", "held-out accuracy"],
}


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(tmp_path, name):
    result = subprocess.run([sys.executable, EXAMPLES / name, str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for expected in EXPECTED[name]:
        assert expected in result.stdout
    if name == "train_cnn.py":  # it learns what the pixels show, well beyond the most common label
        found = re.search(r"held-out accuracy ([0-9.]+) on \d+ patches, against ([0-9.]+) for the most common label",
                          result.stdout)
        assert found, result.stdout
        accuracy, majority = map(float, found.groups())
        assert accuracy >= majority + 0.15, result.stdout
    if name == "tile_embed_mil.py":  # the slide label learnt from the bags, and from the right tiles
        found = re.search(r"held-out accuracy ([0-9.]+) on 4 slides \(the most common label: ([0-9.]+)\)", result.stdout)
        assert found, result.stdout
        accuracy, majority = map(float, found.groups())
        assert accuracy >= 0.75 > majority, result.stdout
        attended = [(int(hits), int(share)) for hits, share in
                    re.findall(r"(\d) of its 5 most attended tiles lie on a glomerulus \((\d+)% of its tiles do\)", result.stdout)]
        assert len(attended) == 2 and all(hits >= 3 and share < 30 for hits, share in attended), result.stdout

