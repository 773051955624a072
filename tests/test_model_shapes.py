"""The driver's torch-free checks: backbone shapes, checkpoint shapes, ImageNet URLs and cache path."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from udfs import image_models as M
from udfs import model_shapes


@pytest.mark.parametrize("name", sorted(M.MODEL_FEATURE_DIMS))
def test_backbone_shapes_are_torchvisions(name: str) -> None:
    with torch.device("meta"):
        expected = getattr(torchvision.models, name)(weights=None).state_dict()
    assert model_shapes.backbone_shapes(name) == {k: tuple(v.shape) for k, v in expected.items()}
    assert model_shapes.IMAGENET_URLS[name] == torchvision.models.get_model_weights(name).DEFAULT.url


def test_imagenet_cache_path_is_torch_hubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = model_shapes.IMAGENET_URLS["resnet18"]
    for env in ({}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {"TORCH_HOME": str(tmp_path / "th")}):
        for name in ("XDG_CACHE_HOME", "TORCH_HOME"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        expected = os.path.join(torch.hub.get_dir(), "checkpoints", "resnet18-f37072fd.pth")
        assert M.imagenet_cache_path(url) == expected


def test_checkpoint_shapes_are_read_without_the_tensor_data(tmp_path: Path) -> None:
    torch.manual_seed(4)
    state = torchvision.models.resnet18(weights=None).state_dict()
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    expected = {k: tuple(v.shape) for k, v in state.items()}
    with open(plain, "rb") as stream:
        assert model_shapes.read_checkpoint_shapes(stream) == expected
    # Wrapped with training metadata (numbers, strings, lists), as a DataParallel module: unwrapped.
    wrapped = tmp_path / "wrapped.pth"
    parallel = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 3, "arch": "resnet18", "lr": [0.1], "state_dict": parallel}, wrapped)
    assert M.read_shapes(str(wrapped)) == expected
    # The tensor data is never read: the checkpoint without its storage records reads the same.
    pickle_only = tmp_path / "pickle_only.pth"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(pickle_only, "w") as target:
        for item in source.infolist():
            if "/data/" not in item.filename:
                target.writestr(item, source.read(item))
    with zipfile.ZipFile(pickle_only) as archive:
        assert not [n for n in archive.namelist() if "/data/" in n]
    with open(pickle_only, "rb") as stream:
        assert model_shapes.read_checkpoint_shapes(stream) == expected


def test_files_the_shape_reader_cannot_replay_are_loaded_with_torch(tmp_path: Path) -> None:
    torch.manual_seed(5)
    state = torchvision.models.resnet18(weights=None).state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    legacy = tmp_path / "legacy.pth"  # torch's pre-1.6 format: not a zip
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    with open(legacy, "rb") as stream:
        assert model_shapes.read_checkpoint_shapes(stream) is None
    assert M.read_shapes(str(legacy)) == expected
    spec = M.resolve_weights("resnet18", str(legacy))
    assert spec.sha256 == hashlib.sha256(legacy.read_bytes()).hexdigest()
    loaded = M.load_backbone("resnet18", spec).state_dict()  # and the executors load it
    assert all(torch.equal(loaded[k], state[k]) for k in loaded) and "layer4.1.bn2.bias" in loaded
    # A whole pickled module: neither reader accepts it (torch's weights_only load refuses its classes).
    module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), module)
    with open(module, "rb") as stream:
        assert model_shapes.read_checkpoint_shapes(stream) is None
    with pytest.raises(M.ModelConfigError, match="cannot load a state_dict"):
        M.read_shapes(str(module))
    # A zip that is not a checkpoint, and a numpy array among the values: refused the same way.
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("x/readme.txt", "hello")
    with pytest.raises(M.ModelConfigError, match="cannot load a state_dict"):
        M.read_shapes(str(other_zip))
    with_numpy = tmp_path / "numpy.pth"
    torch.save({"weight": torch.zeros(2, 2), "extra": np.zeros(2)}, with_numpy)
    with open(with_numpy, "rb") as stream:
        assert model_shapes.read_checkpoint_shapes(stream) is None
    with pytest.raises(M.ModelConfigError, match="cannot load a state_dict"):
        M.read_shapes(str(with_numpy))


def test_head_checks_read_shapes_only(tmp_path: Path) -> None:
    torch.manual_seed(6)
    linear = torch.nn.Linear(512, 8)
    path = tmp_path / "head.pth"
    torch.save({f"head.{k}": v for k, v in linear.state_dict().items()}, path)
    assert M.head_out_features(str(path), 512) == 8
    with pytest.raises(M.ModelConfigError, match="head takes 512 inputs but the model gives 2048"):
        M.head_out_features(str(path), 2048)
    torch.save({"weight": torch.rand(8, 512), "bias": torch.rand(7)}, tmp_path / "bias.pth")
    with pytest.raises(M.ModelConfigError, match="bias has 7 values for 8 outputs"):
        M.head_out_features(str(tmp_path / "bias.pth"), 512)
    with pytest.raises(M.ModelConfigError, match="file not found"):
        M.head_out_features(str(tmp_path / "none.pth"), 512)


def test_the_drivers_checks_do_not_import_torch(tmp_path: Path) -> None:
    torch.manual_seed(7)
    weights, head = tmp_path / "resnet18.pth", tmp_path / "head.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    torch.save(torch.nn.Linear(512, 16).state_dict(), head)
    code = (
        "import json, sys\n"
        "from jobs import embed_images as E\n"
        f"args = E.build_parser().parse_args(['--images-root', {str(tmp_path)!r}, '--output', 'o', "
        f"'--run-date', '2024-01-01', '--model', 'resnet18', '--weights', {str(weights)!r}, "
        f"'--head', {str(head)!r}])\n"
        "config, details = E.resolve_model(E.EmbedSpec.from_args(args))\n"
        "print(json.dumps({'dims': details['dimensions'], 'sha': details['weights_sha256'],\n"
        "                  'loaded': sorted(m for m in ('torch', 'torchvision') if m in sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"dims": 16, "sha": hashlib.sha256(weights.read_bytes()).hexdigest(), "loaded": []}
