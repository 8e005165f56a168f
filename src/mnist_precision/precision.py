"""The precisions, and the policy that owns everything a precision does to a step.

Each precision is one entry of `PRECISIONS`: params validation, the report's
order and the benchmark read this table, so adding a precision is one entry
here. `PrecisionPolicy` plays the part of Lightning's `MixedPrecision` plugin:
the training loop asks it for the autocast context, the backward pass and the
optimizer step, and checkpoints its state; it never looks at the precision's
name itself.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    name: str
    autocast_dtype: torch.dtype | None  # None: no autocast, everything in fp32
    loss_scaling: bool  # a GradScaler keeps small gradients from flushing to zero
    summary: str
    # CPU instruction sets (as /proc/cpuinfo names them), any of which runs its
    # matrix products natively; empty: every CPU does.
    native_on_cpu: tuple[str, ...] = ()


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", None, False,
              "true single precision: no autocast, TF32 off for matmul and cuDNN"),
    Precision("fp16", torch.float16, True,
              "torch.amp.autocast to float16 with a torch.amp.GradScaler; weights stay fp32",
              native_on_cpu=("avx512_fp16", "amx_fp16")),
    Precision("bf16", torch.bfloat16, False,
              "autocast to bfloat16, no scaler (its exponent range is fp32's); weights stay fp32",
              native_on_cpu=("avx512_bf16", "amx_bf16")),
)}
NAMES = tuple(PRECISIONS)
BASELINE = "fp32"


def use_true_fp32() -> None:
    """Turn TF32 off everywhere, so fp32 means 23 mantissa bits in every matmul and conv."""
    # The flag-per-backend API, not `torch.backends.fp32_precision`: with the
    # newer one set, torch.export (used by mlflow.pytorch.log_model) fails in
    # torch 2.14 with "a mix of the legacy and new APIs".
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


class PrecisionPolicy:
    """What one precision does to a training step on one device type.

    Constructing it sets the process's float32 matmul precision (TF32 off), so
    every stage that builds a policy computes fp32 the same way.

    Nothing here waits for the device: whether the GradScaler skipped a step
    stays a tensor on the device (the fused optimizer takes the scale and the
    overflow flag as tensors), for the caller to read when it chooses.
    """

    def __init__(self, name: str, device_type: str):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(NAMES)}, got {name!r}")
        self.precision = PRECISIONS[name]
        self.device_type = device_type  # "cpu" or "cuda"
        self.scaler = torch.amp.GradScaler(device_type, enabled=self.precision.loss_scaling)
        use_true_fp32()

    @property
    def name(self) -> str:
        return self.precision.name

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self.precision.autocast_dtype

    def autocast(self) -> AbstractContextManager:
        """The context to run forward passes (and the loss) in."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.amp.autocast(self.device_type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """Step the optimizer, through the GradScaler where there is one.

        Returns whether the scaler skipped the step for overflowing gradients,
        as a 0-dim tensor on the device (no wait), or None without a scaler.
        """
        if not self.scaler.is_enabled():
            optimizer.step()
            return None
        self.scaler.step(optimizer)
        # The overflow flags the scaler computed for this step, before update() clears them.
        skipped = sum(self.scaler._found_inf_per_device(optimizer).values()) > 0
        self.scaler.update()
        return skipped

    def scale(self) -> float | None:
        """The GradScaler's current loss scale (waits for the device), or None."""
        return self.scaler.get_scale() if self.scaler.is_enabled() else None

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state["scaler"])
