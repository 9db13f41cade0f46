"""Curate a cohort store, embed it with a small CNN, train a linear probe on the features.

1. Extract a cohort of three demo slides (glomeruli, sclerotic glomeruli and background tissue),
   with the per-patch quality measures (on by default).
2. Quality control: per label, a text histogram of ``tissue_fraction`` (the background patches
   near the tissue's edge carry glass) and the sharpness range.
3. Curate: ``wsizarr.subset`` writes the patches with at least 80 % tissue into new stores, one
   for training and one for validation, split by slide (no slide on both sides).
4. Embed: a small CNN saved as TorchScript (a stand-in for a foundation model; no download) runs
   over each store with ``wsizarr embed`` and its 32 features are added as the array ``features``.
5. Train a linear probe (logistic regression) on the training store's features and report its
   accuracy on the validation store.

Run: pip install 'wsizarr[torch]' && python examples/curate_and_probe.py [FOLDER]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import wsizarr

MIN_TISSUE = 0.8


def make_cohort(folder: Path) -> Path:
    slides, annotations = [], []
    for seed in range(3):
        slide = wsizarr.write_demo_slide(folder / f"slide{seed}.svs", width=4000, height=3000, n_glomeruli=10, seed=seed)
        slides.append(slide.path)
        annotations.append(wsizarr.write_demo_annotations(slide, folder / f"slide{seed}.xml"))
    store = folder / "cohort.zarr"
    print(wsizarr.extract(slides, annotations, store, level=0, patch_size=128, per_annotation=12,
                          background=60, shard_size=64, overwrite=True))
    return store


def quality_control(store: Path) -> None:
    table = wsizarr.read_patch_table(store)
    tissue, sharpness = table.quality["tissue_fraction"], table.quality["sharpness"]
    edges = np.linspace(0, 1, 11)
    print("tissue_fraction per label: % of the label's patches in bins of 0.1 from 0 to 1")
    print(f"  {'':<11}" + "".join(f"{edge:>5.1f}" for edge in edges[:-1]))
    for code, name in enumerate(table.label_names):
        mine = table.label == code
        counts, _ = np.histogram(tissue[mine], bins=edges)
        shares = "".join(f"{100 * c / mine.sum():>5.0f}" for c in counts)
        print(f"  {name:<11}{shares}   (n={mine.sum()}, sharpness 5-95 %: {np.percentile(sharpness[mine], 5):.0f}"
              f"-{np.percentile(sharpness[mine], 95):.0f})")
    print(f"{int((tissue < MIN_TISSUE).sum())} of {len(table)} patches have less than {MIN_TISSUE:.0%} tissue")


def curate(store: Path, folder: Path) -> tuple[Path, Path]:
    table = wsizarr.read_patch_table(store)
    kept = table.select(min_tissue=MIN_TISSUE)
    train, validation = table.split(0.34, by="slide", seed=1, indices=kept)
    stores = folder / "train.zarr", folder / "validation.zarr"
    for indices, out in zip((train, validation), stores):
        print(wsizarr.subset(store, out, indices=indices, overwrite=True))
    return stores


def small_cnn(path: Path) -> Path:
    """A fixed, randomly initialised CNN with global pooling: 32 texture-and-colour features."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ).eval()
    torch.jit.trace(model, torch.rand(1, 3, 128, 128)).save(str(path))
    return path


def embed(store: Path, model: Path) -> None:
    command = [sys.executable, "-m", "wsizarr", "embed", str(store), "--model", str(model), "--name", "features",
               "--batch-size", "64", "--overwrite"]
    print(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())


def features_and_labels(store: Path) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = wsizarr.open_dataset(store)
    return torch.from_numpy(dataset["features"].values.astype(np.float32)), torch.from_numpy(dataset["label_code"].values.astype(np.int64))


def linear_probe(train: Path, validation: Path) -> None:
    x, y = features_and_labels(train)
    x_val, y_val = features_and_labels(validation)
    mean, std = x.mean(0), x.std(0) + 1e-6
    n_labels = len(wsizarr.read_patch_table(train).label_names)
    probe = nn.Linear(x.shape[1], n_labels)
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(probe((x - mean) / std), y)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = probe((x_val - mean) / std).argmax(1)
    accuracy = float((predicted == y_val).float().mean())
    majority = float((y_val == torch.bincount(y).argmax()).float().mean())
    print(f"linear probe: training loss {loss.item():.3f}; validation accuracy {accuracy:.2f} "
          f"on {len(y_val)} patches of unseen slides (majority label alone: {majority:.2f})")


def main(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    store = make_cohort(folder)
    quality_control(store)
    train, validation = curate(store, folder)
    model = small_cnn(folder / "small_cnn.pt")
    for curated in (train, validation):
        embed(curated, model)
    linear_probe(train, validation)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("wsizarr-curate"))
