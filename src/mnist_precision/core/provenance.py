"""Where a training run runs and what its precision does there: the params it
logs beside params.yaml's own keys, and the warnings it starts with.

The record's field names are the logged names (`base/names.py`, `RUN_PARAMS`),
which the report reads back."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mnist_precision.core.device import capability_params, device_name, missing_native_support
from mnist_precision.core.distributed import World
from mnist_precision.core.optimizers import OptimizerChoice, eps_warning
from mnist_precision.core.precision import PrecisionPolicy, fp8_kept_layers, torch_dtype
from mnist_precision.core.threads import Budget


@dataclass(frozen=True)
class RunProvenance:
    world_size: int
    nodes: int
    distributed_backend: str
    device_resolved: str
    device_name: str
    torch_version: str
    cuda_version: str
    float32_matmul_precision: str
    compute_dtype: str
    compute_dtype_max: float  # the largest finite value: what the range figures are measured against
    threads: int
    threads_from: str
    cuda_compute_capability: str | None = None  # on a GPU
    cuda_native_bf16: str | None = None
    cpu_capability: str | None = None  # on the CPU
    cpu_features: str | None = None
    fp8_layers_kept_bf16: str | None = None  # fp8 only: the layers float8 could not take

    def as_params(self) -> dict[str, object]:
        return {name: value for name, value in asdict(self).items() if value is not None}


def provenance(
    device: torch.device, world: World, policy: PrecisionPolicy, model: nn.Module, threads: Budget
) -> RunProvenance:
    dtype = policy.precision.compute_dtype
    return RunProvenance(
        world_size=world.size,
        nodes=world.nodes,
        distributed_backend=world.backend or "none",
        device_resolved=str(device),
        device_name=device_name(device),
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda or "none",
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        compute_dtype=dtype,
        compute_dtype_max=torch.finfo(torch_dtype(dtype)).max,
        threads=threads.threads,
        threads_from=threads.why,
        fp8_layers_kept_bf16=(",".join(fp8_kept_layers(model)) or "none") if policy.precision.fp8 else None,
        **capability_params(device),
    )


def precision_warnings(policy: PrecisionPolicy, optimizer: OptimizerChoice, device: torch.device) -> list[str]:
    """A precision that takes a slow path here; an eps its dtype flushes to zero."""
    found = []
    missing = missing_native_support(policy.precision.native_on_cpu, device)
    if missing:
        found.append(
            f"{policy.name} is not native here ({missing}): its matrix products take "
            "a slow path, and it will likely run slower than fp32"
        )
    eps = eps_warning(optimizer, policy)
    return found + ([eps] if eps else [])
