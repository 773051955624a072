"""The image-embedding pandas UDF: image paths in, (embedding, status, error) out.

Why a pandas UDF: model inference has no built-in Spark function; an iterator-of-Series UDF lets each
Python worker load the model once and stream fixed-size batches through it.

Design:
* Input is the image path relative to the images root, not the bytes: each worker reads its own files
  (local disk or S3), so image bytes never cross the JVM or a shuffle, and the rows Spark moves are tiny.
  The job only shuffles (sku, path) pairs to balance the partitions.
* The model (backbone + optional head) is loaded once per Python worker and kept in a module-level cache
  keyed by the model configuration and the device (:func:`get_model`); nothing model-sized is shipped
  from the driver (the UDF closure holds only :class:`EmbedConfig`, a few strings).
* Rows are regrouped into batches of ``batch_size`` whatever the Arrow batch size; the next batch is
  decoded and preprocessed in a thread pool while the current one runs through the model (Pillow and
  torch both release the GIL). At most two batches of images are in memory per task.
* A bad image never fails the task: its row gets status "error", a null embedding and
  ``"<reason>: <detail>"`` in ``error`` (reasons in ``udfs.image_models.IMAGE_ERROR_REASONS``).
* Device: :func:`udfs.image_models.plan_execution` on the task's resources (the GPU Spark assigned,
  ``spark.task.cpus``); on a GPU, channels_last and bf16/fp16 autocast.
"""
from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd

from schemas import embeddings as E
from udfs import image_models as M

LOG = logging.getLogger("stylegraph.embed_udf")

MAX_ERROR_DETAIL_CHARS = 300


@dataclass(frozen=True)
class EmbedConfig:
    """Everything a worker needs to embed images; small and picklable (it travels in the UDF closure)."""

    model: str
    weights: M.WeightsSpec
    images_root: str
    head_uri: str | None = None
    normalize: bool = False
    device: str = M.DEVICE_AUTO
    batch_size: int = 16
    max_pixels: int = M.DEFAULT_MAX_IMAGE_PIXELS
    max_bytes: int = M.DEFAULT_MAX_IMAGE_BYTES

    @property
    def model_key(self) -> tuple[Any, ...]:
        return (self.model, self.weights, self.head_uri, self.normalize)


# ---------------------------------------------------------------------------------------- image files


def relative_image_path(value: Any) -> str:
    """Check a catalog ``image_path`` and return it normalised (``a/./b`` -> ``a/b``).

    Raises:
        ImageError: missing_image_path (null, empty) or invalid_image_path (absolute, NUL, escapes the
            root with ``..``).
    """
    if value is None or (isinstance(value, float) and pd.isna(value)) or not str(value).strip():
        raise M.ImageError(M.REASON_MISSING_IMAGE_PATH, "no image_path")
    text = str(value)
    if "\x00" in text:
        raise M.ImageError(M.REASON_INVALID_IMAGE_PATH, "NUL character in path")
    if text.startswith(("/", "\\")):
        raise M.ImageError(M.REASON_INVALID_IMAGE_PATH, f"absolute path {text[:200]!r}")
    normalised = posixpath.normpath(text)
    if normalised == ".." or normalised.startswith("../"):
        raise M.ImageError(M.REASON_INVALID_IMAGE_PATH, f"path {text[:200]!r} leaves the images root")
    return normalised


