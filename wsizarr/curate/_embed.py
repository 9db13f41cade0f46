"""``wsizarr embed``: features from a TorchScript model, as an array added to the store.

:class:`TorchScriptFeatures` is the ``fn`` that ``add_array`` calls: it loads the model once per
process (so it pickles for process and dask workers), feeds it float32 ``(B, 3, H, W)`` pixels
in [0, 1] (optionally normalised with ImageNet's mean and standard deviation) under
``torch.inference_mode`` and returns its output as float16 numpy rows.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ParameterError, option

__all__ = ["DEVICES", "NORMALIZATIONS", "TorchScriptFeatures"]

DEVICES = ("cpu", "cuda")
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_MODELS: dict[tuple[str, str], Any] = {}  # loaded once per process
_LOADING = threading.Lock()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TorchScriptFeatures:
    """A TorchScript model as ``add_array``'s ``fn``: uint8 ``(B, H, W, 3)`` in, the model's
    output for float32 ``(B, 3, H, W)`` in [0, 1] (``normalize="imagenet"``: then minus
    ImageNet's mean, over its standard deviation) out, as float16. ``device`` ``cuda`` needs
    a GPU. ``description`` names the model by file name and SHA-256, so a resume is refused
    with another model."""

    model: str
    device: str = "cpu"
    normalize: str | None = None
    sha256: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        import torch

        path = Path(self.model)
        if not path.is_file():
            raise ParameterError(f"{self.model}: no such model file; give a TorchScript file ({option('model')})")
        if self.device not in DEVICES:
            raise ParameterError(f"unknown {option('device')} {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ParameterError(f"{option('device', 'cuda')}: no CUDA device here; use {option('device', 'cpu')}")
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise ParameterError(
                f"unknown {option('normalize')} {self.normalize!r}; choose {', '.join(NORMALIZATIONS)}"
            )
        object.__setattr__(self, "sha256", _sha256(path))
        self._load()  # a file that is no TorchScript model fails now, in one line

    @property
    def description(self) -> str:
        normalized = f", normalize {self.normalize}" if self.normalize else ""
        return f"torchscript {Path(self.model).name} sha256:{self.sha256[:16]}{normalized}"

    def _load(self) -> Any:
        import torch

        key = (self.model, self.device)
        with _LOADING:
            if key not in _MODELS:
                try:
                    model = torch.jit.load(self.model, map_location=self.device)
                except (RuntimeError, ValueError) as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ParameterError(
                        f"{self.model}: not a TorchScript model ({first}); save one with torch.jit.save"
                    ) from None
                _MODELS[key] = model.eval()
            return _MODELS[key]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        model = self._load()
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            images = pixels.permute(0, 3, 1, 2).float().div_(255)
            if self.normalize is not None:
                mean, std = NORMALIZATIONS[self.normalize]
                images = (images - torch.tensor(mean, device=self.device).view(1, 3, 1, 1)) / torch.tensor(
                    std, device=self.device
                ).view(1, 3, 1, 1)
            out = model(images)
            if not isinstance(out, torch.Tensor):
                raise ParameterError(f"{self.model}: the model returned {type(out).__name__}; it must return one tensor")
            return out.to(torch.float16).cpu().numpy()
