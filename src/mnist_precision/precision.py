"""The precision policy, in one place.

- fp32: true single precision. TF32 is off for matmul and cuDNN (float32
  matmul precision "highest"); no autocast.
- fp16: autocast to float16 with a GradScaler, so that small gradients do not
  flush to zero; on the CPU too.
- bf16: autocast to bfloat16. Its exponent range equals fp32's, so no scaler.

Weights and optimizer state stay fp32 in every case: this is mixed precision,
not pure half precision.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class PrecisionPolicy:
    name: str
    device_type: str  # "cpu" or "cuda"

    def __post_init__(self) -> None:
        if self.name not in AUTOCAST_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.name!r}")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES[self.name]

    def autocast(self) -> AbstractContextManager:
        """The context to run forward passes (and the loss) in."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.amp.autocast(self.device_type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (a disabled one passes through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


def use_true_fp32() -> None:
    """Turn TF32 off everywhere, so fp32 means 23 mantissa bits in every matmul and conv."""
    # The flag-per-backend API, not `torch.backends.fp32_precision`: with the
    # newer one set, torch.export (used by mlflow.pytorch.log_model) fails in
    # torch 2.14 with "a mix of the legacy and new APIs".
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
