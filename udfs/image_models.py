"""The image models behind the embedding job: construction, weights, preprocessing and device plans.

Everything here is plain Python and torch, usable on the driver (to validate arguments before any
Spark work), inside the pandas UDF on the executors (``udfs/embed_images.py``) and in tests.

* Models: torchvision's ``resnet152`` (default), ``resnet50``, ``resnet34``, ``resnet18`` and ``vgg16``
  with their classifier removed, so the output is the pooled feature vector (2048, 2048, 512, 512, and
  4096 for VGG-16's penultimate layer), optionally followed by a linear head (e.g. a Siamese-trained
  2048 -> 64 projection) and L2 normalisation.
* Weights (``--weights``): a path or ``s3://`` URI to a ``state_dict`` file (with or without the
  classifier's keys; a ``module.`` prefix from DataParallel is accepted), ``imagenet`` (torchvision's own
  file, from the torch hub cache or downloaded with a timeout), or ``random:SEED`` (torchvision's default
  initialisation after ``torch.manual_seed(SEED)``; deterministic, for tests and benchmarks).
* Preprocessing: exactly torchvision's ImageNet evaluation transform (EXIF orientation, RGB,
  ``Resize(256)`` bilinear antialiased, ``CenterCrop(224)``, ``ToTensor``, ``Normalize``) with guards
  against decompression bombs, oversized, empty, truncated and non-image files.
* Device plans: which device a task uses, autocast dtype, memory format and thread counts, decided by
  :func:`plan_execution`, a pure function of the task's resources so it is tested without a GPU.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
import urllib.request
import uuid
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from udfs import backbones, model_shapes
from udfs.model_shapes import Shape

LOG = logging.getLogger("stylegraph.image_models")

# Pooled feature size of each supported backbone once its classifier is removed.
MODEL_FEATURE_DIMS: dict[str, int] = {
    "resnet152": 2048,
    "resnet50": 2048,
    "resnet34": 512,
    "resnet18": 512,
    "vgg16": 4096,
}
DEFAULT_MODEL = "resnet152"

# The classifier's state_dict prefix per family: a checkpoint may carry these keys (ignored) or not.
_CLASSIFIER_PREFIX = {"resnet": "fc.", "vgg16": "classifier.6."}

# torchvision's ImageNet evaluation transform.
RESIZE_SIZE = 256
CROP_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The preprocessing as data, for the embed job's configuration fingerprint: change it here whenever
# decode_image / image_to_tensor / normalize_batch change what they compute, so that vectors computed the
# old way are not reused.
PREPROCESSING: dict[str, Any] = {
    "decode": "PIL, EXIF orientation applied, RGB",
    "resize": RESIZE_SIZE,
    "interpolation": "bilinear",
    "antialias": True,
    "crop": CROP_SIZE,
    "scale": "uint8 / 255",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
}
# How the network is evaluated, for the same fingerprint: what :func:`inference_form` and the execution
# plan do to it. Folding changes the float32 rounding of the features, so vectors computed another way
# are not reused.
INFERENCE: dict[str, Any] = {
    "batchnorm": "folded into the convolution before it, except under float16 autocast",
    "memory_format": "channels_last",
    "autocast": "precision auto: bf16 on CPUs with native bf16 (AVX512-BF16, AMX) and on GPUs that support "
    "it, fp16 on other GPUs, fp32 on other CPUs; precision fp32: none",
}

# Guards for hostile input files. Catalog photos are well under a megapixel; 40 MP is a large camera photo.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024

WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_RANDOM_PREFIX = "random:"
WEIGHTS_KIND_FILE = "file"
WEIGHTS_KIND_RANDOM = "random"
WEIGHTS_KIND_IMAGENET = "imagenet"

DEVICE_AUTO = "auto"
DEVICE_CPU = "cpu"
DEVICE_CUDA = "cuda"
DEVICE_CHOICES = (DEVICE_AUTO, DEVICE_CPU, DEVICE_CUDA)
# ``auto``: the fastest precision the device computes natively (bf16 where it has it); ``fp32``: none lower.
PRECISION_AUTO = "auto"
PRECISION_FP32 = "fp32"
PRECISION_CHOICES = (PRECISION_AUTO, PRECISION_FP32)

IMAGENET_DOWNLOAD_TIMEOUT_S = 20.0

# Reasons an image row ends with status "error" (the first word of its ``error`` column).
REASON_MISSING_IMAGE_PATH = "missing_image_path"
REASON_INVALID_IMAGE_PATH = "invalid_image_path"
REASON_MISSING_FILE = "missing_file"
REASON_UNREADABLE_FILE = "unreadable_file"
REASON_EMPTY_FILE = "empty_file"
REASON_FILE_TOO_LARGE = "file_too_large"
REASON_NOT_AN_IMAGE = "not_an_image"
REASON_TRUNCATED_IMAGE = "truncated_image"
REASON_CORRUPT_IMAGE = "corrupt_image"
REASON_DECOMPRESSION_BOMB = "decompression_bomb"
IMAGE_ERROR_REASONS = (
    REASON_MISSING_IMAGE_PATH,
    REASON_INVALID_IMAGE_PATH,
    REASON_MISSING_FILE,
    REASON_UNREADABLE_FILE,
    REASON_EMPTY_FILE,
    REASON_FILE_TOO_LARGE,
    REASON_NOT_AN_IMAGE,
    REASON_TRUNCATED_IMAGE,
    REASON_CORRUPT_IMAGE,
    REASON_DECOMPRESSION_BOMB,
)


class ModelConfigError(ValueError):
    """A model, weights or head argument that cannot work (the job turns it into a JobError)."""


class ImageError(Exception):
    """One image could not be turned into a model input; ``reason`` is one of IMAGE_ERROR_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------- models


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a supported backbone, else raise ModelConfigError listing the choices."""
    if name not in MODEL_FEATURE_DIMS:
        raise ModelConfigError(f"unknown model {name!r}: choose one of {', '.join(MODEL_FEATURE_DIMS)}")
    return name


def _family(name: str) -> str:
    return "vgg16" if name == "vgg16" else "resnet"


def build_classifier(name: str, *, seed: int | None = None, device: str = "cpu") -> Any:
    """torchvision's full classification network, no pretrained weights (built by
    :mod:`udfs.backbones`, without importing torchvision).

    Args:
        name: a key of MODEL_FEATURE_DIMS.
        seed: with a seed, torchvision's default initialisation after ``torch.manual_seed(seed)``
            (the global RNG state is restored afterwards); without one, the usual random state.
        device: ``"meta"`` builds shapes only (no memory, no initialisation cost).
    """
    import torch

    name = check_model_name(name)
    if device == "meta":
        with torch.device("meta"):
            return backbones.build(name, initialise=False)
    if seed is None:
        return backbones.build(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return backbones.build(name)


def strip_classifier(model: Any, name: str) -> Any:
    """Remove the classifier in place so the network returns its pooled features; returns the model."""
    import torch

    if _family(name) == "vgg16":
        # classifier = Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear(4096 -> 1000): keep the first six.
        model.classifier = torch.nn.Sequential(*list(model.classifier.children())[:-1])
    else:
        model.fc = torch.nn.Identity()
    return model


def feature_dim(name: str) -> int:
    """Size of the pooled feature vector of a backbone."""
    return MODEL_FEATURE_DIMS[check_model_name(name)]


def _unwrap_checkpoint(obj: Any, is_tensor: Callable[[Any], bool]) -> dict[str, Any]:
    """A checkpoint's tensors: unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and ``module.``."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and not is_tensor(inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(is_tensor(v) for v in obj.values()):
        raise ModelConfigError("not a state_dict: expected a mapping of parameter names to tensors")
    out = {}
    for key, value in obj.items():
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def clean_state_dict(obj: Any) -> dict[str, Any]:
    """The tensors of a loaded checkpoint (see :func:`_unwrap_checkpoint`)."""
    import torch

    return _unwrap_checkpoint(obj, lambda value: isinstance(value, torch.Tensor))


