"""The glomerulus workflow on the demo data: extract -> info -> preview -> overlay -> verify ->
train a tiny model (numpy logistic regression: glomerulus vs background) -> export.

Run: python examples/glomerulus_workflow.py [FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import wsizarr

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "wsizarr-workflow")
folder.mkdir(exist_ok=True)
slide = wsizarr.write_demo_slide(folder / "kidney.svs")
annotations = wsizarr.write_demo_annotations(slide, folder / "kidney.xml")
store = folder / "glomeruli.zarr"
print(wsizarr.extract(slide.path, annotations, store, level=1, per_annotation=30, background=60,
                      overwrite=True))
info = wsizarr.store_info(store)
print("per label:", info["per_label"], "-", info["files"], "files,", info["bytes_on_disk"] // 10**6, "MB")
print("contact sheet:", wsizarr.preview(store, folder / "montage.png"))
print("overlay:", wsizarr.overlay(store, folder / "overlay.png"))
print(wsizarr.verify(store, sample=32))
# a tiny model: colour statistics -> glomerulus or background, split by annotation
dataset = wsizarr.open_dataset(store)
keep = np.isin(dataset.label.values, ["glomerulus", "background"])
pixels = dataset.patches.values[keep].astype(np.float32) / 255
features = np.concatenate([pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2))], axis=1)
features = (features - features.mean(0)) / features.std(0)
target = (dataset.label.values[keep] == "glomerulus").astype(np.float32)
groups = dataset.annotation_id.values[keep]
held_out = np.where(groups >= 0, groups % 5 == 0, np.arange(len(groups)) % 5 == 0)  # whole glomeruli
train = ~held_out
weights, bias = np.zeros(features.shape[1], np.float32), 0.0
for _ in range(300):
    p = 1 / (1 + np.exp(-(features[train] @ weights + bias)))
    weights -= 0.5 * features[train].T @ (p - target[train]) / train.sum()
    bias -= 0.5 * float((p - target[train]).mean())
accuracy = (((features[~train] @ weights + bias) > 0) == target[~train]).mean()
print(f"tiny model: {train.sum()} training patches, held-out accuracy {accuracy:.2f} on {(~train).sum()}")
print("exported", wsizarr.export(store, folder / "png", label="sclerotic"), "sclerotic patches")
print("report:", wsizarr.write_report(store, folder / "report.html"))
