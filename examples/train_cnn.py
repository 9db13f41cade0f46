"""Train a tiny CNN for a few epochs on the demo store: glomerulus vs background tissue.

The demo slide draws every glomerulus alike and names one in four "sclerotic" at random
(``wsizarr/_demo.py``), so no model can tell glomerulus from sclerotic: trained on those labels
it learns the most common one and no more. What the pixels do show is where the glomeruli are,
so the two names are merged into one (a label map) and the network learns glomerulus against
background tissue (the ``background`` sampler's patches, from tissue outside every annotation).

Extracts the demo slide, splits by glomerulus so no glomerulus has crops on both sides, trains
on shard-shuffled batches with 2 DataLoader workers and evaluates on the held-out glomeruli and
background patches through the map-style dataset, against the most common label alone.

Run: pip install 'wsizarr[torch]' && python examples/train_cnn.py [FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import wsizarr
from wsizarr.torch import PatchDataset, ShardShuffledPatches


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) to float, halved in size (the demo's features are coarse) and
    centred on the slide's pale pink (without it the small colour differences train too slowly)."""
    return (nn.functional.avg_pool2d(images.float() / 255, 2) - 0.8) / 0.1


def main(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    store = folder / "demo.zarr"
    slide = wsizarr.write_demo_slide(folder / "demo.svs")
    annotations = wsizarr.write_demo_annotations(slide, folder / "demo.xml")
    print(wsizarr.extract(slide.path, annotations, store, level=1, patch_size=128, per_annotation=20,
                          background=240, shard_size=64, overwrite=True,
                          label_map={"sclerotic": "glomerulus"}))  # drawn alike: one class

    table = wsizarr.read_patch_table(store)
    train, held_out = table.split(0.25, by="annotation", seed=0)
    print(f"labels {table.label_names}: {len(train)} training, {len(held_out)} held-out patches")
    batches = ShardShuffledPatches(store, batch_size=32, seed=0, indices=train, transform=to_float)
    # no batch norm: a shuffle buffer's batches can be mostly of one label, and normalising by
    # the batch's own statistics then gives the label away in training and not in evaluation
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),  # is there a glomerulus anywhere?
        nn.Flatten(), nn.Linear(16, len(table.label_names)),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(6):
        batches.set_epoch(epoch)
        model.train()
        for step, (images, labels) in enumerate(DataLoader(batches, batch_size=None, num_workers=2)):
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: {step + 1} steps, last loss {loss.item():.3f}")

    evaluation = PatchDataset(store, indices=held_out, transform=to_float)
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(evaluation, batch_size=64, num_workers=2):
            correct += int((model(images).argmax(1) == labels).sum())
    majority = max(np.bincount(table.label[held_out])) / len(held_out)
    print(f"held-out accuracy {correct / len(evaluation):.2f} on {len(evaluation)} patches, "
          f"against {majority:.2f} for the most common label alone")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "wsizarr-cnn"))