def check_backbone_shapes(name: str, shapes: Mapping[str, Shape]) -> None:
    """Check a checkpoint's ``{key: shape}`` against a backbone's parameters.

    The classifier's keys may be present (a full torchvision checkpoint) or absent. BatchNorm's
    ``num_batches_tracked`` counters may be absent (old torchvision files; unused at inference).

    Raises:
        ModelConfigError: unexpected keys, missing keys or a shape that does not match, named.
    """
    expected = model_shapes.backbone_shapes(check_model_name(name))
    classifier = _CLASSIFIER_PREFIX[_family(name)]
    unexpected = sorted(k for k in shapes if k not in expected)
    missing = sorted(
        k for k in expected
        if k not in shapes and not k.startswith(classifier) and not k.endswith("num_batches_tracked")
    )
    mismatched = sorted(
        f"{k} {tuple(shapes[k])} != {v}" for k, v in expected.items() if k in shapes and tuple(shapes[k]) != v
    )
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
    if problems:
        raise ModelConfigError(f"weights do not fit {name}: " + "; ".join(problems))


def backbone_state_dict(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Check a checkpoint's tensors against a backbone (:func:`check_backbone_shapes`) and return the
    backbone's part of it."""
    check_backbone_shapes(name, {key: tuple(value.shape) for key, value in state_dict.items()})
    classifier = _CLASSIFIER_PREFIX[_family(name)]
    return {k: v for k, v in state_dict.items() if not k.startswith(classifier)}


def load_backbone_from_state_dict(name: str, state_dict: Mapping[str, Any]) -> Any:
    """A feature extractor (classifier removed, eval mode, CPU) holding the given weights."""
    import torch

    backbone = backbone_state_dict(name, state_dict)
    model = strip_classifier(build_classifier(name, device="meta"), name)
    # Built without memory or the random initialisation (seconds for ResNet-152); the module then takes the
    # given tensors as they are (a mapped file's float32 pages: no copy). A checkpoint saved in half
    # precision is widened to float32, as copying it into a float32 model did.
    for key, buffer in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in backbone:
            backbone[key] = torch.zeros(buffer.shape, dtype=buffer.dtype)
        elif backbone[key].is_floating_point() and backbone[key].dtype != buffer.dtype:
            backbone[key] = backbone[key].to(buffer.dtype)
    model.load_state_dict(backbone, strict=True, assign=True)
    return model.eval()


def inference_form(model: Any, name: str) -> Any:
    """The eval-mode backbone with each BatchNorm folded into the convolution before it; returns it.

    In eval mode a BatchNorm is a fixed per-channel scale and shift, so the convolution's own weights can
    carry it: one pass over each feature map instead of two. The features are the same up to float32
    rounding (about 5e-7 of their largest magnitude for ResNet-152). VGG16 has no BatchNorm: unchanged.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    if _family(name) != "resnet":
        return model
    model.eval()

    def fold(owner: Any, conv: str, norm: str) -> None:
        # torch's fuse_conv_bn_eval without its deep copy of the convolution (a copy of every weight).
        layer, bn = getattr(owner, conv), getattr(owner, norm)
        layer.weight, layer.bias = fuse_conv_bn_weights(
            layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        setattr(owner, norm, torch.nn.Identity())

    with torch.no_grad():
        fold(model, "conv1", "bn1")
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            for block in stage:
                for index in (1, 2, 3):
                    if hasattr(block, f"bn{index}"):  # BasicBlock (resnet18/34) has two, Bottleneck three
                        fold(block, f"conv{index}", f"bn{index}")
                if block.downsample is not None:  # Sequential(conv 1x1, BatchNorm)
                    fold(block.downsample, "0", "1")
    return model


def random_backbone(name: str, seed: int) -> Any:
    """A feature extractor with torchvision's default initialisation after ``torch.manual_seed(seed)``."""
    return strip_classifier(build_classifier(name, seed=seed), name).eval()


# -------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightsSpec:
    """Where a backbone's weights come from, resolved and checked on the driver.

    ``kind`` is ``file`` (``uri`` = path or s3:// URI), ``random`` (``seed``) or ``imagenet``
    (``uri`` = torchvision's download URL). ``sha256`` identifies the weights in the output rows: the
    file's sha256, or for ``random`` the sha256 of :func:`random_weights_description`.
    """

    kind: str
    sha256: str
    uri: str | None = None
    seed: int | None = None

    def describe(self) -> str:
        return f"random:{self.seed}" if self.kind == WEIGHTS_KIND_RANDOM else f"{self.kind}:{self.uri}"


def random_weights_description(name: str, seed: int) -> str:
    """The stable text whose sha256 stands for ``random:SEED`` weights in ``weights_sha256``."""
    return f"stylegraph random weights: torchvision {name} default init after torch.manual_seed({seed})"


def _open_input(uri: str) -> Any:
    """A file for reading; inside a folder published on S3, its current version's copy."""
    from jobs.common import storage

    fs, path = storage.filesystem(storage.resolve(uri))
    return fs.open_input_stream(path)


def _open_seekable(uri: str) -> Any:
    """A seekable file for reading (ranged reads on S3); inside a published folder, its current copy."""
    from jobs.common import storage

    if not storage.is_remote(uri):
        return open(storage.local_path(uri), "rb")
    fs, path = storage.filesystem(storage.resolve(uri))
    return fs.open_input_file(path)


def uri_exists(uri: str) -> bool:
    from jobs.common import storage

    return storage.exists(uri)


def sha256_of_uri(uri: str, chunk_bytes: int = 8 * 1024 * 1024) -> str:
    """sha256 hex digest of a local or s3:// file, streamed."""
    digest = hashlib.sha256()
    with _open_input(uri) as stream:
        while True:
            chunk = stream.read(chunk_bytes)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(uri: str) -> dict[str, Any]:
    """Load a ``state_dict`` file from a local path, ``file://`` or ``s3://`` URI (tensors only)."""
    import torch

    from jobs.common import storage

    try:
        if storage.is_remote(uri):
            fs, path = storage.filesystem(storage.resolve(uri))  # a published folder: its current version
            with fs.open_input_file(path) as stream:  # one ranged GET for the whole object
                obj = torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=True)
        else:
            path = storage.local_path(uri)
            # Mapped, not read, where torch can (its zip format); a pre-1.6 file is read whole.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except ModelConfigError:
        raise
    except Exception as err:  # pickle errors, zip errors, non-tensor objects: all mean "not a weights file"
        raise ModelConfigError(f"cannot load a state_dict from {uri}: {type(err).__name__}: {err}") from err
    return clean_state_dict(obj)


