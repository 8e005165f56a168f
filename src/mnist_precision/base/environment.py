"""Where a stage runs, described without importing torch.

The `environment` stage writes this description to `environment.json`, which
`train` and `evaluate` depend on: DVC then reruns them (and its run-cache
declines to restore them) on another machine or another PyTorch, and only
there. Checking it must cost little, since it runs on every `dvc repro`:
everything here comes from /proc/cpuinfo, package metadata, the files of the
installed torch (read, not imported) and NVML, never from `import torch`,
which costs many times what this module does.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path

# The CPU features that decide how fast each precision runs (/proc/cpuinfo's names).
CPU_FEATURES = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
# What PyTorch's dispatcher needs for each of its x86 kernel sets (ATen's
# DispatchStub.cpp, compute_cpu_capability), best first.
CAPABILITY_NEEDS = (("avx512", {"avx512vl", "avx512bw", "avx512dq", "fma"}), ("avx2", {"avx2", "fma"}))
CAPABILITY_VARIABLE = "ATEN_CPU_CAPABILITY"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            return set(next(line for line in info if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_features(flags: set[str] | None = None) -> tuple[str, ...]:
    """Which of CPU_FEATURES this CPU has (none where /proc/cpuinfo is not there)."""
    flags = cpu_flags() if flags is None else flags
    return tuple(feature for feature in CPU_FEATURES if feature in flags)


def cpu_capability(flags: set[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """The kernel set PyTorch dispatches to on this x86 CPU, by PyTorch's own rule
    and named as `torch.backends.cpu.get_cpu_capability()` names it:
    ATEN_CPU_CAPABILITY wins where it names one; else the best the flags allow."""
    chosen = (os.environ if environ is None else environ).get(CAPABILITY_VARIABLE)
    if chosen not in ("avx512", "avx2", "default"):
        flags = cpu_flags() if flags is None else flags
        chosen = next((name for name, needs in CAPABILITY_NEEDS if needs <= flags), "default")
    return chosen.upper()


def torch_versions() -> dict[str, str]:
    """torch's version and the CUDA it was built for, from its installed files;
    cuDNN's from the wheel that ships it ("none" where there is none)."""
    spec = importlib.util.find_spec("torch")
    version_py = Path(spec.origin).parent / "version.py" if spec and spec.origin else None
    text = version_py.read_text() if version_py and version_py.is_file() else ""
    found = dict(re.findall(r"^(__version__|cuda)\s*(?::[^=]*)?=\s*['\"]([^'\"]*)['\"]", text, re.MULTILINE))
    cudnn = next(
        (
            dist.version
            for dist in importlib.metadata.distributions()
            if (dist.metadata["Name"] or "").lower().startswith("nvidia-cudnn")
        ),
        "none",
    )
    return {"torch": found.get("__version__", "none"), "cuda": found.get("cuda", "none"), "cudnn": cudnn}


def project_version() -> str:
    try:
        return importlib.metadata.version("mnist-precision")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def visible_gpu() -> Gpu | None:
    """The first GPU CUDA would use (CUDA_VISIBLE_DEVICES honoured), through NVML; None where there is none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = visible.split(",")[0].strip() if visible is not None else "0"
    if not first or first.startswith("-"):
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: no GPU to use
        return None
    try:
        handle = (
            pynvml.nvmlDeviceGetHandleByUUID(first)
            if first.startswith(("GPU-", "MIG-"))
            else pynvml.nvmlDeviceGetHandleByIndex(int(first))
        )
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return Gpu(pynvml.nvmlDeviceGetName(handle), f"{major}.{minor}")
    except (pynvml.NVMLError, ValueError):
        return None
    finally:
        pynvml.nvmlShutdown()


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str


@dataclass(frozen=True)
class Environment:
    """Where the stages run: the record environment.json holds, one field per key."""

    device: str  # cpu or cuda
    torch: str
    cuda: str
    cudnn: str
    mnist_precision: str
    # On a CPU: its name, the cores this process may use, PyTorch's kernels and the precisions' instructions.
    cpu: str | None = None
    cores: int | None = None
    cpu_capability: str | None = None
    cpu_features: tuple[str, ...] | None = None
    # On a GPU: the first visible one, or "none visible".
    gpu: Gpu | str | None = None

    @property
    def where(self) -> str:
        """The CPU's name or the GPU's, as the stage says it."""
        return self.cpu or (self.gpu.name if isinstance(self.gpu, Gpu) else str(self.gpu))

    def to_json(self) -> str:
        """The file's text: the keys that apply, sorted, so that the same machine writes the same bytes."""
        present = {key: value for key, value in asdict(self).items() if value is not None}
        return json.dumps(present, indent=2, sort_keys=True) + "\n"


def describe(device: str) -> Environment:
    """Where the stages run for the `device` param (auto, cpu or cuda): what decides their speed and numerics."""
    versions = torch_versions()
    software = (versions["torch"], versions["cuda"], versions["cudnn"], project_version())
    gpu = visible_gpu() if device != "cpu" and versions["cuda"] != "none" else None
    if device == "cuda" or (device == "auto" and gpu):
        return Environment("cuda", *software, gpu=gpu or "none visible")
    flags = cpu_flags()
    return Environment(
        "cpu",
        *software,
        cpu=cpu_name(),
        cores=len(os.sched_getaffinity(0)),
        cpu_capability=cpu_capability(flags),
        cpu_features=tuple(cpu_features(flags)),
    )
