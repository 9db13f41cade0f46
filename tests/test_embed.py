"""``wsizarr embed`` / ``wsizarr.embed``: several encoders (a TorchScript file, a timm
architecture with local weights, a function of a Python file or module) into one store, each array what the model gives for the stored patches;
every executor; a SIGKILL and the same command again; one-line errors that leave the store as it
was; and what the precision changes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

import wsizarr

from .helpers import assert_one_line_error, assert_same_store, run, store_bytes
from .test_add_array import N_SHARDS, SMALL, TinyCNN
from .test_crash import _finished, start_and_kill

# the second encoder, and a few bad ones, as a user writes them: a Python file of functions
ENCODERS = '''
import time

import torch


class Wide(torch.nn.Module):
    """A 5 x 5 convolution, tanh and max pooling: 6 features a patch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv2d(3, 6, 5, padding=2)

    def forward(self, x):
        return torch.amax(torch.tanh(self.conv(x)), dim=(2, 3))


def wide():
    return Wide()


def slow():
    """Wide as a batch function that takes a while: a run to kill half-way."""
    model = Wide().eval()

    def features(x):
        time.sleep(0.3)
        return model(x)

    return features


def scaled(scale=1.0):
    """Wide's features times ``scale``: a function with keyword arguments (--model-args)."""
    model = Wide().eval()
    return lambda x: model(x) * scale


def drops_a_row():
    model = Wide().eval()
    return lambda x: model(x)[:-1]


