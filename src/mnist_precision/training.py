"""The training loop: SGD on the reference recipe, under a precision policy."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .data import Split, shuffled_batches
from .errors import UserError
from .precision import PrecisionPolicy

# How often (in steps) the loop waits for the device to report the loss:
# for the progress bar and the divergence check, never on every step.
SYNC_EVERY = 50


class DivergenceError(UserError, RuntimeError):
    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(
            f"training diverged: the loss became {loss} at step {step} (epoch {epoch}); "
            "lower train.lr, or use fp32/bf16 if fp16 overflows"
        )
        self.epoch, self.step, self.loss = epoch, step, loss


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    accuracy: float
    seconds: float
    skipped_steps: int


@dataclass
class TrainResult:
    epochs: list[EpochRecord] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0
    skipped_steps: int = 0
    final_scale: float | None = None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def train(
    model: nn.Module,
    data: Split,
    *,
    policy: PrecisionPolicy,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_epoch: Callable[[EpochRecord], None] = lambda record: None,
) -> TrainResult:
    device = data.images.device
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = policy.grad_scaler()
    generator = torch.Generator(device=device).manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    result = TrainResult()
    step = 0
    model.train()
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        skipped = 0
        bar = tqdm(shuffled_batches(data, batch_size, generator), total=steps_per_epoch,
                   desc=f"{policy.name} epoch {epoch}/{epochs}", unit="step", leave=False)
        for images, labels in bar:
            step += 1
            with policy.autocast():
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if scaler.is_enabled():
                scale = scaler.get_scale()
                scaler.step(optimizer)  # skips the update if the gradients overflowed
                scaler.update()
                skipped += scaler.get_scale() < scale
            else:
                optimizer.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            if step % SYNC_EVERY == 0 or bar.n + 1 == steps_per_epoch:
                value = loss.item()
                if not math.isfinite(value) and not scaler.is_enabled():
                    raise DivergenceError(epoch, step, value)
                bar.set_postfix(loss=f"{value:.4f}", samples_s=f"{(bar.format_dict['rate'] or 0) * batch_size:.0f}",
                               refresh=False)
        seconds = time.perf_counter() - started
        record = EpochRecord(
            epoch=epoch,
            loss=loss_sum.item() / len(data),
            accuracy=correct.item() / len(data),
            seconds=seconds,
            skipped_steps=int(skipped),
        )
        if not math.isfinite(record.loss) and not scaler.is_enabled():
            raise DivergenceError(epoch, step, record.loss)
        result.epochs.append(record)
        result.samples += len(data)
        result.seconds += seconds
        result.skipped_steps += record.skipped_steps
        on_epoch(record)
    if scaler.is_enabled():
        result.final_scale = scaler.get_scale()
    return result
