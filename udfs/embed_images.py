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
* A vector depends on its image alone: every model batch is padded with blank images to exactly
  ``batch_size`` (CPU kernels pick their algorithm by batch size, so a short last batch rounded
  differently), and each row carries the sha256 of the bytes it was computed from. Together with the
  configuration that is what lets the job reuse a vector on a later night (:func:`make_hash_udf` hashes
  the catalog's files without decoding them). The model is loaded at the first image that needs it: a
  task with nothing to embed never loads it.
* Device: :func:`udfs.image_models.plan_execution` on the task's resources (the GPU Spark assigned,
  ``spark.task.cpus``, whether the CPU computes bf16 natively); BatchNorm folded into the convolutions and
  channels_last everywhere; with precision ``auto``, bf16 autocast where the device has it (fp16 on
  older GPUs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import posixpath
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd

from schemas import embeddings as embeddings_schema
from udfs import image_models as M

LOG = logging.getLogger("stylegraph.embed_udf")

MAX_ERROR_DETAIL_CHARS = 300
# Files read at once by one task of the hashing UDF (reads wait on the disk or on S3, not on the CPU).
HASH_READ_THREADS = 8


@dataclass(frozen=True)
class EmbedConfig:
    """Everything a worker needs to embed images; small and picklable (it travels in the UDF closure)."""

    model: str
    weights: M.WeightsSpec
    images_root: str
    head_uri: str | None = None
    normalize: bool = False
    device: str = M.DEVICE_AUTO
    precision: str = M.PRECISION_AUTO
    # The autocast dtype every task computes in ("bfloat16", "float16" or None for fp32): the driver
    # resolves ``precision`` once on an executor (:func:`probe_task`), so all vectors of a run agree.
    autocast: str | None = None
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


def sha256_hex(data: bytes) -> str:
    """The sha256 of a file's bytes, as the ``content_sha256`` column holds it."""
    return hashlib.sha256(data).hexdigest()


def prepare_image(reader: ImageReader, value: Any, max_pixels: int) -> tuple[Any, str | None]:
    """Read, decode and preprocess one image: (a uint8 tensor [3, 224, 224] or the ImageError, the
    sha256 of the bytes read or None when there were none)."""
    try:
        data = reader.read(value)
    except M.ImageError as err:
        return err, None
    try:
        return M.preprocess_bytes(data, max_pixels), sha256_hex(data)
    except M.ImageError as err:
        return err, sha256_hex(data)


def content_sha256(reader: ImageReader, value: Any) -> str | None:
    """The sha256 of the image file at ``value`` (read, not decoded), or None when it cannot be read."""
    try:
        return sha256_hex(reader.read(value))
    except M.ImageError:
        return None


# What an embedding worker imports before its first image. The job has Spark's worker daemon import them
# once per executor, before it forks the workers (jobs.common.worker_daemon): torch alone is over a
# second of CPU per worker.
WORKER_MODULES = (
    "torch",
    "torch.nn.utils.fusion",
    "torch.utils.serialization",
    "torch.utils._device",  # the model is built under `with torch.device("meta")`
    "PIL.Image",
    "pyspark.sql.pandas.serializers",
    "jobs.common.storage",
    "udfs.embed_images",
)


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
        if plan.autocast_dtype != "float16":  # folded weights can leave float16's range; bf16 has fp32's
            backbone = M.inference_form(backbone, config.model)
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


def current_task_plan(requested: str, precision: str = M.PRECISION_AUTO) -> M.ExecutionPlan:
    """The execution plan of the running Spark task: its GPU address and cores from the TaskContext, the
    precision its device computes natively (:func:`udfs.image_models.plan_execution`)."""
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
        precision=precision,
        cpu_bf16=M.cpu_has_native_bf16(),
    )


def probe_task(requested: str, precision: str) -> tuple[str | None, str | None]:
    """Run in one executor task by the driver: (why CUDA cannot be used, for ``--device cuda``; the
    autocast dtype this task's plan picks for ``precision``). The run then computes in that dtype."""
    if requested == M.DEVICE_CUDA:
        reason = M.cuda_unavailable_reason()
        if reason:
            return reason, None
    if requested == M.DEVICE_CPU or (requested == M.DEVICE_AUTO and not M.cuda_may_be_visible()):
        # No GPU can be in play: the CPU plan's dtype, without importing torch.
        plan = M.plan_execution(
            M.DEVICE_CPU, gpu_addresses=[], task_cpus=1, cuda_available=False, device_count=0,
            bf16_supported=False, precision=precision, cpu_bf16=M.cpu_has_native_bf16(),
        )
        return None, plan.autocast_dtype
    return None, current_task_plan(requested, precision).autocast_dtype


def run_plan(config: EmbedConfig) -> M.ExecutionPlan:
    """The running task's plan with the run's autocast dtype: an executor whose own choice differs (a
    mixed fleet) computes in the run's dtype, so that every vector of the partition agrees."""
    plan = current_task_plan(config.device, config.precision)
    if plan.autocast_dtype != config.autocast:
        LOG.warning(
            "this executor would compute in %s; computing in the run's %s", plan.autocast_dtype or "fp32",
            config.autocast or "fp32",
        )
        plan = dataclasses.replace(plan, autocast_dtype=config.autocast)
    return plan


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


