"""The policy that owns everything a precision does to a step.

`PrecisionPolicy` plays the part of Lightning's `MixedPrecision` plugin: the
training loop asks it for the autocast context, the backward pass and the
optimizer step, and checkpoints its state; it never looks at the precision's
name itself, only at its entry in `precision_table.PRECISIONS`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from mnist_precision.base.errors import UserError
from mnist_precision.base.precision_table import FP8_DIVISOR, NAMES, PRECISIONS, parse_loss_scale
from mnist_precision.core.internals import PYTREE_LOGGER, scaler_scale, scaler_skipped


class PrecisionError(UserError, ValueError):
    """A precision this installation cannot run."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype the precision table names ("float16": torch.float16)."""
    return getattr(torch, name)


@contextmanager
def fp32_matmul_precision(tf32: bool) -> Iterator[None]:
    """TF32 on or off for every matmul and conv while the block runs (off, fp32
    means 23 mantissa bits), and the process's previous flags back after it."""
    # The flag-per-backend API, not `torch.backends.fp32_precision`: with the
    # newer one set, torch.export (used by mlflow.pytorch.log_model) fails with
    # "a mix of the legacy and new APIs".
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, matmul = before
        torch.set_float32_matmul_precision(matmul)


def fp8_kept_layers(model: nn.Module) -> list[str]:
    """The linear layers that float8 training cannot take (a dimension not a
    multiple of FP8_DIVISOR): they stay under the run's bf16 autocast."""
    return [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and (module.in_features % FP8_DIVISOR or module.out_features % FP8_DIVISOR)
    ]


def torchao_float8():
    """torchao's float8 training API, or an error that says how to install it."""
    # torchao 0.18 registers an Enum with torch's pytree at import, which torch
    # 2.14 answers with a logged deprecation warning addressed to torchao, not
    # to this project's users: that one logger is quiet while it imports.
    pytree_log = logging.getLogger(PYTREE_LOGGER)
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise PrecisionError(
            "precision fp8 needs torchao, which is not installed: pip install 'mnist-precision[fp8]'"
        ) from None
    finally:
        pytree_log.setLevel(level)
    return Float8LinearConfig, convert_to_float8_training


class PrecisionPolicy:
    """What one precision does to a training step on one device type.

    Constructing it changes no process-wide state: a stage runs its work in
    `policy.numerics()`, which sets the float32 matmul precision (TF32 on for
    `tf32` only) and puts the previous one back.

    Nothing here waits for the device: whether the GradScaler skipped a step
    stays a tensor on the device (the fused optimizer takes the scale and the
    overflow flag as tensors), for the caller to read when it chooses.

    `loss_scale` (fp16 only): `dynamic` is the GradScaler; `none` turns it off
    (the ablation); a number is a fixed scale: the GradScaler still unscales
    and skips steps that overflow, but never changes the scale.
    """

    def __init__(self, name: str, device_type: str, loss_scale: str | float = "dynamic"):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(NAMES)}, got {name!r}")
        self.precision = PRECISIONS[name]
        self.device_type = device_type  # "cpu" or "cuda"
        self.loss_scale = parse_loss_scale(loss_scale)
        if self.loss_scale != "dynamic" and not self.precision.loss_scaling:
            raise ValueError(f"loss_scale applies to fp16 only, not {name}: {self.precision.no_loss_scale_because}")
        scaling = self.precision.loss_scaling and self.loss_scale != "none"
        self.fixed_scale = (
            torch.full((), self.loss_scale, device=device_type) if isinstance(self.loss_scale, float) else None
        )
        init_scale = self.loss_scale if isinstance(self.loss_scale, float) else 2.0**16
        self.scaler = torch.amp.GradScaler(device_type, init_scale=init_scale, enabled=scaling)

    @property
    def name(self) -> str:
        return self.precision.name

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        name = self.precision.autocast_dtype
        return torch_dtype(name) if name else None

    @property
    def param_dtype(self) -> torch.dtype:
        return torch_dtype(self.precision.param_dtype)

    def convert_module(self, model: nn.Module) -> nn.Module:
        """The model as this precision trains it, converted in place: weights in
        half for the "-true" precisions; float8 linear layers for fp8 (through
        torchao, emulated off CUDA). Call it before making the optimizer."""
        if self.precision.fp8:
            Float8LinearConfig, convert_to_float8_training = torchao_float8()
            kept = set(fp8_kept_layers(model))
            convert_to_float8_training(
                model,
                config=Float8LinearConfig(emulate=self.device_type != "cuda"),
                module_filter_fn=lambda module, name: type(module) is nn.Linear and name not in kept,
            )
        return model.to(self.param_dtype)

    def convert_input(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.param_dtype)

    def numerics(self) -> AbstractContextManager:
        """The context a stage trains or evaluates in: fp32 matmuls as this precision computes them."""
        return fp32_matmul_precision(self.precision.tf32)

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
        skipped = scaler_skipped(self.scaler, optimizer)  # before update() clears the flags
        self.scaler.update(new_scale=self.fixed_scale)
        return skipped

    def scale_tensor(self) -> torch.Tensor | None:
        """A copy of the loss scale as a 0-dim device tensor (no wait), or None
        without a scaler; after `backward`, the scale the step uses."""
        return scaler_scale(self.scaler) if self.scaler.is_enabled() else None

    def scale(self) -> float | None:
        """The GradScaler's current loss scale (waits for the device), or None."""
        return self.scaler.get_scale() if self.scaler.is_enabled() else None

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state["scaler"])
