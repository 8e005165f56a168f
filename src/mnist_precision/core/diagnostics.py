"""The numerics of training, measured on sampled steps: why each precision behaves as it does.

On every `every_steps`-th step, around the real step:

- **Underflow.** Of the values that are non-zero in fp32, the share whose
  magnitude is below fp16's smallest subnormal (2^-24: flushed to zero) and
  below its smallest normal (2^-14: precision lost), for the weights, the
  weight gradients and the activation gradients (a hook on each layer's
  output); the gradients without and with the run's loss scale. They are
  measured on an fp32 replica of the step (the same weights, the same batch),
  as Micikevicius et al. 2018 (Mixed Precision Training, Figure 3) measured
  them on fp32 training: the values before any rounding to half precision.
- **Lost updates.** The share of weights whose update was non-zero (plain
  SGD: a non-zero gradient, in a step the scaler did not skip) but left the
  stored weight unchanged after rounding: why mixed precision keeps fp32
  master weights.
- **Loss scale.** The GradScaler's scale after each sampled step (1 without one).
- **The update, against fp32's.** Where no loss scale is in the gradients:
  an fp32 shadow of the step (the same weights, the optimizer's state
  widened to fp32, the same gradients) gives the update fp32 arithmetic
  makes. The update bias is the applied update's shortfall along it
  (-1: every update lost, as round-to-nearest loses the small ones; about 0
  under stochastic rounding); the weight drift is how far the stored weights
  end from the shadow's, relative to the update. The shadow starts from the
  stored weights at each sampled step: a one-step drift, not one carried
  across the run. For AdamW, the share of the shadow's second moment that
  the stored dtype flushes to zero or keeps only as a subnormal.
- **Range.** Per layer, the largest absolute activation and activation
  gradient (times the loss scale, as the run holds it), to set against the
  compute dtype's largest finite value.

Every figure stays a tensor on the device until the epoch ends: sampling adds
no wait for a GPU within an epoch. The replica pass changes nothing in the
run: a run with diagnostics ends with the same weights, bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_precision.base import names

FP16_SMALLEST_SUBNORMAL = 2.0**-24  # below it, fp16 flushes to zero
FP16_SMALLEST_NORMAL = 2.0**-14  # below it, fp16 keeps fewer than 11 significant bits
HISTOGRAM_EXPONENTS = (-64, 16)  # floor(log2 |x|) bins of the histogram, both ends inclusive


@dataclass
class Histogram:
    """The activation gradients of one sampled step by floor(log2 |x|), from `first_exponent` on."""

    first_exponent: int
    counts: list[int]
    loss_scale: float


@dataclass
class EpochNumerics:
    """One epoch's figures (named as in `metrics`), the loss scale of each
    sampled step ([step, scale]), and the last sampled step's histogram."""

    figures: dict[str, float] = field(default_factory=dict)
    loss_scales: list[list[float]] = field(default_factory=list)
    histogram: Histogram | None = None

    @classmethod
    def from_dict(cls, state: dict) -> EpochNumerics:
        """Back from `dataclasses.asdict` (a checkpoint holds plain dicts)."""
        histogram = state["histogram"]
        return cls(state["figures"], state["loss_scales"], Histogram(**histogram) if histogram else None)