def not_a_model():
    return 42
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``cnn.pt`` (a TorchScript TinyCNN), ``encoders.py`` (``ENCODERS``), its module, and a
    checkpoint of Wide's weights made with another seed."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.10+, still supported
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14's word for it
        cnn = torch.jit.script(TinyCNN().eval())
        torch.jit.save(cnn, str(folder / "cnn.pt"))
    (folder / "encoders.py").write_text(ENCODERS)
    spec = importlib.util.spec_from_file_location("encoders", folder / "encoders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(8)
    other = module.Wide()
    torch.nn.init.normal_(other.conv.weight)
    torch.save(other.state_dict(), folder / "wide.pth")
    (folder / "bad.safetensors").write_bytes(b"not tensors at all")
    return {"folder": folder, "cnn": cnn, "encoders": module, "file": folder / "encoders.py",
            "checkpoint": folder / "wide.pth", "other": other.eval()}


@pytest.fixture(scope="module")
def plain(tmp_path_factory, aperio_even_case):
    """A store of 32 patches in 8 shards of 4."""
    store = tmp_path_factory.mktemp("embed") / "plain.zarr"
    wsizarr.extract(aperio_even_case.slide, aperio_even_case.annotations, store, **SMALL)
    return store


@pytest.fixture
def copy(tmp_path, plain):
    return shutil.copytree(plain, tmp_path / "store.zarr")


def _applied(model, store, normalize=False, storage_options=None) -> np.ndarray:
    """``model`` applied directly to the stored patches, as float32 (B, 3, H, W) in [0, 1]."""
    patches = wsizarr.open_dataset(store, storage_options=storage_options).patches.values
    images = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    if normalize:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        images = (images - mean) / std
    with torch.no_grad():
        return model(images).numpy()


def _stored(store, name, storage_options=None) -> np.ndarray:
    values = getattr(wsizarr.open_dataset(store, storage_options=storage_options), name).values
    assert values.dtype == np.float16
    return values


def test_two_encoders_into_one_store(store_location, aperio_even_case, models):
    url, options = store_location.url, store_location.options
    wsizarr.extract(aperio_even_case.slide, aperio_even_case.annotations, url, storage_options=options, **SMALL)
    first = run("embed", url, "--model", models["folder"] / "cnn.pt", "--name", "features_a",
                "--normalize", "imagenet", *store_location.cli)
    assert "features_a: (32, 12) float16" in first.stdout
    second = run("embed", url, "--model", f"{models['file']}:wide", "--name", "features_b",
                 "--batch-size", "3", *store_location.cli)
    assert "features_b: (32, 6) float16" in second.stdout
    expected_a = _applied(models["cnn"], url, normalize=True, storage_options=options)
    expected_b = _applied(models["encoders"].wide().eval(), url, storage_options=options)
    np.testing.assert_allclose(_stored(url, "features_a", options), expected_a, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(_stored(url, "features_b", options), expected_b, rtol=1e-3, atol=1e-3)
    shown = run("info", url, *store_location.cli).stdout
    assert "features_a  32x12 float16  by torchscript cnn.pt sha256:" in shown
    assert "features_b  32x6 float16  by python encoders.py:wide sha256:" in shown
    assert wsizarr.verify(url, sample=0, storage_options=options).ok


def test_a_module_function_on_processes_and_dask_gives_the_same_store(plain, tmp_path, models, monkeypatch):
    reference = tmp_path / "threads.zarr"
    shutil.copytree(plain, reference)
    monkeypatch.syspath_prepend(str(models["folder"]))  # MODULE:FUNCTION, imported as Python imports it
    wsizarr.embed(reference, "features", "encoders:wide", workers=2)
    expected = _applied(models["encoders"].wide().eval(), reference)
    np.testing.assert_allclose(_stored(reference, "features"), expected, rtol=1e-3, atol=1e-3)

    processes = tmp_path / "processes.zarr"
    shutil.copytree(plain, processes)
    env = {**os.environ, "PYTHONPATH": str(models["folder"])}
    run("embed", processes, "--model", "encoders:wide", "--name", "features", "--executor", "processes",
        "--workers", "2", env=env)
    assert_same_store(reference, processes)

    distributed = pytest.importorskip("distributed")
    on_dask = tmp_path / "dask.zarr"
    shutil.copytree(plain, on_dask)
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        wsizarr.embed(on_dask, "features", "encoders:wide", client=client)
    assert_same_store(reference, on_dask)


def test_sigkill_mid_embed_then_the_same_command_gives_the_same_store(plain, tmp_path, models):
    command = ["--model", f"{models['file']}:slow", "--name", "features", "--workers", "1"]
    reference = tmp_path / "reference.zarr"
    shutil.copytree(plain, reference)
    run("embed", reference, *command)
    crashed = tmp_path / "crashed.zarr"
    shutil.copytree(plain, crashed)
    markers = crashed / "_adding" / "features" / "c"
    start_and_kill(["embed", crashed, *command], when=lambda: markers.is_dir() and len(_finished(markers)) >= 3)
    done = len(_finished(markers))
    assert 3 <= done < N_SHARDS
    assert "UNFINISHED" in run("info", crashed).stdout
    again = run("embed", crashed, *command)
    assert f"({N_SHARDS - done} of {N_SHARDS} shards written)" in again.stdout
    assert_same_store(reference, crashed)
    assert wsizarr.verify(crashed, sample=0).ok


@pytest.mark.parametrize("model, extra, fragments", [
    ("{folder}/nowhere.pt", [], ["nowhere.pt: no such model file", "--model"]),
    ("not a spec:", [], ["names no model", "FILE.py:FUNCTION or MODULE:FUNCTION"]),
    ("no_such_module_here:make", [], ["cannot import no_such_module_here", "ModuleNotFoundError"]),
    ("{folder}/encoders.py", [], ["name the function that makes the model", "encoders.py:make_model"]),
    ("{folder}/encoders.py:missing", [], ["has no 'missing'"]),
    ("{folder}/encoders.py:not_a_model", [], ["encoders.py:not_a_model() returned int", "a torch module"]),
    ("{folder}/encoders.py:wide", ["--checkpoint", "{folder}/missing.pth"], ["missing.pth: no such checkpoint file", "--checkpoint"]),
    ("{folder}/encoders.py:wide", ["--checkpoint", "{folder}/cnn.pt"], ["cnn.pt: not a PyTorch checkpoint"]),
    ("{folder}/cnn.pt", ["--checkpoint", "{folder}/wide.pth"], ["wide.pth: does not fit the model", "Missing key(s)"]),
    ("{folder}/encoders.py:drops_a_row", [], ["add_array('features')", "3 rows", "one row per patch"]),
    ("{folder}/encoders.py:wide", ["--checkpoint", "{folder}/bad.safetensors"], ["bad.safetensors: not a safetensors file"]),
    ("{folder}/encoders.py:wide", ["--model-args", "oops"], ["--model-args 'oops': give KEY=VALUE"]),
    ("{folder}/encoders.py:wide", ["--model-args", "depth=2"], ["encoders.py:wide() failed (TypeError", "depth"]),
    ("{folder}/cnn.pt", ["--model-args", "x=1"], ["--model-args applies to a timm architecture or a Python function"]),
    ("timm:no_such_architecture", [], ["has no architecture 'no_such_architecture'", "timm.list_models"]),
    ("timm:hf-hub:MahmoodLab/UNI", [], ["never downloads", "--checkpoint", "timm:vit_large_patch16_224"]),
    ("timm:resnet18", ["--model-args", "pretrained=True"], ["timm:resnet18 with pretrained=True", "never downloads"]),
    ("timm:resnet18", ["--model-args", "bogus=1"], ["timm:resnet18 cannot be made (TypeError", "bogus"]),
    ("timm:resnet18", ["--checkpoint", "{folder}/wide.pth"], ["wide.pth: does not fit the model", "Missing key(s)"]),
])
def test_a_model_that_cannot_work_is_one_line_and_leaves_the_store_as_it_was(copy, models, model, extra, fragments):
    folder = models["folder"]
    before = store_bytes(copy)
    args = [model.format(folder=folder), *(arg.format(folder=folder) for arg in extra)]
    result = run("embed", copy, "--model", *args, "--name", "features", expect=1)
    assert_one_line_error(result, *fragments)
    assert store_bytes(copy) == before


def test_a_checkpoint_is_loaded_into_the_module(copy, models):
    wsizarr.embed(copy, "features", models["encoders"].wide, checkpoint=models["checkpoint"])
    expected = _applied(models["other"], copy)
    np.testing.assert_allclose(_stored(copy, "features"), expected, rtol=1e-3, atol=1e-3)
    description = wsizarr.read_patch_table(copy).added["features"].fn
    assert description.startswith("python encoders:wide")
    assert ", checkpoint wide.pth sha256:" in description


VIT = "timm:vit_tiny_patch16_224"
VIT_ARGS = {"img_size": 32, "patch_size": 8, "depth": 2}  # a small ViT for 32-px patches


def test_a_timm_architecture_with_local_weights_on_threads_and_processes(plain, tmp_path, models):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    vit = timm.create_model(VIT.removeprefix("timm:"), pretrained=False, num_classes=0, **VIT_ARGS).eval()
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    on_threads = shutil.copytree(plain, tmp_path / "threads.zarr")
    shown = run("embed", on_threads, "--model", VIT, "--model-args", *(f"{k}={v}" for k, v in VIT_ARGS.items()),
                "--checkpoint", tmp_path / "vit.pth", "--name", "features", "--normalize", "imagenet").stdout
    assert "features: (32, 192) float16" in shown  # the ViT's 192 features, not a classifier's scores
    expected = _applied(vit, on_threads, normalize=True)
    np.testing.assert_allclose(_stored(on_threads, "features"), expected, rtol=1e-3, atol=2e-3)
    description = wsizarr.read_patch_table(on_threads).added["features"].fn
    assert description.startswith(f"timm vit_tiny_patch16_224 (timm {timm.__version__}), depth=2 img_size=32 patch_size=8")
    assert ", checkpoint vit.pth sha256:" in description
    # the same weights as safetensors, on processes: the same array
    on_processes = shutil.copytree(plain, tmp_path / "processes.zarr")
    wsizarr.embed(on_processes, "features", VIT, model_args=VIT_ARGS, checkpoint=tmp_path / "vit.safetensors",
                  normalize="imagenet", executor="processes", workers=2)
    np.testing.assert_array_equal(_stored(on_processes, "features"), _stored(on_threads, "features"))
    # without the checkpoint the weights are timm's random ones: the checkpoint was what counted
    untrained = shutil.copytree(plain, tmp_path / "untrained.zarr")
    wsizarr.embed(untrained, "features", VIT, model_args=VIT_ARGS, normalize="imagenet")
    assert np.abs(_stored(untrained, "features").astype(np.float32) - expected).max() > 0.1


def test_model_args_go_to_the_function(copy, models):
    wsizarr.embed(copy, "features", f"{models['file']}:scaled", model_args={"scale": 2.5})
    expected = 2.5 * _applied(models["encoders"].wide().eval(), copy)
    np.testing.assert_allclose(_stored(copy, "features"), expected, rtol=1e-3, atol=1e-3)
    assert wsizarr.read_patch_table(copy).added["features"].fn.endswith(", scale=2.5")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_precision_changes_the_values_within_its_tolerance_and_nothing_else(plain, tmp_path, models, precision):
    full = tmp_path / "fp32.zarr"
    shutil.copytree(plain, full)
    wsizarr.embed(full, "features", models["encoders"].wide)
    mixed = tmp_path / f"{precision}.zarr"
    shutil.copytree(plain, mixed)
    summary = wsizarr.embed(mixed, "features", models["encoders"].wide, precision=precision)
    assert summary.shape == (32, 6) and summary.dtype == "float16"
    # the same store but for the values and the description of the model
    assert_same_store(full, mixed, ignore_arrays=["features"], ignore_attrs=["fn", "description"])
    assert wsizarr.read_patch_table(mixed).added["features"].fn.endswith(f", {precision}")
    exact, approximate = _stored(full, "features").astype(np.float32), _stored(mixed, "features").astype(np.float32)
    assert not np.array_equal(exact, approximate)  # autocast did run the model at lower precision
    tolerance = 3e-2 if precision == "bf16" else 5e-3  # bf16 keeps 8 bits of mantissa, fp16 11
    np.testing.assert_allclose(approximate, exact, rtol=tolerance, atol=tolerance)


def test_unknown_options_are_refused_before_any_work(copy, models):
    before = store_bytes(copy)
    for keywords, words in [
        ({"precision": "fp8"}, "unknown precision 'fp8'; choose one of fp32, fp16, bf16"),
        ({"device": "tpu"}, "unknown device 'tpu'; choose one of auto, cpu, cuda"),
        ({"normalize": "ours"}, "unknown normalize 'ours'; choose imagenet"),
    ]:
        with pytest.raises(wsizarr.ParameterError, match=words):
            wsizarr.embed(copy, "features", models["encoders"].wide, **keywords)
    assert store_bytes(copy) == before


def test_a_precision_torch_would_not_autocast_to_is_refused_not_run_in_float32():
    from wsizarr.curate._embed import _check_autocast

    _check_autocast("cpu", "bf16")  # PyTorch autocasts to both on CPUs
    _check_autocast("cpu", "fp16")
    if torch.cuda.is_available():
        _check_autocast("cuda", "fp16")
    else:  # torch warns "Disabling autocast" and would run the model in float32
        with pytest.raises(wsizarr.ParameterError, match=r"precision='fp16' is not supported on cuda here \(CUDA is not"):
            _check_autocast("cuda", "fp16")