def read_shapes(uri: str) -> dict[str, Shape]:
    """A ``state_dict`` file's ``{key: shape}`` from a local path or ``s3://`` URI, for the driver's checks.

    Reads the file's pickle without torch (:func:`udfs.model_shapes.read_checkpoint_shapes`); a file it
    cannot read that way is loaded with torch (:func:`read_state_dict`), so both accept the same files.
    """
    try:
        with _open_seekable(uri) as stream:
            obj = model_shapes.read_checkpoint_shapes(stream)
    except Exception as err:  # unreadable file, bad scheme: the same message torch's load would give
        raise ModelConfigError(f"cannot load a state_dict from {uri}: {type(err).__name__}: {err}") from err
    if obj is None:
        return {key: tuple(value.shape) for key, value in read_state_dict(uri).items()}
    return _unwrap_checkpoint(obj, model_shapes.is_tensor_shape)


def imagenet_url(name: str) -> str:
    """torchvision's download URL of the default ImageNet weights of a backbone."""
    return model_shapes.IMAGENET_URLS[check_model_name(name)]


def imagenet_cache_path(url: str) -> str:
    """Where torch hub keeps a downloaded checkpoint: ``torch.hub.get_dir()``'s ``checkpoints/<file>``
    (``$TORCH_HOME/hub``, by default ``${XDG_CACHE_HOME:-~/.cache}/torch/hub``)."""
    default_home = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    hub = os.path.join(os.path.expanduser(os.environ.get("TORCH_HOME", default_home)), "hub")
    return os.path.join(hub, "checkpoints", posixpath.basename(url))


