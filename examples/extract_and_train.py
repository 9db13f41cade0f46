"""Extract the demo slide, then iterate over the patches of one label with xarray and numpy.

Run: python examples/extract_and_train.py [FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

import wsizarr

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "wsizarr-example")
folder.mkdir(exist_ok=True)
slide = wsizarr.write_demo_slide(folder / "slide.svs")
annotations = wsizarr.write_demo_annotations(slide, folder / "slide.xml")
print(wsizarr.extract(slide.path, annotations, folder / "patches.zarr", level=1, overwrite=True))

dataset = wsizarr.open_dataset(folder / "patches.zarr")
for label in sorted(set(dataset.label.values)):
    subset = dataset.sel(patch=dataset.label == label)
    mean_rgb = subset.patches.mean(dim=("patch", "row", "column")).values
    print(f"{label or '(unlabelled)'}: {subset.sizes['patch']} patches, mean RGB {mean_rgb.round(1)}")
