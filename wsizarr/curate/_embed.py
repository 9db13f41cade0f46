"""``wsizarr embed``: features from an encoder, as an array added to the store.

:class:`Encoder` is the ``fn`` that ``add_array`` calls. It names its model by what pickles (a
TorchScript file, ``timm:ARCHITECTURE``, ``FILE.py:FUNCTION``, ``MODULE:FUNCTION`` or a
function), loads it once per process and device (so it runs on threads, process workers and dask
workers alike), optionally loads a checkpoint (a state dict or a safetensors file) into it, feeds
it float32 ``(B, 3, H, W)`` pixels in [0, 1] (optionally normalised with ImageNet's mean and
standard deviation) under ``torch.inference_mode`` and, at ``fp16`` or ``bf16``,
``torch.autocast``, and returns its output as float16 numpy rows. :func:`embed` is ``add_array`` with an encoder.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ParameterError, option
from .._locations import Location
from ._added import AddSummary, add_array

__all__ = ["DEVICES", "NORMALIZATIONS", "PRECISIONS", "Encoder", "embed", "parse_model_args"]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
_AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # torch's names
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
ModelSpec = str | os.PathLike[str] | Callable[[], Any]

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_TIMM_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")  # an architecture, and a pretrained tag
_SPEC_HELP = (
    "give a TorchScript file, timm:ARCHITECTURE, FILE.py:FUNCTION or MODULE:FUNCTION (a function "
    "returning a torch module)"
)
_NO_DOWNLOADS = f"wsizarr never downloads weights; give them as a local file ({option('checkpoint')})"
_MODELS: dict[tuple[Any, ...], Any] = {}  # loaded once per process and device
_AUTOCASTS: set[tuple[str, str]] = set()  # (device, precision) checked in this process
_LOADING = threading.Lock()


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (its type when it has none)."""
    text = str(exc).strip()
    return re.split(r"(?<=\.)\s", text.splitlines()[0])[0] if text else type(exc).__name__


@dataclass(frozen=True)
class _Spec:
    """A model named by text: a TorchScript file, a timm architecture, or ``function`` of a
    Python file or module."""

    kind: str  # "torchscript", "timm", "file" or "module"
    where: str  # the file (absolute), the architecture or the module's name
    function: str = ""


