"""Model construction, weights, preprocessing, bad images and device plans (no Spark, no GPU)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw, ImageOps
from torchvision import transforms
from torchvision.transforms import functional as TF

from udfs import embed_images as U
from udfs import image_models as M

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---------------------------------------------------------------------------------- test images


def drawn_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A small RGB picture with a gradient, shapes and noise (something a CNN reacts to)."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    noisy = np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy, "RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse(
        [width // 5, height // 4, width // 2, height * 3 // 4],
        fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
    )
    draw.rectangle([width // 2, height // 6, width * 5 // 6, height // 2], outline=(0, 0, 0), width=3)
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (1-bit grey) with a tiny IDAT: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def write_good_images(folder: Path) -> dict[str, Path]:
    """Real JPEG and PNG files of every colour mode the job must accept; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}

    def save(name: str, image: Image.Image, **kwargs: object) -> None:
        paths[name] = folder / name
        image.save(paths[name], **kwargs)

    save("rgb.jpg", drawn_image((72, 48), 1), quality=90)
    save("portrait.png", drawn_image((40, 70), 2))
    save("gray.png", drawn_image((50, 50), 3).convert("L"))
    save("gray.jpg", drawn_image((64, 40), 4).convert("L"))
    save("rgba.png", drawn_image((60, 44), 5).convert("RGBA"))
    save("palette.png", drawn_image((56, 56), 6).convert("P", palette=Image.Palette.ADAPTIVE))
    save("cmyk.jpg", drawn_image((66, 50), 7).convert("CMYK"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("exif_rotated.jpg", drawn_image((80, 40), 8), exif=exif)
    return paths


def reference_inputs(paths: list[Path]) -> torch.Tensor:
    """torchvision's ImageNet eval transform, written out independently of the code under test."""
    compose = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return torch.stack([compose(ImageOps.exif_transpose(Image.open(p)).convert("RGB")) for p in paths])


def reference_features(model_name: str, seed: int, paths: list[Path]) -> np.ndarray:
    """Pooled features from a torchvision model seeded with torch.manual_seed(seed), classifier removed."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, model_name)(weights=None)
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        return model.eval()(reference_inputs(paths)).numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = 1e-4) -> None:
    """Equal within ``tolerance`` relative to the largest expected magnitude (at least 1)."""
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual - expected).max()) <= tolerance * scale


def min_cosine(actual: np.ndarray, expected: np.ndarray) -> float:
    """The smallest cosine similarity between matching rows."""
    norms = np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    return float(((actual * expected).sum(1) / norms).min())


# The plan the job makes for a one-core CPU task (plan_execution("cpu", task_cpus=1)).
CPU_PLAN = M.ExecutionPlan("cpu", None, channels_last=True, torch_threads=1, decode_threads=1)


# ---------------------------------------------------------------------------------- preprocessing


def test_preprocessing_equals_torchvision_eval_transform(tmp_path: Path) -> None:
    paths = list(write_good_images(tmp_path).values())
    ours = M.normalize_batch(torch.stack([M.preprocess_bytes(p.read_bytes()) for p in paths]))
    expected = reference_inputs(paths)
    assert ours.shape == (len(paths), 3, 224, 224)
    assert torch.allclose(ours, expected, atol=1e-6, rtol=0)
    # The EXIF orientation was applied: an 80x40 photo rotated to stand 40 wide, 80 high.
    assert M.decode_image((tmp_path / "exif_rotated.jpg").read_bytes()).size == (40, 80)


def test_every_bad_file_kind_gets_its_reason(tmp_path: Path) -> None:
    good = io.BytesIO()
    drawn_image((64, 48), 9).save(good, "JPEG")
    jpeg = good.getvalue()
    good_png = io.BytesIO()
    drawn_image((64, 48), 9).save(good_png, "PNG")
    garbled = bytearray(jpeg)
    garbled[300:-2] = bytes(len(garbled) - 302)
    cases = {
        b"": M.REASON_EMPTY_FILE,
        b"sku,name\n1,boot\n": M.REASON_NOT_AN_IMAGE,
        jpeg[: len(jpeg) // 2]: M.REASON_TRUNCATED_IMAGE,
        good_png.getvalue()[: len(good_png.getvalue()) - 40]: M.REASON_TRUNCATED_IMAGE,
        bytes(garbled): M.REASON_CORRUPT_IMAGE,
        png_header_only(100_000, 100_000): M.REASON_DECOMPRESSION_BOMB,  # Pillow's own error (> 2x its limit)
        png_header_only(8_000, 6_000): M.REASON_DECOMPRESSION_BOMB,  # over our 40 MP limit, under Pillow's
    }
    for data, reason in cases.items():
        with pytest.raises(M.ImageError) as caught:
            M.decode_image(data)
        assert caught.value.reason == reason, (data[:20], caught.value)
    with pytest.raises(M.ImageError) as caught:
        M.decode_image(jpeg, max_pixels=64 * 48 - 1)
    assert caught.value.reason == M.REASON_DECOMPRESSION_BOMB
    assert M.decode_image(jpeg, max_pixels=64 * 48).size == (64, 48)


def test_image_reader_paths_and_file_errors(tmp_path: Path) -> None:
    (tmp_path / "Boots").mkdir()
    (tmp_path / "Boots" / 'a b,"c".jpg').write_bytes(b"12345")
    reader = U.ImageReader(str(tmp_path), max_bytes=5)
    assert reader.read('Boots/./a b,"c".jpg') == b"12345"
    expected = {
        None: M.REASON_MISSING_IMAGE_PATH,
        "  ": M.REASON_MISSING_IMAGE_PATH,
        "../secret.jpg": M.REASON_INVALID_IMAGE_PATH,
        "Boots/../../secret.jpg": M.REASON_INVALID_IMAGE_PATH,
        "/etc/passwd": M.REASON_INVALID_IMAGE_PATH,
        "Boots/x\x00.jpg": M.REASON_INVALID_IMAGE_PATH,
        "Boots/missing.jpg": M.REASON_MISSING_FILE,
        "Boots": M.REASON_UNREADABLE_FILE,
    }
    for value, reason in expected.items():
        with pytest.raises(M.ImageError) as caught:
            reader.read(value)
        assert caught.value.reason == reason, value
    with pytest.raises(M.ImageError) as caught:
        U.ImageReader(str(tmp_path), max_bytes=4).read('Boots/a b,"c".jpg')
    assert caught.value.reason == M.REASON_FILE_TOO_LARGE


# ---------------------------------------------------------------------------------- models, weights


@pytest.mark.parametrize(
    ("name", "dims"),
    [("resnet152", 2048), ("resnet50", 2048), ("resnet34", 512), ("resnet18", 512), ("vgg16", 4096)],
)
def test_classifier_removed_gives_pooled_features(name: str, dims: int) -> None:
    # Shapes only (meta device): no memory, no initialisation, still the real torchvision graph.
    model = M.strip_classifier(M.build_classifier(name, device="meta"), name)
    assert model(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, dims)
    assert M.feature_dim(name) == dims


@pytest.mark.parametrize("name", ["resnet152", "resnet50", "resnet34", "resnet18", "vgg16"])
def test_the_networks_are_torchvisions(name: str) -> None:
    """Built without torchvision, the same network: torchvision's weights after the same seed, bit for
    bit, and the same outputs."""
    ours = M.build_classifier(name, seed=11).eval()
    torch.manual_seed(11)
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    expected = theirs.state_dict()
    actual = ours.state_dict()
    assert list(actual) == list(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in actual)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(ours(images), theirs(images))


@pytest.mark.parametrize("size", [(256, 256), (300, 200), (200, 300), (999, 333), (224, 224), (257, 1000)])
def test_resize_and_crop_are_torchvisions(size: tuple[int, int]) -> None:
    """Down- and upscaled, portrait and landscape, and an image already at the resize's size."""
    image = drawn_image(size, 3)
    expected = TF.pil_to_tensor(TF.center_crop(TF.resize(image, 256, antialias=True), 224))
    assert torch.equal(M.image_to_tensor(image), expected)


def test_an_embedding_worker_does_not_import_torchvision(tmp_path: Path) -> None:
    """A worker builds the model, reads an image and embeds it with torch and Pillow only: neither
    torchvision nor ``torch._dynamo`` is imported (each is over a second of every worker's start)."""
    write_good_images(tmp_path)
    torch.save(M.build_classifier("resnet18", seed=3).state_dict(), tmp_path / "resnet18.pth")
    code = (
        "import sys\n"
        "from udfs import embed_images as U, image_models as M\n"
        "weights = M.resolve_weights('resnet18', sys.argv[1] + '/resnet18.pth')\n"
        "config = U.EmbedConfig('resnet18', weights, sys.argv[1])\n"
        "plan = M.ExecutionPlan('cpu', None, channels_last=True, torch_threads=1, decode_threads=1)\n"
        "frames = list(U.embed_path_batches([__import__('pandas').Series(['rgb.jpg'])], config, plan))\n"
        "print(frames[0]['status'].tolist(), 'torchvision' in sys.modules, 'torch._dynamo' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip().splitlines()[-1] == "['ok'] False False"


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(M.ModelConfigError, match="unknown model 'resnet151'.*resnet152"):
        M.resolve_weights("resnet151", "random:0")


def test_random_weights_are_seeded_and_named_by_a_stable_sha() -> None:
    spec = M.resolve_weights("resnet18", "random:5")
    description = "stylegraph random weights: torchvision resnet18 default init after torch.manual_seed(5)"
    assert spec == M.WeightsSpec("random", hashlib.sha256(description.encode()).hexdigest(), seed=5)
    torch.manual_seed(5)
    expected = torchvision.models.resnet18(weights=None).state_dict()
    actual = M.load_backbone("resnet18", spec).state_dict()
    assert set(actual) == {k for k in expected if not k.startswith("fc.")}
    assert all(torch.equal(actual[k], expected[k]) for k in actual)
    with pytest.raises(M.ModelConfigError, match="integer seed"):
        M.resolve_weights("resnet18", "random:abc")


def test_weights_file_checks_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(11)
    source = torchvision.models.resnet18(weights=None)
    full = tmp_path / "full.pth"
    torch.save(source.state_dict(), full)
    # A DataParallel checkpoint, wrapped, without the classifier and without BN counters: same weights.
    wrapped = tmp_path / "wrapped.pth"
    backbone_only = {
        f"module.{k}": v
        for k, v in source.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    torch.save({"state_dict": backbone_only}, wrapped)
    half = tmp_path / "half.pth"  # saved in half precision: loaded as float32
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}, half)

    spec = M.resolve_weights("resnet18", str(full))
    assert spec == M.WeightsSpec("file", hashlib.sha256(full.read_bytes()).hexdigest(), uri=str(full))
    source.fc = torch.nn.Identity()
    images = torch.rand(2, 3, 64, 64)  # any size: the pooling is adaptive
    with torch.inference_mode():
        expected = source.eval()(images).numpy()
        for path in (full, wrapped):
            loaded = M.load_backbone("resnet18", M.resolve_weights("resnet18", str(path)))
            assert_close(loaded(images).numpy(), expected, 1e-6)
        widened = M.load_backbone("resnet18", M.resolve_weights("resnet18", str(half)))
        assert {t.dtype for t in widened.state_dict().values() if t.is_floating_point()} == {torch.float32}
        source.load_state_dict({k: v.float() for k, v in torch.load(half).items() if not k.startswith("fc.")},
                               strict=False)
        assert_close(widened(images).numpy(), source(images).numpy(), 1e-6)

    with pytest.raises(M.ModelConfigError, match="file not found"):
        M.resolve_weights("resnet18", str(tmp_path / "nope.pth"))
    with pytest.raises(M.ModelConfigError, match="weights do not fit resnet34.*missing keys"):
        M.resolve_weights("resnet34", str(full))
    with pytest.raises(M.ModelConfigError, match="weights do not fit resnet50.*shape mismatches"):
        M.resolve_weights("resnet50", str(full))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(M.ModelConfigError, match="cannot load a state_dict"):
        M.resolve_weights("resnet18", str(garbage))


def test_imagenet_weights_fail_clearly_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setattr(M, "IMAGENET_DOWNLOAD_TIMEOUT_S", 5.0)
    with pytest.raises(M.ModelConfigError) as caught:
        M.resolve_weights("resnet18", "imagenet")
    message = str(caught.value)
    assert "--weights imagenet" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "--weights s3://" in message
    assert list(tmp_path.rglob("*.pth*")) == []


def test_head_checks_shape(tmp_path: Path) -> None:
    torch.manual_seed(2)
    linear = torch.nn.Linear(512, 8)
    path = tmp_path / "head.pth"
    torch.save({f"head.{k}": v for k, v in linear.state_dict().items()}, path)
    head = M.load_head(str(path), 512)
    features = torch.rand(3, 512)
    with torch.inference_mode():
        assert torch.allclose(head(features), linear(features))
    with pytest.raises(M.ModelConfigError, match="head takes 512 inputs but the model gives 2048"):
        M.load_head(str(path), 2048)
    torch.save({"a.weight": torch.rand(4, 4), "b.weight": torch.rand(4, 4)}, tmp_path / "two.pth")
    with pytest.raises(M.ModelConfigError, match="one linear layer"):
        M.load_head(str(tmp_path / "two.pth"), 4)
    with pytest.raises(M.ModelConfigError, match="file not found"):
        M.load_head(str(tmp_path / "none.pth"), 512)


# ---------------------------------------------------------------------------------- devices


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16"])
def test_inference_form_folds_every_batchnorm_and_keeps_the_features(name: str) -> None:
    torch.manual_seed(3)
    model = M.random_backbone(name, 3)
    for module in model.modules():  # statistics a trained network would have, not the identity's
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    images = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        expected = model(images)
        folded = M.inference_form(model, name)
        actual = folded(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert actual.shape == expected.shape
    assert_close(actual.numpy(), expected.numpy(), tolerance=1e-5)


def test_device_plan_cpu() -> None:
    for requested in ("cpu", "auto"):
        plan = M.plan_execution(
            requested,
            gpu_addresses=[],
            task_cpus=3,
            cuda_available=False,
            device_count=0,
            bf16_supported=False,
        )
        assert plan == M.ExecutionPlan("cpu", None, channels_last=True, torch_threads=3, decode_threads=1)
    # A GPU box asked for CPU stays on CPU.
    plan = M.plan_execution(
        "cpu", gpu_addresses=["0"], task_cpus=1, cuda_available=True, device_count=1, bf16_supported=True
    )
    assert plan.device == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        M.plan_execution(
            "cuda", gpu_addresses=[], task_cpus=1, cuda_available=False, device_count=0, bf16_supported=False
        )


def test_device_plan_precision() -> None:
    """``auto`` autocasts to bf16 on a CPU that computes it natively; ``fp32`` never autocasts."""
    cpu = {"gpu_addresses": [], "task_cpus": 2, "cuda_available": False, "device_count": 0,
           "bf16_supported": False}
    native = M.plan_execution("auto", **cpu, cpu_bf16=True)
    assert native == M.ExecutionPlan("cpu", "bfloat16", channels_last=True, torch_threads=2, decode_threads=1)
    assert M.plan_execution("cpu", **cpu, precision="fp32", cpu_bf16=True).autocast_dtype is None
    assert M.plan_execution("cpu", **cpu, precision="auto", cpu_bf16=False).autocast_dtype is None
    gpu = {"gpu_addresses": ["0"], "task_cpus": 1, "cuda_available": True, "device_count": 1}
    assert M.plan_execution("cuda", **gpu, bf16_supported=True, precision="fp32").autocast_dtype is None
    assert M.plan_execution("cuda", **gpu, bf16_supported=False).autocast_dtype == "float16"
    with pytest.raises(ValueError, match="precision must be one of"):
        M.plan_execution("cpu", **cpu, precision="fp16")


def test_device_plan_uses_the_gpu_spark_assigned() -> None:
    plan = M.plan_execution(
        "auto", gpu_addresses=["2"], task_cpus=4, cuda_available=True, device_count=4, bf16_supported=True
    )
    assert plan == M.ExecutionPlan(
        "cuda:2", "bfloat16", channels_last=True, torch_threads=4, decode_threads=4
    )
    plan = M.plan_execution(
        "cuda", gpu_addresses=["1"], task_cpus=1, cuda_available=True, device_count=2, bf16_supported=False
    )
    assert plan == M.ExecutionPlan("cuda:1", "float16", channels_last=True, torch_threads=1, decode_threads=2)
    assert M.gpu_index([], 1) == 0
    assert M.gpu_index(["0", "1"], 2) == 0
    for bad in (["4"], ["gpu0"]):
        with pytest.raises(ValueError, match="sees 2 CUDA device"):
            M.gpu_index(bad, 2)


def test_native_bf16_and_cuda_device_checks_without_torch(tmp_path: Path) -> None:
    """The CPU flags decide bf16 from the kernel's list; the CUDA check looks for driver files."""
    if M.cpu_has_native_bf16():  # the kernel's flags imply the hardware torch's own checks look for
        assert torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    cases = {
        "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n": True,
        "flags\t\t: fpu avx512f amx_tile amx_bf16\n": True,
        "flags\t\t: fpu avx2 avx512f avx512_vnni\nbugs\t\t: avx512_bf16\n": False,
        "processor\t: 0\n": False,
    }
    for index, (text, expected) in enumerate(cases.items()):
        (tmp_path / f"cpuinfo{index}").write_text(text)
        assert M.cpu_has_native_bf16(str(tmp_path / f"cpuinfo{index}")) is expected, text
    assert M.cpu_has_native_bf16(str(tmp_path / "absent")) is False
    (tmp_path / "nvidiactl").touch()
    assert M.cuda_may_be_visible([str(tmp_path / "dxg"), str(tmp_path / "nvidiactl")])
    assert not M.cuda_may_be_visible([str(tmp_path / "dxg")])
    if not M.cuda_may_be_visible():  # no driver file: torch sees no GPU either
        assert not torch.cuda.is_available()


def test_the_cpu_probe_answers_without_importing_torch() -> None:
    """Where no GPU can be in play, the executor's answer on the dtype costs no torch import."""
    requests = ["cpu"] + (["auto"] if not M.cuda_may_be_visible() else [])
    code = (
        "import json, sys\n"
        "from udfs import embed_images as U\n"
        f"answers = [U.probe_task(device, 'auto') for device in {requests!r}]\n"
        "print(json.dumps({'answers': answers, 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    own = "bfloat16" if M.cpu_has_native_bf16() else None
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "answers": [[None, own]] * len(requests), "torch": False
    }


def test_every_task_computes_in_the_dtype_the_driver_resolved(caplog: pytest.LogCaptureFixture) -> None:
    """The probe's answer is this machine's own plan; a task whose own choice differs from the run's
    (a mixed fleet) computes in the run's dtype and says so."""
    own = "bfloat16" if M.cpu_has_native_bf16() else None
    assert U.probe_task("cpu", "auto") == (None, own)
    assert U.probe_task("cpu", "fp32") == (None, None)
    weights = M.resolve_weights("resnet18", "random:0")
    caplog.set_level(logging.WARNING, logger="stylegraph.embed_udf")
    agreeing = U.EmbedConfig("resnet18", weights, ".", device="cpu", autocast=own)
    assert U.run_plan(agreeing).autocast_dtype == own
    assert caplog.records == []
    other = "float16" if own else "bfloat16"
    differing = dataclasses.replace(agreeing, autocast=other)
    assert U.run_plan(differing).autocast_dtype == other
    assert [r.getMessage() for r in caplog.records] == [
        f"this executor would compute in {own or 'fp32'}; computing in the run's {other}"
    ]


def test_gpu_plan_settings_run_on_cpu(tmp_path: Path) -> None:
    """The GPU path's channels_last + autocast code, exercised on CPU with bf16 autocast."""
    paths = list(write_good_images(tmp_path).values())[:3]
    batch = torch.stack([M.preprocess_bytes(p.read_bytes()) for p in paths])
    config = U.EmbedConfig("resnet18", M.resolve_weights("resnet18", "random:0"), str(tmp_path))
    gpu_like = M.ExecutionPlan("cpu", "bfloat16", channels_last=True, torch_threads=1, decode_threads=2)
    fast = U.get_model(config, gpu_like)
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.backbone.modules())
    reference = reference_features("resnet18", 0, paths)
    actual = fast.embed(batch)
    assert actual.dtype == np.float32
    assert min_cosine(actual, reference) > 0.99  # bf16 is close to, not equal to, fp32
    assert U.get_model(config, gpu_like) is fast  # cached: loaded once per worker and device
    plain = U.get_model(config, CPU_PLAN)
    assert plain is not fast
    assert U.get_model(config, gpu_like) is fast
    # At most two models stay cached: a third configuration evicts the least recently used (plain).
    other = U.EmbedConfig("resnet18", M.resolve_weights("resnet18", "random:1"), str(tmp_path))
    U.get_model(other, CPU_PLAN)
    assert U.get_model(config, gpu_like) is fast
    assert U.get_model(config, CPU_PLAN) is not plain
    # Under float16 autocast the BatchNorms stay: folded weights could leave float16's range.
    half = U.get_model(config, dataclasses.replace(gpu_like, autocast_dtype="float16"))
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in half.backbone.modules()) == 20


def test_udf_body_rebatches_and_keeps_order(tmp_path: Path) -> None:
    import pandas as pd

    good = write_good_images(tmp_path)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    names = ["rgb.jpg", "bad.jpg", "gray.png", None, "cmyk.jpg", "portrait.png", "missing.png"]
    series = [pd.Series(names[:3]), pd.Series(names[3:4]), pd.Series(names[4:])]
    config = U.EmbedConfig("resnet18", M.resolve_weights("resnet18", "random:0"), str(tmp_path), batch_size=2)
    frames = list(U.embed_path_batches(iter(series), config, CPU_PLAN))
    assert [len(f) for f in frames] == [2, 2, 2, 1]
    result = pd.concat(frames, ignore_index=True)
    assert result["status"].tolist() == ["ok", "error", "ok", "error", "ok", "ok", "error"]
    assert [e.split(":")[0] if e else None for e in result["error"]] == [
        None,
        "not_an_image",
        None,
        "missing_image_path",
        None,
        None,
        "missing_file",
    ]
    ok_names = [n for n, s in zip(names, result["status"], strict=True) if s == "ok"]
    expected = reference_features("resnet18", 0, [good[n] for n in ok_names])
    assert_close(np.stack(result.loc[result["status"] == "ok", "embedding"].tolist()), expected)


def test_weights_head_and_images_from_s3(aws_env: str, tmp_path: Path) -> None:
    """The offline-cluster path: weights, head and images on S3 (a local moto endpoint)."""
    import boto3
    import pandas as pd

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    torch.manual_seed(7)
    backbone = torchvision.models.resnet18(weights=None)
    buffer = io.BytesIO()
    torch.save(backbone.state_dict(), buffer)
    s3.put_object(Bucket="models", Key="weights/resnet18.pth", Body=buffer.getvalue())
    head = torch.nn.Linear(512, 4)
    head_buffer = io.BytesIO()
    torch.save(head.state_dict(), head_buffer)
    s3.put_object(Bucket="models", Key="weights/head.pth", Body=head_buffer.getvalue())
    good = write_good_images(tmp_path)
    s3.put_object(Bucket="models", Key="images/Boots/gray.jpg", Body=good["gray.jpg"].read_bytes())

    spec = M.resolve_weights("resnet18", "s3://models/weights/resnet18.pth")
    assert spec == M.WeightsSpec(
        "file", hashlib.sha256(buffer.getvalue()).hexdigest(), uri="s3://models/weights/resnet18.pth"
    )
    with pytest.raises(M.ModelConfigError, match="file not found"):
        M.resolve_weights("resnet18", "s3://models/weights/nope.pth")
    config = U.EmbedConfig(
        "resnet18", spec, "s3://models/images", head_uri="s3://models/weights/head.pth", batch_size=4
    )
    frames = list(
        U.embed_path_batches(iter([pd.Series(["Boots/gray.jpg", "Boots/none.jpg"])]), config, CPU_PLAN)
    )
    result = pd.concat(frames, ignore_index=True)
    assert result["status"].tolist() == ["ok", "error"]
    assert result["error"][1].startswith("missing_file: ")
    backbone.fc = head
    with torch.inference_mode():
        expected = backbone.eval()(reference_inputs([good["gray.jpg"]])).numpy()
    assert_close(np.stack([result["embedding"][0]]), expected)


def test_weights_inside_a_published_s3_folder_are_read_through_its_pointer(aws_env: str) -> None:
    """A model folder published by the suite on S3 holds its files under ``_v-<id>/``: the weights and
    the head are found, hashed and loaded from the pointer's version, and the executors get that version."""
    import boto3

    from jobs.common import storage

    boto3.client("s3").create_bucket(Bucket="published-models")
    torch.manual_seed(11)
    backbone = torchvision.models.resnet18(weights=None)
    buffer = io.BytesIO()
    torch.save(backbone.state_dict(), buffer)
    head = torch.nn.Linear(512, 3)
    head_buffer = io.BytesIO()
    torch.save(head.state_dict(), head_buffer)
    root = "s3://published-models/w"
    staged = storage.join(storage.staging_uri(root, "models", storage.new_run_id()), "weights")
    s3 = boto3.client("s3")
    staged_key = staged.split("/", 3)[3]
    s3.put_object(Bucket="published-models", Key=f"{staged_key}/resnet18.pth", Body=buffer.getvalue())
    s3.put_object(Bucket="published-models", Key=f"{staged_key}/head.pth", Body=head_buffer.getvalue())
    final = storage.join(root, "models")
    storage.publish(staged, final)
    version = storage.join(final, f"{storage.VERSION_PREFIX}{storage.read_pointer(final)['version']}")

    assert M.sha256_of_uri(f"{final}/head.pth") == hashlib.sha256(head_buffer.getvalue()).hexdigest()
    loaded = M.load_head(f"{final}/head.pth", 512)
    assert torch.equal(loaded.weight, head.weight.detach())
    spec = M.resolve_weights("resnet18", f"{final}/resnet18.pth")
    assert spec == M.WeightsSpec(
        "file", hashlib.sha256(buffer.getvalue()).hexdigest(), uri=f"{version}/resnet18.pth"
    )
    state = M.read_state_dict(f"{final}/resnet18.pth")
    assert torch.equal(state["fc.weight"], backbone.state_dict()["fc.weight"])