def fetch_imagenet_file(url: str, timeout_s: float = IMAGENET_DOWNLOAD_TIMEOUT_S) -> str:
    """The local path of torchvision's checkpoint: the hub cache, else a download with a timeout.

    Raises:
        ModelConfigError: the file is not cached and cannot be downloaded (no network): says what to do.
    """
    path = imagenet_cache_path(url)
    if os.path.exists(path):
        return path
    tmp = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, path)
    except Exception as err:  # DNS, refused, timeout, HTTP error: all mean "no usable network here"
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ModelConfigError(
            f"--weights imagenet: {posixpath.basename(url)} is not in the torch hub cache "
            f"({os.path.dirname(path)}) and downloading {url} failed ({type(err).__name__}: {err}). "
            "Offline clusters: download that file where there is network, put it on S3 and pass "
            "--weights s3://.../file.pth (or a local path)."
        ) from err
    return path


def resolve_weights(name: str, spec: str) -> WeightsSpec:
    """Parse and check ``--weights`` on the driver, before any Spark work.

    ``random:SEED`` needs an integer seed. A file must exist and its keys and shapes must fit the
    backbone (checked against a shapes-only model). ``imagenet`` must be cached or downloadable.

    Raises:
        ModelConfigError: with a message naming the argument and what is wrong.
    """
    check_model_name(name)
    if spec.startswith(WEIGHTS_RANDOM_PREFIX):
        seed_text = spec[len(WEIGHTS_RANDOM_PREFIX):]
        try:
            seed = int(seed_text)
        except ValueError:
            raise ModelConfigError(f"--weights {spec!r}: random:SEED needs an integer seed") from None
        description = random_weights_description(name, seed)
        return WeightsSpec(WEIGHTS_KIND_RANDOM, hashlib.sha256(description.encode()).hexdigest(), seed=seed)
    if spec == WEIGHTS_IMAGENET:
        url = imagenet_url(name)
        path = fetch_imagenet_file(url)
        check_backbone_shapes(name, read_shapes(path))
        return WeightsSpec(WEIGHTS_KIND_IMAGENET, sha256_of_uri(path), uri=url)
    if not spec:
        raise ModelConfigError("--weights is empty: pass a path, s3:// URI, imagenet or random:SEED")
    try:
        found = uri_exists(spec)
    except Exception as err:  # bad scheme, unreachable bucket
        raise ModelConfigError(f"--weights {spec}: cannot check the file ({err})") from err
    if not found:
        raise ModelConfigError(f"--weights {spec}: file not found")
    from jobs.common import storage

    # Inside a folder published on S3: the executors load the very version the driver checked and hashed.
    resolved = storage.resolve(spec)
    check_backbone_shapes(name, read_shapes(resolved))
    return WeightsSpec(WEIGHTS_KIND_FILE, sha256_of_uri(resolved), uri=resolved)


