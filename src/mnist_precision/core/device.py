"""Resolve the `device` param to a torch device, refusing what cannot work."""

from __future__ import annotations

import torch

from mnist_precision.base import names
from mnist_precision.base.environment import cpu_features, cpu_name
from mnist_precision.base.errors import UserError
from mnist_precision.base.names import PEAK_GPU_MEMORY_MB, PEAK_RSS_MB
from mnist_precision.base.precision_table import PRECISIONS
from mnist_precision.core.precision import PrecisionError, torchao_float8


class DeviceError(UserError, RuntimeError):
    """The requested device or precision is not available on this machine."""


# The GPUs that have each compute capability a precision may need, for the refusal.
GPU_GENERATIONS = {
    (8, 0): "Ampere and later: A100, A10, RTX 30xx, L4, H100, H200",
    (8, 9): "Ada Lovelace and Hopper or later: L4, L40, RTX 40xx, H100, H200",
}


def resolve_device(requested: str, precision: str) -> torch.device:
    """`auto` picks CUDA when available, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    needs = PRECISIONS[precision].needs_cuda_capability
    if needs is not None:
        have = torch.cuda.get_device_capability() if requested == "cuda" and torch.cuda.is_available() else None
        if have is None or have < needs:
            where = (
                f"{torch.cuda.get_device_name()} has compute capability {have[0]}.{have[1]}"
                if have
                else f"this run's device is {requested}"
            )
            raise DeviceError(
                f"precision {precision} runs only on NVIDIA GPUs of compute capability {needs[0]}.{needs[1]} or "
                f"newer ({GPU_GENERATIONS[needs]}); {where}: choose another precision (fp32, fp16, bf16)"
            )
    if PRECISIONS[precision].fp8:
        torchao_float8()  # installed, or an error that says how
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                "device is 'cuda' but PyTorch sees no CUDA GPU on this machine; "
                "set device: auto (or cpu) in params.yaml, or run with -S device=cpu"
            )
        wants_bf16 = "bfloat16" in (PRECISIONS[precision].autocast_dtype, PRECISIONS[precision].param_dtype)
        if wants_bf16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise DeviceError(
                f"precision {precision} needs a GPU with native bfloat16 support; "
                f"{torch.cuda.get_device_name()} has none: use fp16 or fp32"
            )
    return torch.device(requested)


def refusal(precision: str, device_type: str) -> str | None:
    """Why a device of this type does not run the precision (the refusal's
    first clause, without its advice), or None where it does."""
    try:
        resolve_device(device_type, precision)
    except (DeviceError, PrecisionError) as error:
        return str(error).split(";")[0]
    return None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name as /proc/cpuinfo gives it."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def peak_memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak memory of this process: the CUDA allocator's peak on a GPU,
    the resident set size on the CPU (which includes the Python runtime)."""
    if device.type == "cuda":
        return {PEAK_GPU_MEMORY_MB: torch.cuda.max_memory_allocated(device) / 2**20}
    import resource

    return {PEAK_RSS_MB: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def capability_params(device: torch.device) -> dict[str, str]:
    """What the device offers for each precision, logged with every run."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {
            names.CUDA_COMPUTE_CAPABILITY: f"{major}.{minor}",
            names.CUDA_NATIVE_BF16: str(torch.cuda.is_bf16_supported(including_emulation=False)),
        }
    return {
        names.CPU_CAPABILITY: torch.backends.cpu.get_cpu_capability(),
        names.CPU_FEATURES: ",".join(cpu_features()) or "none",
    }


def missing_native_support(native_on_cpu: tuple[str, ...], device: torch.device) -> str | None:
    """Why a precision will not run natively here, or None where it does."""
    if device.type != "cpu" or not native_on_cpu or set(native_on_cpu) & set(cpu_features()):
        return None
    return f"this CPU has none of {', '.join(native_on_cpu)}"
