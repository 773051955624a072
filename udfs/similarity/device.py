"""The device a tile task computes on, and its CPU threads.

A device is named by a string: ``cpu``, ``cuda`` or ``cuda:<index>``. torch is imported only when a
GPU may be used: ``--device cuda``, or ``auto`` on a machine with a GPU driver loaded; a CPU worker
never imports it (the CPU kernels are numpy).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
from threadpoolctl import threadpool_limits

# What the kernels compute on: a numpy array on the CPU, a torch tensor on a GPU (Any: the two share
# indexing and arithmetic, and each kernel branches where their functions differ).
DeviceArray: TypeAlias = Any

CPU = "cpu"
CUDA = "cuda"
AUTO = "auto"
# A GPU driver's kernel interface: without one (NVIDIA's, or ROCm's ``kfd``), no build of torch sees a
# GPU, so ``auto`` settles on the CPU without importing torch to ask.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia/gpus", "/dev/kfd")


def has_gpu_driver() -> bool:
    """Whether a GPU driver is loaded on this machine (a necessary condition for torch to see a GPU)."""
    return any(os.path.exists(path) for path in GPU_DRIVER_PATHS)


def torch_sees_gpu() -> bool:
    """``torch.cuda.is_available()``, asked only where a GPU driver is loaded (torch imported then)."""
    if not has_gpu_driver():
        return False
    import torch

    return bool(torch.cuda.is_available())


def is_cpu(device: str) -> bool:
    return device == CPU


def resolve_device(
    requested: str,
    task_resources: Mapping[str, Sequence[str]] | None = None,
    *,
    cuda_available: bool | None = None,
) -> str:
    """The device a task computes on: ``cpu``, ``cuda`` or ``cuda:<index>``.

    Args:
        requested: ``cpu``, ``cuda`` or ``auto`` (cuda when the task sees a GPU, else cpu).
        task_resources: resource name -> addresses, as ``TaskContext.get().resources()`` gives them
            (``{"gpu": ["1"]}`` on a GPU executor): the task's own GPU is used.
        cuda_available: override of the check whether torch sees a GPU (tests); ``cpu`` asks nothing.

    Raises:
        RuntimeError: ``cuda`` was asked for and the task has no GPU.
    """
    if requested == CPU:
        return CPU
    has_cuda = torch_sees_gpu() if cuda_available is None else cuda_available
    if requested == AUTO and not has_cuda:
        return CPU
    if not has_cuda:
        raise RuntimeError("--device cuda, but torch sees no GPU on this executor")
    addresses = list((task_resources or {}).get("gpu", []))
    return f"{CUDA}:{int(addresses[0])}" if addresses else CUDA


def task_setup(requested_device: str, threads: int | None) -> str:
    """Pick the task's device and set its CPU threads (default: the task's ``spark.task.cpus``): BLAS's,
    and torch's on a GPU task."""
    from pyspark import TaskContext

    context = TaskContext.get()
    resources: dict[str, Sequence[str]] = {}
    cpus = 1
    if context is not None:
        resources = {name: info.addresses for name, info in context.resources().items()}
        cpus = max(1, int(context.cpus()))
    # numpy's OpenBLAS would start one thread per core in every task: as many as Spark's task slots.
    threadpool_limits(limits=threads or cpus, user_api="blas")
    device = resolve_device(requested_device, resources)
    if not is_cpu(device):
        import torch

        torch.set_num_threads(threads or cpus)
    return device


def to_device(values: np.ndarray, device: str) -> DeviceArray:
    """A numpy array on ``device`` (itself on the CPU)."""
    if is_cpu(device):
        return values
    import torch

    return torch.from_numpy(values).to(device)


def to_host(values: DeviceArray) -> np.ndarray:
    """A device array as numpy (itself on the CPU)."""
    return values if isinstance(values, np.ndarray) else values.cpu().numpy()


def like(values: np.ndarray, other: DeviceArray) -> DeviceArray:
    """A numpy array as the kind of array ``other`` is (numpy, or a tensor on ``other``'s device)."""
    if isinstance(other, np.ndarray):
        return values
    import torch

    return torch.from_numpy(values).to(other.device)


def arange(start: int, stop: int, other: DeviceArray) -> DeviceArray:
    """``start, ..., stop - 1`` (int64) as the kind of array ``other`` is."""
    return like(np.arange(start, stop, dtype=np.int64), other)


def array_module(values: DeviceArray) -> Any:
    """numpy for a numpy array, torch for a tensor (their ``sqrt``, ``exp``... are alike)."""
    if isinstance(values, np.ndarray):
        return np
    import torch

    return torch


def nonzero(mask: DeviceArray) -> tuple[DeviceArray, DeviceArray]:
    """(rows, columns) of the true elements of a 2-d mask, on the mask's device."""
    if isinstance(mask, np.ndarray):
        rows, cols = np.nonzero(mask)
        return rows, cols
    import torch

    rows_t, cols_t = torch.nonzero(mask, as_tuple=True)
    return rows_t, cols_t
