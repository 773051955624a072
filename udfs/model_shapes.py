"""Parameter names and shapes of the supported backbones and of checkpoint files, without importing torch.

The embed job's driver checks ``--weights`` and ``--head`` before any Spark work: every key the model
needs is there, none is foreign, every shape fits. It needs names and shapes only, not tensors, so it
does not pay torch's and torchvision's import (3 to 4 s on two cores) or their exit:

- :func:`backbone_shapes` is torchvision's ``state_dict`` of each backbone as ``{key: shape}``, built from
  the architectures' published layer counts (the tests compare it with torchvision's own models);
- :func:`read_checkpoint_shapes` reads ``{key: shape}`` from a file written by ``torch.save`` (its zip
  format): the pickle is replayed with tensors stood in by their shapes, and the tensor data is never
  read. A file it cannot read this way (the pre-1.6 format, or any object besides tensors, dicts, lists,
  numbers and strings) returns None, and the caller loads it with torch as before.

The executors load the real tensors (``udfs.image_models.read_state_dict``) and check them again.
"""
from __future__ import annotations

import pickle
import posixpath
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any

Shape = tuple[int, ...]

# ResNet: (block kind, blocks per stage) and the stages' widths (torchvision.models.resnet).
RESNET_WIDTHS = (64, 128, 256, 512)
RESNET_LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
# VGG16's feature extractor: output channels of each 3x3 convolution, "M" a max-pool (configuration "D").
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_IMAGENET_CLASSES = 1000

# torchvision's default ImageNet weights per backbone (``get_model_weights(name).DEFAULT.url``).
IMAGENET_URLS: dict[str, str] = {
    "resnet152": "https://download.pytorch.org/models/resnet152-f82ba261.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
}


def _batchnorm(prefix: str, channels: int) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {
        f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")
    }
    shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


def _resnet(kind: str, blocks: tuple[int, ...]) -> dict[str, Shape]:
    expansion = 4 if kind == "bottleneck" else 1
    shapes: dict[str, Shape] = {"conv1.weight": (64, 3, 7, 7), **_batchnorm("bn1", 64)}
    inplanes = 64
    for stage, (planes, count) in enumerate(zip(RESNET_WIDTHS, blocks, strict=True), start=1):
        for index in range(count):
            block = f"layer{stage}.{index}"
            if kind == "bottleneck":
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * expansion, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for number, (out, into, size) in enumerate(convs, start=1):
                shapes[f"{block}.conv{number}.weight"] = (out, into, size, size)
                shapes.update(_batchnorm(f"{block}.bn{number}", out))
            stride = 2 if stage > 1 and index == 0 else 1
            if stride != 1 or inplanes != planes * expansion:
                shapes[f"{block}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                shapes.update(_batchnorm(f"{block}.downsample.1", planes * expansion))
            inplanes = planes * expansion
    shapes["fc.weight"] = (_IMAGENET_CLASSES, 512 * expansion)
    shapes["fc.bias"] = (_IMAGENET_CLASSES,)
    return shapes


def _vgg16() -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    index, channels = 0, 3
    for layer in VGG16_LAYERS:
        if layer == "M":
            index += 1
            continue
        assert isinstance(layer, int)
        shapes[f"features.{index}.weight"] = (layer, channels, 3, 3)
        shapes[f"features.{index}.bias"] = (layer,)
        index, channels = index + 2, layer  # the convolution, then its ReLU
    for index, out, into in ((0, 4096, 512 * 7 * 7), (3, 4096, 4096), (6, _IMAGENET_CLASSES, 4096)):
        shapes[f"classifier.{index}.weight"] = (out, into)
        shapes[f"classifier.{index}.bias"] = (out,)
    return shapes


def backbone_shapes(name: str) -> dict[str, Shape]:
    """torchvision's ``state_dict`` of a full classification network as ``{key: shape}``.

    Raises:
        KeyError: not a supported backbone (``udfs.image_models.check_model_name`` names the choices).
    """
    if name == "vgg16":
        return _vgg16()
    kind, blocks = RESNET_LAYOUTS[name]
    return _resnet(kind, blocks)


# ------------------------------------------------------------------------------------ checkpoint files


class _TensorShape(tuple):
    """A tensor of a checkpoint, stood in by its shape."""


class _Storage:
    """A tensor storage of a checkpoint (its bytes are never read)."""


def _rebuild_tensor(storage: Any, offset: int, size: Any, *_: Any) -> _TensorShape:
    return _TensorShape(int(d) for d in size)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


# The globals a plain state_dict file refers to; torch's storage classes are stood in by _Storage.
_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _CannotReplayError(Exception):
    """The pickle refers to something besides plain containers and tensors (torch's loader decides)."""


class _ShapeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _Storage
        raise _CannotReplayError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] == "storage":
            return _Storage()
        raise _CannotReplayError(f"persistent id {pid!r}")


def read_checkpoint_shapes(stream: IO[bytes]) -> Any | None:
    """The object a ``torch.save`` zip file holds, its tensors replaced by their shapes (``tuple``).

    Args:
        stream: the file, opened for reading and seekable (only the pickle's bytes are read).

    Returns:
        The object (a dict of shapes for a state_dict; :func:`is_tensor_shape` tells them), or None
        when the file is not in torch's zip format or its pickle refers to anything besides containers,
        numbers, strings and tensors.
    """
    try:
        with zipfile.ZipFile(stream) as archive:
            names = archive.namelist()
            pickles = [n for n in names if posixpath.basename(n) == "data.pkl" and n.count("/") == 1]
            if len(pickles) != 1:
                return None
            with archive.open(pickles[0]) as data:
                return _ShapeUnpickler(data).load()
    except Exception:  # not replayable here (a foreign global, an odd pickle, a damaged zip): torch decides
        return None


def is_tensor_shape(value: Any) -> bool:
    """True for a tensor read by :func:`read_checkpoint_shapes`."""
    return isinstance(value, _TensorShape)