def load_backbone(name: str, weights: WeightsSpec) -> Any:
    """The feature extractor for resolved weights (on the executors: once per Python worker)."""
    if weights.kind == WEIGHTS_KIND_RANDOM:
        assert weights.seed is not None
        return random_backbone(name, weights.seed)
    assert weights.uri is not None
    uri = fetch_imagenet_file(weights.uri) if weights.kind == WEIGHTS_KIND_IMAGENET else weights.uri
    return load_backbone_from_state_dict(name, read_state_dict(uri))


# ----------------------------------------------------------------------------------------------- head


def check_head_shapes(
    shapes: Mapping[str, Shape], in_features: int, uri: str = "head"
) -> tuple[str, str | None]:
    """Check a head's ``{key: shape}``: one linear layer (``weight`` [out, in], optional ``bias`` [out])
    taking the backbone's ``in_features``. Keys may carry a prefix (``head.weight``, ``fc.weight``).

    Returns:
        The keys of its weight and of its bias (None without one).

    Raises:
        ModelConfigError: not one linear layer, or its input size is not the backbone's ``in_features``.
    """
    weights = [k for k, v in shapes.items() if k.split(".")[-1] == "weight" and len(v) == 2]
    biases = [k for k, v in shapes.items() if k.split(".")[-1] == "bias" and len(v) == 1]
    if len(weights) != 1 or len(biases) > 1 or len(shapes) != len(weights) + len(biases):
        raise ModelConfigError(
            f"--head {uri}: expected the state_dict of one linear layer (weight [out, in], optional bias), "
            f"got keys {sorted(shapes)[:6]}"
        )
    out_features, head_in = (int(d) for d in shapes[weights[0]])
    if head_in != in_features:
        raise ModelConfigError(
            f"--head {uri}: the head takes {head_in} inputs but the model gives {in_features} features"
        )
    bias = biases[0] if biases else None
    if bias is not None and int(shapes[bias][0]) != out_features:
        raise ModelConfigError(
            f"--head {uri}: bias has {int(shapes[bias][0])} values for {out_features} outputs"
        )
    return weights[0], bias