class ImageReader:
    """Reads image files below a root URI (local path, ``file://`` or ``s3://``) with a size limit."""

    def __init__(self, images_root: str, max_bytes: int) -> None:
        from jobs.common import storage

        self.max_bytes = max_bytes
        self.is_remote = storage.is_remote(images_root)
        if self.is_remote:
            self.fs, self.root = storage.filesystem(images_root)
        else:
            self.fs, self.root = None, storage.local_path(images_root)
            self.real_root = os.path.realpath(self.root)

    def read(self, value: Any) -> bytes:
        """The bytes of the image at ``value`` (a relative path); raises ImageError."""
        rel = relative_image_path(value)
        return self._read_remote(rel) if self.is_remote else self._read_local(rel)

    def _check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise M.ImageError(M.REASON_FILE_TOO_LARGE, f"{size} bytes is over the limit of {self.max_bytes}")

    def _read_local(self, rel: str) -> bytes:
        # The file a symlink names, checked to lie under the root: no link reads outside it.
        path = os.path.realpath(os.path.join(self.root, rel))
        if not path.startswith(self.real_root.rstrip("/") + "/"):
            raise M.ImageError(M.REASON_INVALID_IMAGE_PATH, f"{rel!r} is a link that leaves the images root")
        try:
            with open(path, "rb") as stream:
                self._check_size(os.fstat(stream.fileno()).st_size)
                return stream.read()
        except FileNotFoundError as err:
            raise M.ImageError(M.REASON_MISSING_FILE, f"no file {rel!r} under the images root") from err
        except OSError as err:  # a directory, no permission, an I/O error
            detail = f"{type(err).__name__}: {err.strerror or err}"
            raise M.ImageError(M.REASON_UNREADABLE_FILE, detail) from err

    def _read_remote(self, rel: str) -> bytes:
        from pyarrow import fs as pafs

        path = f"{self.root}/{rel}"
        try:
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise M.ImageError(M.REASON_MISSING_FILE, f"no object {rel!r} under the images root")
            if info.type != pafs.FileType.File:
                raise M.ImageError(M.REASON_UNREADABLE_FILE, f"{rel!r} is not a file")
            self._check_size(info.size)
            with self.fs.open_input_file(path) as stream:  # one GET (a stream reads in small ranges)
                return stream.read()
        except M.ImageError:
            raise
        except OSError as err:
            raise M.ImageError(M.REASON_UNREADABLE_FILE, f"{type(err).__name__}: {err}") from err


def prepare_image(reader: ImageReader, value: Any, max_pixels: int) -> Any:
    """Read, decode and preprocess one image: a uint8 tensor [3, 224, 224], or the ImageError."""
    try:
        return M.preprocess_bytes(reader.read(value), max_pixels)
    except M.ImageError as err:
        return err


# --------------------------------------------------------------------------------------------- model


class LoadedModel:
    """A backbone (+ head, + L2 normalisation) placed on its device, ready for uint8 batches."""

    def __init__(self, config: EmbedConfig, plan: M.ExecutionPlan) -> None:
        import torch

        started = time.time()
        self.plan = plan
        self.normalize = config.normalize
        self.device = torch.device(plan.device)
        memory_format = torch.channels_last if plan.channels_last else torch.contiguous_format
        backbone = M.load_backbone(config.model, config.weights)
        self.backbone = backbone.to(self.device, memory_format=memory_format)
        self.head = None
        if config.head_uri:
            self.head = M.load_head(config.head_uri, M.feature_dim(config.model)).to(self.device)
        self.autocast_dtype = getattr(torch, plan.autocast_dtype) if plan.autocast_dtype else None
        LOG.info("loaded %s on %s (%s) in %.1fs", config.model, plan.device, plan, time.time() - started)

    def embed(self, batch_uint8: Any) -> Any:
        """uint8 images [N, 3, 224, 224] -> float32 numpy features [N, D]."""
        import torch

        with torch.inference_mode():
            images = M.normalize_batch(batch_uint8.to(self.device, non_blocking=True))
            if self.plan.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                device_type=self.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ):
                features = self.backbone(images)
                if self.head is not None:
                    features = self.head(features)
            features = features.float()
            if self.normalize:
                features = torch.nn.functional.normalize(features, dim=1)
            return features.cpu().numpy()


# A reused Python worker may serve several jobs of one session (the pipeline, the tests): keep the most
# recently used models only, so memory stays bounded by a couple of models whatever ran before.
MAX_CACHED_MODELS = 2
_MODELS: OrderedDict[tuple[Any, ...], LoadedModel] = OrderedDict()
_MODELS_LOCK = threading.Lock()


def get_model(config: EmbedConfig, plan: M.ExecutionPlan) -> LoadedModel:
    """The worker's model for this configuration and device, loaded on first use and then reused."""
    key = (*config.model_key, plan.device, plan.autocast_dtype, plan.channels_last)
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        while len(_MODELS) >= MAX_CACHED_MODELS:
            _MODELS.popitem(last=False)
        _MODELS[key] = LoadedModel(config, plan)
        return _MODELS[key]