def underflow_counts(values: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """[non-zero, below 2^-24, below 2^-14] counts of `values` (times `scale`),
    as an int64 device tensor; values that are zero in fp32 are not counted."""
    magnitude = values.detach().float().abs()
    scaled = magnitude * scale
    nonzero = magnitude > 0
    return torch.stack(
        [
            nonzero.sum(),
            (nonzero & (scaled < FP16_SMALLEST_SUBNORMAL)).sum(),
            (nonzero & (scaled < FP16_SMALLEST_NORMAL)).sum(),
        ]
    )


def lost_update_counts(before: torch.Tensor, after: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """[updates intended, updates lost]: weights with a non-zero gradient (plain
    SGD's update is -lr * gradient), and those of them left unchanged."""
    intended = gradient != 0
    return torch.stack([intended.sum(), (intended & (after == before)).sum()])


def gradient(tensor: torch.Tensor) -> torch.Tensor:
    """The gradient backward() just gave `tensor` (every tensor measured here takes part in the loss)."""
    assert tensor.grad is not None, "no gradient: the tensor took no part in the loss"
    return tensor.grad


def log2_histogram(values: torch.Tensor) -> torch.Tensor:
    """Counts of the non-zero magnitudes by floor(log2 |x|), over HISTOGRAM_EXPONENTS
    (values outside fall in the end bins)."""
    low, high = HISTOGRAM_EXPONENTS
    magnitude = values.detach().float().abs()
    _, exponent = torch.frexp(magnitude[magnitude > 0])  # x = m * 2**e, 0.5 <= m < 1
    return torch.bincount((exponent - 1).clamp(low, high) - low, minlength=high - low + 1)


def update_sums(before: torch.Tensor, after: torch.Tensor, shadow: torch.Tensor) -> torch.Tensor:
    """[sum(sign(u) * (a - u)), sum(|u|), |stored - shadow|^2, |u|^2] for the
    applied update a = after - before and the intended one u = shadow - before."""
    intended, applied = shadow - before.float(), after.float() - before.float()
    miss = applied - intended
    return torch.stack(
        [(intended.sign() * miss).sum(), intended.abs().sum(), miss.square().sum(), intended.square().sum()]
    ).double()


def stored_underflow_counts(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[non-zero, 0 in `dtype`, below `dtype`'s smallest normal] counts of the fp32 `values`."""
    nonzero = values != 0
    stored = values.to(dtype)
    return torch.stack(
        [
            nonzero.sum(),
            (nonzero & (stored == 0)).sum(),
            (nonzero & (values.abs() < torch.finfo(dtype).smallest_normal)).sum(),
        ]
    )


def share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


class Diagnostics:
    """The measurements of one run: `sample` on the steps `due` says, `end_epoch` once an epoch."""

    def __init__(
        self,
        reference: nn.Module,
        every_steps: int,
        shadow_optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None,
        optimizer_state: Callable[[object], dict] | None = None,
        eps_survives: bool | None = None,
    ):
        """`shadow_optimizer` builds the run's optimizer over fp32 tensors, and
        `optimizer_state` reads the run's optimizer's torch.optim state_dict:
        with both, the update is measured against fp32's. `eps_survives`: for
        AdamW, whether its eps is non-zero where it is added."""
        # An fp32 copy of the network's architecture: the replica of each sampled step.
        self.reference, self.every_steps = reference, every_steps
        self.shadow_optimizer, self.optimizer_state, self.eps_survives = shadow_optimizer, optimizer_state, eps_survives
        self.layers = [name for name, module in reference.named_children()]
        self._outputs: dict[str, torch.Tensor] = {}
        for name, module in reference.named_children():
            module.register_forward_hook(self._keep_output(name))
        self.reset()

    def _keep_output(self, name: str):
        def hook(module, inputs, output):
            output.retain_grad()
            self._outputs[name] = output

        return hook

    def reset(self) -> None:
        self.sampled = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.scales: list[tuple[int, torch.Tensor]] = []
        # The activation gradients' log2 histogram of the last sampled step, and its loss scale.
        self.histogram: tuple[torch.Tensor, torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    @staticmethod
    def snapshot(model: nn.Module) -> list[torch.Tensor]:
        """The weights before the step, as stored."""
        return [parameter.detach().clone() for parameter in model.parameters()]

    def measure(
        self, step, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, global_count: int | None, number: int
    ):
        """Run the training step `step` (a `training.TrainStep`) on the batch
        and measure it as step `number`; returns what the step returns."""
        before, used_scale, optimizer_state = self.snapshot(model), [], []

        def before_update() -> None:
            used_scale.append(step.policy.scale_tensor())
            if self.optimizer_state is not None and used_scale[0] is None:  # gradients the update uses as they are
                optimizer_state.append(copy.deepcopy(self.optimizer_state(step.optimizer)))

        result = step(images, labels, global_count, before_update=before_update)
        gradients = [parameter.grad for parameter in model.parameters()]
        self.sample(model, before, images, labels, number, used_scale[0], result[2])
        if optimizer_state:
            self.sample_update(model, before, gradients, optimizer_state[0])
        return result

    def sample_update(
        self, model: nn.Module, before: list[torch.Tensor], gradients: list[torch.Tensor | None], optimizer_state: dict
    ) -> None:
        """The step's update against the fp32 shadow's, from the same weights,
        optimizer state (as it was before the step) and gradients."""
        assert self.shadow_optimizer is not None  # given with optimizer_state (see __init__)
        shadow: list[torch.Tensor] = list(self.reference.parameters())
        with torch.no_grad():
            for weight, old, gradient in zip(shadow, before, gradients, strict=True):
                weight.copy_(old)
                weight.grad = None if gradient is None else gradient.float()
        optimizer = self.shadow_optimizer(shadow)
        optimizer.load_state_dict(optimizer_state)
        optimizer.step()
        stored = next(model.parameters()).dtype
        for weight, old, parameter in zip(shadow, before, model.parameters(), strict=True):
            self._add("update", update_sums(old, parameter.detach(), weight.detach()))
            moment = optimizer.state[weight].get("exp_avg_sq")
            if moment is not None:
                self._add("second_moment", stored_underflow_counts(moment, stored))

    def _add(self, key: str, value: torch.Tensor, reduce: str = "sum") -> None:
        if key not in self.sums:
            self.sums[key] = value.clone()
        elif reduce == "sum":
            self.sums[key] += value
        else:
            torch.maximum(self.sums[key], value, out=self.sums[key])

    def sample(
        self,
        model: nn.Module,
        before: list[torch.Tensor],
        images: torch.Tensor,
        labels: torch.Tensor,
        step: int,
        scale: torch.Tensor | None,
        skipped: torch.Tensor | None,
    ) -> None:
        """Measure the step that took the weights from `before` to `model`'s, on
        `images`, under the loss scale `scale` (None: no scaler)."""
        scale = scale if scale is not None else torch.ones((), device=images.device)
        self.sampled += 1
        self.scales.append((step, scale))
        not_skipped = ~skipped if skipped is not None else torch.ones((), dtype=torch.bool, device=images.device)
        for parameter, old in zip(model.parameters(), before, strict=True):
            if parameter.grad is not None:
                self._add("lost_updates", lost_update_counts(old, parameter.detach(), parameter.grad) * not_skipped)

        # The fp32 replica of the step: the same weights and batch, before any rounding to half.
        with torch.no_grad():
            for weight, old in zip(self.reference.parameters(), before, strict=True):
                weight.copy_(old)
        self.reference.zero_grad(set_to_none=True)
        F.cross_entropy(self.reference(images.float()), labels).backward()
        for weight in self.reference.parameters():
            self._add("weights", underflow_counts(weight))
            self._add("weight_grads", underflow_counts(gradient(weight)))
            self._add("weight_grads_scaled", underflow_counts(gradient(weight), scale))
        for name in self.layers:
            output = self._outputs[name]
            self._add("act_grads", underflow_counts(gradient(output)))
            self._add("act_grads_scaled", underflow_counts(gradient(output), scale))
            self._add(names.range_act_max(name), output.detach().abs().max(), reduce="max")
            self._add(names.range_grad_max(name), gradient(output).abs().max() * scale, reduce="max")
        self.histogram = (
            log2_histogram(torch.cat([gradient(self._outputs[name]).flatten() for name in self.layers])),
            scale,
        )
        self._outputs.clear()

    def end_epoch(self) -> EpochNumerics:
        """The epoch's figures (pooled over its sampled steps), and a fresh start for the next."""
        record = EpochNumerics(self.figures_so_far(), self.loss_scales())
        if self.histogram is not None:
            counts, scale = self.histogram
            record.histogram = Histogram(HISTOGRAM_EXPONENTS[0], counts.tolist(), scale.item())
        self.reset()
        return record

    def loss_scales(self) -> list[list[float]]:
        scales = torch.stack([scale for _, scale in self.scales]).tolist() if self.scales else []
        return [[step, value] for (step, _), value in zip(self.scales, scales, strict=True)]

    def figures_so_far(self) -> dict[str, float]:
        """The figures of the epoch in progress, pooled over its sampled steps so far."""
        # One read of the device for all the sums (counts stay exact in float64 below 2^53).
        flat = torch.cat([value.reshape(-1).double() for value in self.sums.values()]).tolist() if self.sums else []
        sums: dict[str, Any] = {}  # a float for a 0-dim sum, else a list
        at = 0
        for key, value in self.sums.items():
            sums[key] = flat[at] if value.dim() == 0 else flat[at : at + value.numel()]
            at += value.numel()
        figures: dict[str, float] = {names.SAMPLED_STEPS: self.sampled}
        for values in names.UNDERFLOW_VALUES:
            for scaled in (False, True):
                key = f"{values}_scaled" if scaled else values
                if key in sums:
                    nonzero, flushed, subnormal = sums[key]
                    figures[names.underflow(values, "flushed", scaled)] = share(flushed, nonzero)
                    figures[names.underflow(values, "subnormal", scaled)] = share(subnormal, nonzero)
        if "lost_updates" in sums:
            intended, lost = sums["lost_updates"]
            figures[names.LOST_UPDATES] = share(lost, intended)
        if "update" in sums:
            shortfall, size, miss_squared, size_squared = sums["update"]
            figures[names.UPDATE_BIAS] = share(shortfall, size)
            figures[names.WEIGHT_DRIFT] = share(miss_squared, size_squared) ** 0.5
        if "second_moment" in sums:
            nonzero, flushed, subnormal = sums["second_moment"]
            figures[names.SECOND_MOMENT_FLUSHED] = share(flushed, nonzero)
            figures[names.SECOND_MOMENT_SUBNORMAL] = share(subnormal, nonzero)
        if self.eps_survives is not None:
            figures[names.ADAMW_EPS_SURVIVES] = float(self.eps_survives)
        return figures | {key: value for key, value in sums.items() if key.startswith(names.RANGE_PREFIX)}

    def state_dict(self) -> dict:
        """The sums of the epoch in progress (for a checkpoint)."""
        return {
            "sampled": self.sampled,
            "sums": dict(self.sums),
            "scales": list(self.scales),
            "histogram": self.histogram,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sampled, self.sums = state["sampled"], dict(state["sums"])
        self.scales, self.histogram = list(state["scales"]), state["histogram"]


def epoch_rows(by_epoch: dict[int, EpochNumerics]) -> list[dict]:
    """DVC plot rows, one per epoch that measured its numerics: every field of
    `names.EPOCH_NUMERICS` and the underflow shares, null where not measured."""
    fields = names.EPOCH_NUMERICS + tuple(
        names.underflow(values, below, scaled)
        for values in names.UNDERFLOW_VALUES
        for below in names.UNDERFLOW_BELOW
        for scaled in (False, True)
    )
    unmeasured = dict.fromkeys(fields)
    return [{names.PLOT_EPOCH: epoch, **unmeasured, **numerics.figures} for epoch, numerics in by_epoch.items()]


def loss_scale_rows(by_epoch: dict[int, EpochNumerics]) -> list[dict]:
    return [
        {names.PLOT_STEP: step, names.LOSS_SCALE: scale}
        for numerics in by_epoch.values()
        for step, scale in numerics.loss_scales
    ]


def histogram_rows(by_epoch: dict[int, EpochNumerics]) -> list[dict]:
    """The activation gradients of the run's last sampled step, as the share of
    non-zero values in each power-of-two bin (Micikevicius et al., Figure 3)."""
    last = next((numerics.histogram for numerics in reversed(by_epoch.values()) if numerics.histogram), None)
    if last is None:
        return []
    total = sum(last.counts) or 1
    return [
        {
            names.PLOT_LOG2_MAGNITUDE: last.first_exponent + i,
            names.PLOT_SHARE: count / total,
            names.LOSS_SCALE: last.loss_scale,
        }
        for i, count in enumerate(last.counts)
    ]