def padded_batch(images: list[Any], batch_size: int) -> Any:
    """The images stacked into one uint8 batch of exactly ``batch_size``, blank images after them.

    CPU kernels choose their algorithm (and so their rounding) by batch size, not by what else is in the
    batch: at one fixed size a vector is the same bits whichever images share its batch.
    """
    import torch

    batch = torch.stack(images)
    missing = batch_size - len(images)
    if missing > 0:
        batch = torch.cat([batch, batch.new_zeros((missing, *batch.shape[1:]))])
    return batch


def embed_prepared(
    model: Callable[[], LoadedModel],
    prepared: list[tuple[Any, str | None]],
    batch_size: int,
    count_images: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Run the model on the decoded images of one batch; failed images become error rows.

    Args:
        model: gives the worker's model (called only when the batch has an image to embed).
        prepared: (tensor or ImageError, content sha256) per row, from :func:`prepare_image`.
        batch_size: the model batch size the images are padded to (:func:`padded_batch`).
        count_images: called with the number of images each model call embeds (padding not counted).
    """
    items = [item for item, _ in prepared]
    ok_positions = [i for i, item in enumerate(items) if not isinstance(item, M.ImageError)]
    embeddings: list[Any] = [None] * len(items)
    if ok_positions:
        features = model().embed(padded_batch([items[i] for i in ok_positions], batch_size))
        if count_images is not None:
            count_images(len(ok_positions))
        for row, position in enumerate(ok_positions):
            embeddings[position] = features[row]
    failed = [isinstance(item, M.ImageError) for item in items]
    return pd.DataFrame(
        {
            embeddings_schema.EMBEDDING: embeddings,
            embeddings_schema.STATUS: [
                embeddings_schema.STATUS_ERROR if bad else embeddings_schema.STATUS_OK for bad in failed
            ],
            embeddings_schema.ERROR: [
                _error_text(item) if bad else None for item, bad in zip(items, failed, strict=True)
            ],
            embeddings_schema.CONTENT_SHA256: [sha for _, sha in prepared],
        }
    )


def embed_path_batches(
    batches: Iterable[pd.Series],
    config: EmbedConfig,
    plan: M.ExecutionPlan | None = None,
    count_images: Callable[[int], None] | None = None,
) -> Iterator[pd.DataFrame]:
    """The UDF's body: relative image paths in, one result row per path out, in order.

    Args:
        batches: the Arrow batches of ``image_path`` values Spark hands the UDF.
        config: model, weights, images root and limits.
        plan: how to run (default: from the running task's resources, :func:`run_plan`).
        count_images: called with the number of images each model call embeds.

    Yields:
        DataFrames with the columns of ``EMBED_RESULT_TYPE`` (embedding, status, error, content_sha256).
    """
    import torch

    plan = plan or run_plan(config)
    torch.set_num_threads(plan.torch_threads)
    reader = ImageReader(config.images_root, config.max_bytes)

    def model() -> LoadedModel:
        return get_model(config, plan)

    def embed(prepared: list[tuple[Any, str | None]]) -> pd.DataFrame:
        return embed_prepared(model, prepared, config.batch_size, count_images)

    with ThreadPoolExecutor(plan.decode_threads, thread_name_prefix="decode") as pool:
        pending: list[Future[Any]] | None = None
        for chunk in rebatch(batches, config.batch_size):
            # Decode this chunk in the pool while the previous one runs through the model.
            futures = [pool.submit(prepare_image, reader, value, config.max_pixels) for value in chunk]
            if pending is not None:
                yield embed([future.result() for future in pending])
            pending = futures
        if pending is not None:
            yield embed([future.result() for future in pending])


def make_embed_udf(config: EmbedConfig, model_images: Any = None) -> Any:
    """The pandas UDF ``image_path -> struct<embedding, status, error, content_sha256>`` for one
    configuration. ``model_images``: an optional Spark accumulator that adds up the images the model
    embedded (a retried task counts again)."""
    from pyspark.sql import functions as F

    count_images = model_images.add if model_images is not None else None

    @F.pandas_udf(embeddings_schema.EMBED_RESULT_TYPE)
    def embed_images(paths: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        yield from embed_path_batches(paths, config, count_images=count_images)

    return embed_images


# ------------------------------------------------------------------------------------------ hashing


def hash_path_batches(
    batches: Iterable[pd.Series], images_root: str, max_bytes: int, threads: int = HASH_READ_THREADS
) -> Iterator[pd.Series]:
    """The hashing UDF's body: relative image paths in, the sha256 of each file's bytes out (None when
    the file cannot be read: that product is embedded afresh, which records why)."""
    reader = ImageReader(images_root, max_bytes)
    with ThreadPoolExecutor(threads, thread_name_prefix="hash") as pool:
        for series in batches:
            yield pd.Series(list(pool.map(lambda value: content_sha256(reader, value), series.tolist())))


def make_hash_udf(images_root: str, max_bytes: int) -> Any:
    """The pandas UDF ``image_path -> content_sha256`` (string; null for a file that cannot be read).

    Why a UDF: the files are named by catalog paths relative to a root, with the same checks as the
    embedding UDF (paths that leave the root, size limit, local or S3); ``binaryFile`` would list and
    carry every file below the root through the JVM, catalog or not.
    """
    from pyspark.sql import functions as F

    @F.pandas_udf("string")
    def hash_images(paths: Iterator[pd.Series]) -> Iterator[pd.Series]:
        yield from hash_path_batches(paths, images_root, max_bytes)

    return hash_images
