"""The precisions this project trains in, as data: one entry of `PRECISIONS` each.

Params validation, the report's order, the device checks and the benchmark
read this table, so adding a precision is one entry here (and its behaviour
in `precision.PrecisionPolicy`). Dtypes are named, not imported, so that
reading params needs no `import torch`, the slowest part of a stage's start.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    name: str
    autocast_dtype: str | None  # a torch dtype's name; None: no autocast
    loss_scaling: bool  # a GradScaler keeps small gradients from flushing to zero
    summary: str
    # CPU instruction sets (as /proc/cpuinfo names them), any of which runs its
    # matrix products natively; empty: every CPU does.
    native_on_cpu: tuple[str, ...] = ()
    # The dtype of the weights, their gradients and the optimizer: fp32 master
    # weights for the mixed precisions, half for the "-true" ones.
    param_dtype: str = "float32"
    # Each update computed in fp32 and rounded to `param_dtype` stochastically
    # (expected value: the exact update), not to the nearest value.
    stochastic_rounding: bool = False
    tf32: bool = False  # fp32 matmuls and convolutions through TF32 tensor cores
    fp8: bool = False  # torchao's float8 training for the linear layers that fit it
    # The oldest NVIDIA GPU that runs it, as a compute capability; None: any device.
    needs_cuda_capability: tuple[int, int] | None = None
    # Why `loss_scale` does not apply (every precision but fp16).
    no_loss_scale_because: str = ""

    @property
    def compute_dtype(self) -> str:
        """The narrowest dtype the forward pass computes in (fp8's: its forward format)."""
        if self.fp8:
            return "float8_e4m3fn"
        return self.autocast_dtype or self.param_dtype

    @property
    def data_parallel_verified(self) -> bool:
        """Whether DDP runs of it are tested (the "-true" precisions' gradients
        are half already, and fp8 runs only on a GPU: neither is yet)."""
        return self.param_dtype == "float32" and not self.fp8


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision(
            "fp32",
            None,
            False,
            "true single precision: no autocast, TF32 off for matmul and cuDNN",
            no_loss_scale_because="fp32's gradients are not half precision",
        ),
        Precision(
            "fp16",
            "float16",
            True,
            "torch.amp.autocast to float16 with a torch.amp.GradScaler; weights stay fp32",
            native_on_cpu=("avx512_fp16", "amx_fp16"),
        ),
        Precision(
            "bf16",
            "bfloat16",
            False,
            "autocast to bfloat16, no scaler (its exponent range is fp32's); weights stay fp32",
            native_on_cpu=("avx512_bf16", "amx_bf16"),
            no_loss_scale_because="bf16's exponent range is fp32's: its gradients do not underflow "
            "where fp32's would not",
        ),
        Precision(
            "fp16-true",
            None,
            False,
            "the model, its gradients and the optimizer all in float16: no fp32 master weights, no scaler",
            native_on_cpu=("avx512_fp16", "amx_fp16"),
            param_dtype="float16",
            no_loss_scale_because="it has no fp32 master weights to unscale the gradients into "
            "(Lightning's 16-true has no scaler either); use fp16 for a loss scale",
        ),
        Precision(
            "bf16-true",
            None,
            False,
            "the model, its gradients and the optimizer all in bfloat16: no fp32 master weights",
            native_on_cpu=("avx512_bf16", "amx_bf16"),
            param_dtype="bfloat16",
            no_loss_scale_because="bf16's exponent range is fp32's: its gradients do not underflow "
            "where fp32's would not",
        ),
        Precision(
            "fp16-true-sr",
            None,
            False,
            "as fp16-true, but each update computed in fp32 and rounded to float16 stochastically",
            native_on_cpu=("avx512_fp16", "amx_fp16"),
            param_dtype="float16",
            stochastic_rounding=True,
            no_loss_scale_because="it has no fp32 master weights to unscale the gradients into; "
            "use fp16 for a loss scale",
        ),
        Precision(
            "bf16-true-sr",
            None,
            False,
            "as bf16-true, but each update computed in fp32 and rounded to bfloat16 stochastically",
            native_on_cpu=("avx512_bf16", "amx_bf16"),
            param_dtype="bfloat16",
            stochastic_rounding=True,
            no_loss_scale_because="bf16's exponent range is fp32's: its gradients do not underflow "
            "where fp32's would not",
        ),
        Precision(
            "tf32",
            None,
            False,
            "fp32 with TF32 tensor-core matmuls and convolutions (10 mantissa bits in the products)",
            tf32=True,
            needs_cuda_capability=(8, 0),
            no_loss_scale_because="TF32 keeps fp32's exponent range",
        ),
        Precision(
            "fp8",
            "bfloat16",
            False,
            "torchao float8 training of the linear layers (e4m3 forward, e5m2 gradients, "
            "scaled per tensor); the rest under bf16 autocast",
            fp8=True,
            needs_cuda_capability=(8, 9),
            no_loss_scale_because="torchao scales each float8 tensor itself",
        ),
    )
}
NAMES = tuple(PRECISIONS)
BASELINE = "fp32"
LOSS_SCALES = ("dynamic", "none")  # or a fixed positive number
# float8 matmuls (torch._scaled_mm) need both dimensions of the weight divisible by 16.
FP8_DIVISOR = 16


def parse_loss_scale(value: str | float) -> str | float:
    """`dynamic`, `none` or a fixed positive number; ValueError otherwise."""
    if value in LOSS_SCALES:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"loss_scale must be dynamic, none or a positive number, got {value!r}")
    return float(value)
