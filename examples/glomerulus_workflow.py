"""The glomerulus workflow on the demo data: extract -> info -> preview -> overlay -> verify -> export.

Run: python examples/glomerulus_workflow.py [FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

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
print("exported", wsizarr.export(store, folder / "png", label="sclerotic"), "sclerotic patches")
print("report:", wsizarr.write_report(store, folder / "report.html"))