@dataclass(frozen=True)
class Encoder:
    """A model as ``add_array``'s ``fn``: uint8 ``(B, H, W, 3)`` in, the model's output for
    float32 ``(B, 3, H, W)`` pixels in [0, 1] (``normalize="imagenet"``: then minus ImageNet's
    mean, over its standard deviation) out, as float16.

    ``model`` is a TorchScript file (``torch.jit.save``), ``"timm:ARCHITECTURE"`` (a timm
    architecture such as ``timm:vit_large_patch16_224``, made with ``pretrained=False`` and
    ``num_classes=0``: its features, not a classifier's scores), ``"FILE.py:FUNCTION"``,
    ``"MODULE:FUNCTION"`` (imported as Python imports it) or a function; the function is called
    once per process with ``model_args`` as keywords (with no arguments by default), and returns
    a ``torch.nn.Module`` or a batch function (float32 ``(B, 3, H, W)`` tensor in, ``(B, ...)``
    tensor out). ``model_args`` are also ``timm.create_model``'s keywords (``img_size=224``,
    ``init_values=1e-5``, ``dynamic_img_size=True``, ...). ``checkpoint`` is a state dict file
    (``torch.save(module.state_dict(), path)``) or a ``.safetensors`` file, loaded into the
    module; nothing is ever downloaded.
    ``device``: ``auto`` (CUDA where a worker has it, else the CPU), ``cpu`` or ``cuda``;
    ``precision``: ``fp32``, or ``fp16``/``bf16`` under ``torch.autocast`` where the device
    supports it. ``description`` names the model (and the SHA-256 of its file, its Python
    source file and its checkpoint), the precision and the normalisation, so that a resume
    with another model is refused. Raises ``ParameterError`` in one line for a model or a
    checkpoint that cannot be loaded, an unknown option, or a device or precision this machine
    lacks.
    """

    model: ModelSpec
    checkpoint: str | os.PathLike[str] | None = None
    model_args: Mapping[str, Any] | None = None
    device: str = "auto"
    precision: str = "fp32"
    normalize: str | None = None
    description: str = field(default="", init=False, compare=False)
    _source: _Spec | Callable[[], Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        import torch

        if self.device not in DEVICES:
            raise ParameterError(f"unknown {option('device')} {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ParameterError(f"{option('device', 'cuda')}: no CUDA device here; use {option('device', 'cpu')}")
        if self.precision not in PRECISIONS:
            raise ParameterError(
                f"unknown {option('precision')} {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise ParameterError(
                f"unknown {option('normalize')} {self.normalize!r}; choose {', '.join(NORMALIZATIONS)}"
            )
        model = self.model if callable(self.model) else _parse_spec(os.fspath(self.model))
        object.__setattr__(self, "_source", model)
        object.__setattr__(self, "model_args", _checked_args(model, self.model_args))
        if self.checkpoint is not None:
            checkpoint = Path(self.checkpoint)
            if not checkpoint.is_file():
                raise ParameterError(
                    f"{self.checkpoint}: no such checkpoint file; give a state dict saved with "
                    f"torch.save(module.state_dict(), path) ({option('checkpoint')})"
                )
            object.__setattr__(self, "checkpoint", str(checkpoint.resolve()))
        self._load(self._device())  # a model, checkpoint or precision that cannot work fails now, in one line
        parts = [_describe(model)]
        if self.model_args:
            parts.append(" ".join(f"{key}={value!r}" for key, value in self.model_args))
        if self.checkpoint is not None:
            parts.append(f"checkpoint {Path(self.checkpoint).name} sha256:{_sha256(self.checkpoint)[:16]}")
        if self.precision != "fp32":
            parts.append(self.precision)
        if self.normalize:
            parts.append(f"normalize {self.normalize}")
        object.__setattr__(self, "description", ", ".join(parts))

    def _device(self) -> str:
        """Where this process runs the model (``auto``: CUDA when this process has it)."""
        import torch

        return "cuda" if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()) else "cpu"

    def _load(self, device: str) -> Any:
        with _LOADING:
            if (device, self.precision) not in _AUTOCASTS:
                _check_autocast(device, self.precision)
                _AUTOCASTS.add((device, self.precision))
            key = (self._source, repr(self.model_args), self.checkpoint, device)
            if key not in _MODELS:
                made = _make(self._source, dict(self.model_args or ()), device)
                _MODELS[key] = _prepare(made, self.checkpoint, device)
            return _MODELS[key]

    def __call__(self, batch: np.ndarray) -> Any:
        import torch

        device = self._device()
        model = self._load(device)
        with torch.inference_mode(), _autocast(device, self.precision):
            pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
            images = pixels.permute(0, 3, 1, 2).float().div_(255)
            if self.normalize is not None:
                mean, std = (torch.tensor(values, device=device).view(1, 3, 1, 1) for values in NORMALIZATIONS[self.normalize])
                images = (images - mean) / std
            out = model(images)
        if isinstance(out, torch.Tensor):
            return out.to(torch.float16).cpu().numpy()
        return out  # not a tensor: add_array refuses what it cannot store and leaves the store as it was


def _autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``precision`` on ``device`` (nothing at fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=getattr(torch, _AUTOCAST_DTYPES[precision]))


def _check_autocast(device: str, precision: str) -> None:
    """``ParameterError`` when torch cannot autocast to ``precision`` on ``device``: where it
    would warn and run in float32 instead, or refuse (bf16 on a GPU without it)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _autocast(device, precision):
                pass
    except RuntimeError as exc:
        why: str | None = _first_line(exc)
    else:
        why = next((str(w.message).splitlines()[0] for w in caught if "Disabling autocast" in str(w.message)), None)
    if why is not None:
        raise ParameterError(
            f"{option('precision', precision)} is not supported on {device} here ({why}); choose another "
            f"{option('precision')}, e.g. fp32"
        )


# --- naming and loading a model ------------------------------------------------------------------


def parse_model_args(texts: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` texts as keyword arguments: each value a Python literal (``224``,
    ``1e-5``, ``True``, ``(1, 2)``, ``'text'``) or else the text itself. ``ParameterError`` for
    a text without ``=`` or a key that is not a name."""
    args: dict[str, Any] = {}
    for text in texts or ():
        key, equals, value = text.partition("=")
        if not equals or not key.strip().isidentifier():
            raise ParameterError(f"{option('model_args')} {text!r}: give KEY=VALUE, e.g. img_size=224")
        try:
            args[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            args[key.strip()] = value.strip()
    return args


def _checked_args(model: _Spec | Callable[[], Any], args: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """The model's keyword arguments, sorted; ``ParameterError`` where they cannot apply."""
    if not args:
        return ()
    if isinstance(model, _Spec) and model.kind == "torchscript":
        raise ParameterError(
            f"{option('model_args')} applies to a timm architecture or a Python function, not to the "
            f"TorchScript file {Path(model.where).name}"
        )
    if isinstance(model, _Spec) and model.kind == "timm" and args.get("pretrained"):
        raise ParameterError(f"timm:{model.where} with pretrained={args['pretrained']!r}: {_NO_DOWNLOADS}")
    return tuple(sorted(args.items()))


def _parse_spec(text: str) -> _Spec:
    if text.startswith("timm:"):
        name = text.removeprefix("timm:")
        if name.startswith(("hf-hub:", "hf_hub:")) or "/" in name:
            raise ParameterError(f"{option('model')} {text!r}: {_NO_DOWNLOADS}, and name the architecture, "
                                 "e.g. timm:vit_large_patch16_224")
        if not _TIMM_NAME.fullmatch(name):
            raise ParameterError(f"{option('model')} {text!r} names no timm architecture; e.g. timm:resnet50")
        return _Spec("timm", name)
    head, colon, name = text.rpartition(":")
    if Path(text).is_file():
        if text.endswith(".py"):
            raise ParameterError(f"{text}: name the function that makes the model, e.g. {text}:make_model")
        return _Spec("torchscript", str(Path(text).resolve()))
    if colon and head.endswith(".py") and _DOTTED.fullmatch(name):
        if not Path(head).is_file():
            raise ParameterError(f"{head}: no such Python file ({option('model')}); {_SPEC_HELP}")
        return _Spec("file", str(Path(head).resolve()), name)
    if colon and _DOTTED.fullmatch(head) and _DOTTED.fullmatch(name):
        return _Spec("module", head, name)
    if not colon:
        raise ParameterError(f"{text}: no such model file ({option('model')}); {_SPEC_HELP}")
    raise ParameterError(f"{option('model')} {text!r} names no model; {_SPEC_HELP}")


def _module_of(spec: _Spec) -> Any:
    """The Python module a spec names, imported (a file as a module of its own)."""
    try:
        if spec.kind == "module":
            return importlib.import_module(spec.where)
        name = f"_wsizarr_model_{hashlib.sha256(spec.where.encode()).hexdigest()[:16]}"
        if name not in sys.modules:
            loader = importlib.util.spec_from_file_location(name, spec.where)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            try:
                loader.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        return sys.modules[name]
    except Exception as exc:  # the user's code: any error while importing it
        raise ParameterError(f"cannot import {spec.where} ({type(exc).__name__}: {_first_line(exc)})") from None


def _function(spec: _Spec) -> Callable[[], Any]:
    found: Any = _module_of(spec)
    for part in spec.function.split("."):
        if not hasattr(found, part):
            raise ParameterError(f"{spec.where} has no {spec.function!r}; {_SPEC_HELP}")
        found = getattr(found, part)
    if not callable(found):
        raise ParameterError(f"{spec.where}:{spec.function} is a {type(found).__name__}, not a function; {_SPEC_HELP}")
    return found


def _source_digest(module_name: str | None) -> str:
    """`` sha256:...`` of a module's source file, or nothing when it has none."""
    source = getattr(sys.modules.get(module_name or ""), "__file__", None)
    return f" sha256:{_sha256(source)[:16]}" if source and Path(source).is_file() else ""


def _name(model: _Spec | Callable[[], Any]) -> str:
    """The model's short name: its file's name, ``timm:ARCHITECTURE``, ``FILE.py:FUNCTION`` or
    ``MODULE:FUNCTION``."""
    if isinstance(model, _Spec) and model.kind == "timm":
        return f"timm:{model.where}"
    if isinstance(model, _Spec):
        where = model.where if model.kind == "module" else Path(model.where).name
        return f"{where}:{model.function}" if model.function else where
    return f"{getattr(model, '__module__', None)}:{getattr(model, '__qualname__', type(model).__qualname__)}"


def _describe(model: _Spec | Callable[[], Any]) -> str:
    """How the manifest names a loaded model: its kind, its name and the SHA-256 of its file (a
    module's source file, where it has one; timm's version for a timm architecture)."""
    if isinstance(model, _Spec) and model.kind == "timm":
        return f"timm {model.where} (timm {_timm().__version__})"
    if isinstance(model, _Spec) and model.kind != "module":
        kind = "torchscript" if model.kind == "torchscript" else "python"
        return f"{kind} {_name(model)} sha256:{_sha256(model.where)[:16]}"
    module = model.where if isinstance(model, _Spec) else getattr(model, "__module__", None)
    return f"python {_name(model)}{_source_digest(module)}"


def _timm() -> Any:
    """The timm module; ``ParameterError`` when it is missing or cannot be imported (timm
    imports torchvision, which must be the build made for the installed torch)."""
    try:
        import timm
    except Exception as exc:  # ImportError, or torchvision's RuntimeError beside another torch build
        raise ParameterError(
            f"timm: cannot import it ({type(exc).__name__}: {_first_line(exc)}); pip install "
            "'wsizarr[timm]', with the torchvision release made for your torch"
        ) from None
    return timm


def _make(model: _Spec | Callable[[], Any], args: dict[str, Any], device: str) -> Any:
    """The loaded TorchScript model, the timm architecture, or what the model's function returns."""
    import torch

    if isinstance(model, _Spec) and model.kind == "timm":
        timm = _timm()
        if not timm.is_model(model.where):
            raise ParameterError(
                f"timm {timm.__version__} has no architecture {model.where!r}; list them with "
                "python -c \"import timm; print(timm.list_models('*vit*'))\""
            )
        try:
            return timm.create_model(model.where, **{"num_classes": 0, **args, "pretrained": False})
        except Exception as exc:  # timm and the architecture's own checks of the arguments
            raise ParameterError(f"timm:{model.where} cannot be made ({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(model, _Spec) and model.kind == "torchscript":
        try:
            with warnings.catch_warnings():  # torch 2.14 nags that TorchScript is deprecated: still supported
                warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=FutureWarning)
                warnings.filterwarnings("ignore", message=".*TorchScript.*deprecated", category=DeprecationWarning)
                return torch.jit.load(model.where, map_location=device)
        except (RuntimeError, ValueError) as exc:
            raise ParameterError(
                f"{model.where}: not a TorchScript model ({_first_line(exc)}); save one with torch.jit.save"
            ) from None
    function = _function(model) if isinstance(model, _Spec) else model
    try:
        made = function(**args)
    except Exception as exc:  # the user's code
        raise ParameterError(f"{_name(model)}() failed ({type(exc).__name__}: {_first_line(exc)})") from None
    if not callable(made):
        raise ParameterError(
            f"{_name(model)}() returned {type(made).__name__}; return a torch module or a function "
            "of a (B, 3, H, W) tensor"
        )
    return made


def _read_checkpoint(checkpoint: str) -> Any:
    """What a checkpoint file holds: a ``.safetensors`` file's tensors, or ``torch.load`` with
    ``weights_only`` (no code runs)."""
    import torch

    if checkpoint.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ParameterError(f"{checkpoint}: reading .safetensors needs pip install safetensors") from None
        try:
            return load_file(checkpoint)
        except Exception as exc:  # safetensors' own errors
            raise ParameterError(f"{checkpoint}: not a safetensors file ({_first_line(exc)})") from None
    try:
        with warnings.catch_warnings():  # a TorchScript file: torch warns, then refuses it
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: not a checkpoint we can read
        raise ParameterError(f"{checkpoint}: not a PyTorch checkpoint ({_first_line(exc)})") from None


def _prepare(model: Any, checkpoint: str | None, device: str) -> Any:
    """The model with the checkpoint's weights, in eval mode, on ``device``."""
    import torch

    if checkpoint is not None:
        if not isinstance(model, torch.nn.Module):
            raise ParameterError(
                f"{checkpoint}: a checkpoint needs a torch module, but the model is a "
                f"{type(model).__name__}; return the module, or load the weights yourself"
            )
        state = _read_checkpoint(checkpoint)
        if not isinstance(state, Mapping):
            raise ParameterError(
                f"{checkpoint}: holds a {type(state).__name__}, not a state dict; save "
                "torch.save(module.state_dict(), path)"
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ParameterError(
                f"{checkpoint}: does not fit the model ({' '.join(str(exc).split())[:300]})"
            ) from None
    if isinstance(model, torch.nn.Module):
        model = model.eval().to(device)
    return model


# --- the run -------------------------------------------------------------------------------------


def embed(
    store: str | os.PathLike[str] | Location,
    name: str,
    model: ModelSpec,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    model_args: Mapping[str, Any] | None = None,
    device: str = "auto",
    precision: str = "fp32",
    normalize: str | None = None,
    **add_options: Any,
) -> AddSummary:
    """Run ``model`` (see :class:`Encoder`) over every patch of a complete store and add its
    output as the float16 array ``name``, ``(N, ...)`` along ``patch``. ``add_options`` are
    ``add_array``'s (``batch_size``, ``workers``, ``executor``, ``client``,
    ``storage_options``, ``overwrite``, ``progress``). Several encoders go into one store
    under several names; the same call again after a crash finishes what is missing."""
    encoder = Encoder(
        model, checkpoint=checkpoint, model_args=model_args, device=device, precision=precision, normalize=normalize
    )
    return add_array(store, name, encoder, **add_options)
