"""Facts about this process and its hardware: devices, dtypes, peak memory, library versions.

Every layer of the package may ask these, so they live at the bottom (nothing here imports llmprune).
"""
from __future__ import annotations

import platform
import resource

import torch

from .errors import LLMPruneError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LLMPruneError("--device cuda was asked for but no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise LLMPruneError(f"unknown device '{device}' (use cpu, cuda or auto)")
    return device


def default_dtype(device: str) -> torch.dtype:
    # float32 on CPU: statistics and Cholesky factorisations want it, and CPU bf16
    # kernels differ in coverage; bfloat16 on accelerators where memory is the constraint.
    return torch.float32 if device == "cpu" else torch.bfloat16


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LLMPruneError(f"unknown dtype '{dtype}' (use {', '.join(DTYPES)})")
    return DTYPES[dtype]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's VmHWM is this process's own high-water mark. getrusage's ru_maxrss is only the
    fallback: it also counts the parent's resident memory at the moment of fork/exec, so a
    process started by a large one (a benchmark driver) would report the driver's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def peak_gpu_mb() -> float | None:
    """Peak memory this process took on the CUDA device through PyTorch, in MiB (None when CUDA was never used).

    Resident memory says nothing of the device's: a run with ``--device cuda`` reports both.
    """
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def return_freed_memory() -> None:
    """Hand memory freed by Python back to the OS (glibc keeps it otherwise).

    Reading and tokenising a corpus, or a block's pruning temporaries, leave freed small blocks
    in the heap, which tensors (allocated with mmap) never reuse; resident memory would stay that
    much higher for the rest of the run. A no-op where glibc is not the C library.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_name() -> str:
    """The processor's model name (what benchmark results say they ran on)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {
        "llmprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
