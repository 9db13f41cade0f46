"""Tile whole slides, embed the tiles with two encoders, train a MIL model on the slide bags.

The field's whole-slide workflow on a demo cohort, in one store:

1. A cohort of 12 demo slides (Aperio-style, fractional downsamples): six with glomeruli
   (slide label ``glomeruli``) and six of plain tissue (``none``). Nothing says where the
   glomeruli are: the slide label is all a model learns from.
2. Tile: ``wsizarr extract SLIDES --tiles`` lays a grid of 128-px tiles over each slide at level 0
   and keeps those on tissue (the tissue mask decides, before any pixel is read).
3. Embed with two encoders into the same store, with ``wsizarr embed``: ``colour_statistics``
   below (``FILE.py:FUNCTION``: a module of per-channel means, spreads and the share of nucleus-
   dark pixels, 7 features) as ``features_colour``, and a small untrained CNN saved as TorchScript
   (a stand-in for a foundation model; no download) as ``features_cnn``.
4. Train an attention-MIL model (Ilse et al. 2018: attention pooling of the tile features, then a
   linear classifier) on ``wsizarr.torch.SlideBags`` of 8 slides, and report the accuracy on the
   4 held-out slides beside the most common label's. The tiles the model attends to most on a
   held-out ``glomeruli`` slide are checked against where the glomeruli were drawn.
5. Export the bags for CLAM / TRIDENT (``wsizarr export --format trident-h5``).

Run: pip install 'wsizarr[torch,h5]' && python examples/tile_embed_mil.py [FOLDER]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import wsizarr
from wsizarr.torch import SlideBags

TILE = 128
GLOMERULUS_PX = 220
N_SLIDES = 12
HELD_OUT = 4


class _ColourStatistics(nn.Module):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1]
        flat = pixels.flatten(2)
        dark = (flat.mean(dim=1) < 0.5).float().mean(dim=1, keepdim=True)  # nuclei: dark purple
        return torch.cat([flat.mean(dim=2), flat.std(dim=2), dark], dim=1)


def colour_statistics() -> nn.Module:
    """The first encoder (``--model tile_embed_mil.py:colour_statistics``): 7 features a tile."""
    return _ColourStatistics()


def make_cohort(folder: Path) -> list[wsizarr.DemoSlide]:
    return [
        wsizarr.write_demo_slide(folder / f"slide{seed:02}.svs", width=2048, height=1536,
                                 n_glomeruli=8 if seed % 2 == 0 else 0, glomerulus_px=GLOMERULUS_PX, seed=seed)
        for seed in range(N_SLIDES)
    ]


def on_a_glomerulus(slide: wsizarr.DemoSlide, xy: np.ndarray) -> np.ndarray:
    """Whether each tile (level-0 top-left ``xy``) has its centre within a drawn glomerulus."""
    centres = xy + TILE / 2
    distances = [np.hypot(*(centres - polygon.mean(axis=0)).T) for polygon in slide.polygons]
    return np.min(distances, axis=0) < GLOMERULUS_PX / 2 if distances else np.zeros(len(xy), bool)


def wsizarr_cli(*args: object) -> None:
    command = [sys.executable, "-m", "wsizarr", *map(str, args)]
    print("$ wsizarr " + " ".join(map(str, args)))
    subprocess.run(command, check=True)


def small_cnn(path: Path) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.jit.script(model.eval()).save(str(path))
    return path


class AttentionMIL(nn.Module):
    """Attention pooling of a bag's tile features, then a linear classifier of the slide."""

    def __init__(self, features: int, hidden: int = 16) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.classify = nn.Linear(features, 2)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.softmax(self.attention(bag).squeeze(1), dim=0)
        return self.classify(weights @ bag), weights


def train_mil(store: Path, cohort: list[wsizarr.DemoSlide]) -> float:
    targets = {slide.path.name: int(len(slide.polygons) > 0) for slide in cohort}
    drawn = {slide.path.name: slide for slide in cohort}
    names = sorted(targets)
    train_slides, test_slides = names[:-HELD_OUT], names[-HELD_OUT:]
    train = SlideBags(store, features="features_colour", target=targets, slides=train_slides)
    test = SlideBags(store, features="features_colour", target=targets, slides=test_slides)
    # standardise with the training tiles' statistics
    tiles = torch.cat([features for features, _, _ in train])
    mean, spread = tiles.mean(dim=0), tiles.std(dim=0) + 1e-6
    torch.manual_seed(0)
    model = AttentionMIL(tiles.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(train, batch_size=None, shuffle=True, num_workers=2)
    for _ in range(40):
        for features, _, target in loader:
            logits, _ = model((features - mean) / spread)
            loss = nn.functional.cross_entropy(logits[None], target.reshape(1))
            optimizer.zero_grad(); loss.backward(); optimizer.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for (features, coords, target), name in zip(test, test.slide_names):
            logits, weights = model((features - mean) / spread)
            predicted = int(logits.argmax())
            correct += predicted == int(target)
            line = f"  {name}: slide label {int(target)}, predicted {predicted}, {len(features)} tiles"
            if int(target):  # where the model looks: the 5 most attended tiles against the drawing
                top = weights.argsort(descending=True)[:5].numpy()
                hits = on_a_glomerulus(drawn[name], coords.numpy()[top])
                share = on_a_glomerulus(drawn[name], coords.numpy()).mean()
                line += f"; {int(hits.sum())} of its 5 most attended tiles lie on a glomerulus ({share:.0%} of its tiles do)"
            print(line)
    accuracy = correct / len(test)
    majority = max(sum(targets[n] for n in test_slides), HELD_OUT - sum(targets[n] for n in test_slides)) / HELD_OUT
    print(f"attention-MIL on {len(train)} slides: held-out accuracy {accuracy:.2f} on {len(test)} slides "
          f"(the most common label: {majority:.2f})")
    return accuracy


def main(folder: Path) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    cohort = make_cohort(folder)
    store = folder / "tiles.zarr"
    wsizarr_cli("extract", *(slide.path for slide in cohort), "--tiles", "--out", store, "--level", "0", "--patch-size", TILE,
                "--shard-size", 64, "--overwrite")
    wsizarr_cli("embed", store, "--model", f"{Path(__file__).resolve()}:colour_statistics", "--name", "features_colour")
    wsizarr_cli("embed", store, "--model", small_cnn(folder / "cnn.pt"), "--name", "features_cnn")
    print(wsizarr.read_patch_table(store))
    accuracy = train_mil(store, cohort)
    wsizarr_cli("export", store, folder / "h5", "--format", "trident-h5", "--features", "features_cnn", "--overwrite")
    return accuracy


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "wsizarr-mil"))