def head_from_state_dict(state_dict: Mapping[str, Any], in_features: int, uri: str = "head") -> Any:
    """A ``torch.nn.Linear`` from its checked ``state_dict`` (:func:`check_head_shapes`)."""
    import torch

    weight_key, bias_key = check_head_shapes(
        {key: tuple(value.shape) for key, value in state_dict.items()}, in_features, uri
    )
    weight = state_dict[weight_key]
    out_features, head_in = (int(d) for d in weight.shape)
    head = torch.nn.Linear(head_in, out_features, bias=bias_key is not None)
    with torch.no_grad():
        head.weight.copy_(weight.float())
        if bias_key is not None:
            head.bias.copy_(state_dict[bias_key].float())
    return head.eval()


def head_out_features(uri: str, in_features: int) -> int:
    """Check a head file on the driver without loading it; returns its output size."""
    if not uri_exists(uri):
        raise ModelConfigError(f"--head {uri}: file not found")
    shapes = read_shapes(uri)
    weight_key, _ = check_head_shapes(shapes, in_features, uri)
    return int(shapes[weight_key][0])


def load_head(uri: str, in_features: int) -> Any:
    """Read and check a head file (on the executors: once per Python worker)."""
    if not uri_exists(uri):
        raise ModelConfigError(f"--head {uri}: file not found")
    return head_from_state_dict(read_state_dict(uri), in_features, uri)


# -------------------------------------------------------------------------------------- preprocessing


_BOMB_FILTER_INSTALLED: list[bool] = []


def _raise_on_bomb_warnings() -> None:
    """Make Pillow's DecompressionBombWarning an exception, once per process.

    Process-wide on purpose: ``warnings.catch_warnings`` is not thread-safe and decoding runs in threads.
    """
    if not _BOMB_FILTER_INSTALLED:
        from PIL import Image

        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        _BOMB_FILTER_INSTALLED.append(True)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Any:
    """Decode image bytes to an RGB PIL image with its EXIF orientation applied.

    Raises:
        ImageError: empty_file, not_an_image, decompression_bomb, truncated_image or corrupt_image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageError(REASON_EMPTY_FILE, "0 bytes")
    _raise_on_bomb_warnings()
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                REASON_DECOMPRESSION_BOMB, f"{width}x{height} pixels is over the limit of {max_pixels}"
            )
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(REASON_DECOMPRESSION_BOMB, str(err)) from err
    except UnidentifiedImageError as err:
        raise ImageError(REASON_NOT_AN_IMAGE, "not a recognised image format") from err
    except OSError as err:
        reason = REASON_TRUNCATED_IMAGE if "truncated" in str(err).lower() else REASON_CORRUPT_IMAGE
        raise ImageError(reason, f"{type(err).__name__}: {err}") from err
    except Exception as err:  # Pillow raises SyntaxError, ValueError, struct.error... on broken data
        raise ImageError(REASON_CORRUPT_IMAGE, f"{type(err).__name__}: {err}") from err


def image_to_tensor(image: Any) -> Any:
    """Resize(256) bilinear antialiased, CenterCrop(224), as a uint8 tensor [3, 224, 224].

    The sizes and pixels of torchvision's reference Compose (:func:`udfs.backbones.resize_and_crop`); the
    float conversion and normalisation are done per batch by :func:`normalize_batch`.
    """
    return backbones.resize_and_crop(image, RESIZE_SIZE, CROP_SIZE)


def normalize_batch(batch_uint8: Any) -> Any:
    """ToTensor's scaling to [0, 1] and Normalize(ImageNet mean, std) on a uint8 batch [N, 3, H, W]."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1)
    return batch_uint8.to(torch.float32).div(255).sub_(mean).div_(std)


def preprocess_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Any:
    """Image bytes to the model's uint8 input [3, 224, 224] (raises ImageError)."""
    return image_to_tensor(decode_image(data, max_pixels))


# ------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class ExecutionPlan:
    """How one task runs the model: device, autocast dtype, memory format and thread counts."""

    device: str  # "cpu" or "cuda:<index>"
    autocast_dtype: str | None  # "bfloat16", "float16" or None (fp32)
    channels_last: bool
    torch_threads: int
    decode_threads: int

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith(DEVICE_CUDA)