def current_task_plan(requested: str) -> M.ExecutionPlan:
    """The execution plan of the running Spark task: its GPU address and cores from the TaskContext."""
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    addresses: list[str] = []
    task_cpus = torch.get_num_threads()
    if context is not None:
        task_cpus = context.cpus()
        gpu = context.resources().get("gpu")
        addresses = list(gpu.addresses) if gpu is not None else []
    cuda = requested != M.DEVICE_CPU and torch.cuda.is_available()
    return M.plan_execution(
        requested,
        gpu_addresses=addresses,
        task_cpus=task_cpus,
        cuda_available=cuda,
        device_count=torch.cuda.device_count() if cuda else 0,
        bf16_supported=cuda and torch.cuda.is_bf16_supported(),
    )


# ------------------------------------------------------------------------------------------ batching


def rebatch(batches: Iterable[pd.Series], size: int) -> Iterator[list[Any]]:
    """Regroup a stream of Series into lists of ``size`` values (the last one may be shorter)."""
    buffer: list[Any] = []
    for series in batches:
        for value in series.tolist():
            buffer.append(value)
            if len(buffer) == size:
                yield buffer
                buffer = []
    if buffer:
        yield buffer


def _error_text(err: M.ImageError) -> str:
    return f"{err.reason}: {err.detail[:MAX_ERROR_DETAIL_CHARS]}"


def embed_prepared(model: LoadedModel, prepared: list[Any]) -> pd.DataFrame:
    """Run the model on the decoded images of one batch; failed images become error rows."""
    import torch

    ok_positions = [i for i, item in enumerate(prepared) if not isinstance(item, M.ImageError)]
    embeddings: list[Any] = [None] * len(prepared)
    if ok_positions:
        features = model.embed(torch.stack([prepared[i] for i in ok_positions]))
        for row, position in enumerate(ok_positions):
            embeddings[position] = features[row]
    failed = [isinstance(item, M.ImageError) for item in prepared]
    return pd.DataFrame(
        {
            E.EMBEDDING: embeddings,
            E.STATUS: [E.STATUS_ERROR if bad else E.STATUS_OK for bad in failed],
            E.ERROR: [_error_text(item) if bad else None for item, bad in zip(prepared, failed, strict=True)],
        }
    )


def embed_path_batches(
    batches: Iterable[pd.Series], config: EmbedConfig, plan: M.ExecutionPlan | None = None
) -> Iterator[pd.DataFrame]:
    """The UDF's body: relative image paths in, one result row per path out, in order.

    Args:
        batches: the Arrow batches of ``image_path`` values Spark hands the UDF.
        config: model, weights, images root and limits.
        plan: how to run (default: from the running task's resources, :func:`current_task_plan`).

    Yields:
        DataFrames with the columns of ``EMBED_RESULT_TYPE`` (embedding, status, error).
    """
    import torch

    plan = plan or current_task_plan(config.device)
    torch.set_num_threads(plan.torch_threads)
    model = get_model(config, plan)
    reader = ImageReader(config.images_root, config.max_bytes)
    with ThreadPoolExecutor(plan.decode_threads, thread_name_prefix="decode") as pool:
        pending: list[Future[Any]] | None = None
        for chunk in rebatch(batches, config.batch_size):
            # Decode this chunk in the pool while the previous one runs through the model.
            futures = [pool.submit(prepare_image, reader, value, config.max_pixels) for value in chunk]
            if pending is not None:
                yield embed_prepared(model, [future.result() for future in pending])
            pending = futures
        if pending is not None:
            yield embed_prepared(model, [future.result() for future in pending])


def make_embed_udf(config: EmbedConfig) -> Any:
    """The pandas UDF ``image_path -> struct<embedding, status, error>`` for one configuration."""
    from pyspark.sql import functions as F

    @F.pandas_udf(E.EMBED_RESULT_TYPE)  # type: ignore[call-overload]
    def embed_images(paths: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        yield from embed_path_batches(paths, config)

    return embed_images