def gpu_index(addresses: Sequence[str], device_count: int) -> int:
    """The CUDA device index for the GPU Spark assigned to a task.

    Spark's addresses come from the discovery script (EMR: ``getGpusResources.sh`` prints the indices
    ``nvidia-smi`` shows). With ``spark.task.resource.gpu.amount`` below 1 several tasks share one
    address; a task gets exactly one. No address (e.g. local mode on a GPU box): device 0.

    Raises:
        ValueError: an address that is not an index of a visible device.
    """
    if not addresses:
        return 0
    address = str(addresses[0]).strip()
    if not address.isdigit() or int(address) >= device_count:
        raise ValueError(
            f"Spark assigned GPU address {address!r} but this process sees {device_count} CUDA device(s): "
            "check the discovery script and CUDA_VISIBLE_DEVICES on the executors"
        )
    return int(address)


def plan_execution(
    requested: str,
    *,
    gpu_addresses: Sequence[str],
    task_cpus: int,
    cuda_available: bool,
    device_count: int,
    bf16_supported: bool,
    precision: str = PRECISION_AUTO,
    cpu_bf16: bool = False,
) -> ExecutionPlan:
    """Decide how a task runs the model (pure: every input is a parameter).

    * ``cpu``, or ``auto`` without CUDA: ``channels_last`` (oneDNN's convolutions run faster on NHWC),
      ``task_cpus`` torch threads (the cores Spark gave the task, so concurrent
      tasks do not oversubscribe the executor), one decode thread overlapping the next batch's decoding
      with the current forward pass. Precision ``auto`` autocasts to bf16 where the CPU computes it
      natively (``cpu_bf16``: AVX512-BF16 or AMX; whole-process rates in bench/RESULTS.md), else fp32.
    * ``cuda``, or ``auto`` with CUDA: the GPU Spark assigned (:func:`gpu_index`), ``channels_last``,
      precision ``auto`` autocasts to bf16 where the GPU supports it (Ampere and later) else fp16, and at
      least two decode threads so JPEG decoding keeps up with the GPU.
    * Precision ``fp32``: no autocast on either device.

    Raises:
        ValueError: an unknown request, or ``cuda`` requested where no CUDA device is visible.
    """
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {requested!r}")
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
    threads = max(1, int(task_cpus))
    lower = precision == PRECISION_AUTO
    use_cuda = requested == DEVICE_CUDA or (requested == DEVICE_AUTO and cuda_available)
    if use_cuda and not cuda_available:
        raise ValueError("--device cuda, but no CUDA device is visible to this executor's Python worker")
    if not use_cuda:
        return ExecutionPlan(
            DEVICE_CPU,
            "bfloat16" if lower and cpu_bf16 else None,
            channels_last=True,
            torch_threads=threads,
            decode_threads=1,
        )
    index = gpu_index(gpu_addresses, device_count)
    return ExecutionPlan(
        f"{DEVICE_CUDA}:{index}",
        ("bfloat16" if bf16_supported else "float16") if lower else None,
        channels_last=True,
        torch_threads=threads,
        decode_threads=max(2, threads),
    )


# CPU flags (as Linux lists them in /proc/cpuinfo) under which oneDNN's bf16 convolutions run natively;
# elsewhere it would emulate bf16, slower than fp32.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Device files of a GPU driver torch.cuda can use (NVIDIA; WSL2: /dev/dxg; ROCm: /dev/kfd): without any,
# no CUDA device can be visible.
CUDA_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16, as the kernel
    lists its flags). Read without torch; False where there is no ``/proc/cpuinfo`` (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                if line.startswith("flags"):
                    return bool(NATIVE_BF16_CPU_FLAGS & set(line.partition(":")[2].split()))
    except OSError:
        return False
    return False


def cuda_may_be_visible(device_files: Sequence[str] = CUDA_DEVICE_FILES) -> bool:
    """False where no GPU driver device file exists, so torch could not see a GPU (checked without
    importing torch); True means only torch can tell."""
    return any(os.path.exists(path) for path in device_files)


def cuda_unavailable_reason() -> str | None:
    """Why torch cannot compute on CUDA in this process, or None when it can."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return (
        f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no CUDA device: no GPU, "
        "or an NVIDIA driver too old for that CUDA"
    )


def describe_model(name: str, head_out: int | None, normalize: bool) -> str:
    """The ``model`` column: backbone, ``+head:<dims>`` with a head, ``+l2`` when L2-normalised."""
    return name + (f"+head:{head_out}" if head_out else "") + ("+l2" if normalize else "")
