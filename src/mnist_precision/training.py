"""The training loop: SGD on the reference recipe, under a precision policy."""

from __future__ import annotations

import itertools
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
from .interrupts import StopRequest
from .precision import PrecisionPolicy

# On a GPU, how often (in steps) the loop waits for the device to report the
# loss, for the progress bar and the divergence check; on the CPU, where
# reading it costs nothing, the loss is checked after every step.
SYNC_EVERY = 50


class DivergenceError(UserError, RuntimeError):
    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(
            f"training diverged: the loss became {loss} at step {step} (epoch {epoch}); lower train.lr"
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
    samples_per_epoch: int
    epochs: list[EpochRecord] = field(default_factory=list)
    final_scale: float | None = None

    @property
    def samples(self) -> int:
        return self.samples_per_epoch * len(self.epochs)

    @property
    def seconds(self) -> float:
        return sum(record.seconds for record in self.epochs)

    @property
    def skipped_steps(self) -> int:
        return sum(record.skipped_steps for record in self.epochs)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


class SGD:
    """Plain SGD, `p -= lr * grad`: the reference recipe's optimizer, as one
    multi-tensor update.

    `torch.optim.SGD` computes the same update, bit for bit, but its `step`
    spends about 100 µs in Python (hooks, profiling, capturability checks):
    measured side by side, the batch-64 step runs 12-17% more samples/s
    without it on 2 CPU cores. And
    constructing the first one imports torch._dynamo, 1.2 s of the stage's
    start. GradScaler drives this one as it drives torch's: through
    `param_groups` and `step()`. It keeps no state beyond the learning rate,
    which params.yaml gives: a checkpoint needs nothing of it.
    """

    def __init__(self, params, lr: float):
        self.param_groups = [{"params": list(params), "lr": lr}]

    def zero_grad(self) -> None:
        for param in self.param_groups[0]["params"]:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        params = [param for param in group["params"] if param.grad is not None]
        # One fused kernel per dtype on a GPU; a loop of add_ in C++ on the CPU.
        torch._foreach_add_(params, [param.grad for param in params], alpha=-group["lr"])


class TrainStep:
    """One SGD step under a precision policy: the unit the training loop runs
    and the benchmark times. With fp16, the GradScaler may skip the update
    when the scaled gradients overflow; `__call__` says whether it did."""

    def __init__(self, model: nn.Module, policy: PrecisionPolicy, lr: float, compile: bool = False):
        self.policy = policy
        self.optimizer = SGD(model.parameters(), lr=lr)
        self.scaler = policy.grad_scaler()
        # On a GPU, "reduce-overhead" replays CUDA graphs: no per-kernel launch cost.
        mode = "reduce-overhead" if policy.device_type == "cuda" else None
        self.forward = torch.compile(model, mode=mode) if compile else model

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        with self.policy.autocast():
            logits = self.forward(images)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        if not self.scaler.is_enabled():
            self.optimizer.step()
            return logits, loss, False
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logits, loss, self.scaler.get_scale() < scale


class Stopped(Exception):
    """Training stopped at a step boundary on request; `checkpoint` continues it."""

    def __init__(self, checkpoint: dict, reason: str):
        super().__init__(f"training stopped ({reason}) at step {checkpoint['progress']['step']}")
        self.checkpoint = checkpoint


def train(
    model: nn.Module,
    data: Split,
    *,
    policy: PrecisionPolicy,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    compile: bool = False,
    on_epoch: Callable[[EpochRecord], None] = lambda record: None,
    stop: StopRequest | None = None,
    resume: dict | None = None,
) -> TrainResult:
    """Train for `epochs` epochs, or continue from `resume` (a checkpoint that
    `Stopped` carried) so that the end state is the same, bit for bit, as if
    training had never stopped. When `stop` is set, raise `Stopped` after the
    current step."""
    device = data.images.device
    train_step = TrainStep(model, policy, lr, compile=compile)
    generator = torch.Generator(device=device).manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    # Reading the loss waits for the device: free on the CPU, a stall on a GPU.
    check_every = 1 if device.type == "cpu" else SYNC_EVERY
    result = TrainResult(samples_per_epoch=len(data))
    step, first_epoch, done_in_epoch = 0, 1, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        train_step.scaler.load_state_dict(resume["scaler"])
        progress = resume["progress"]
        generator.set_state(progress["epoch_generator_state"])
        step, first_epoch, done_in_epoch = progress["step"], progress["epoch"], progress["done_in_epoch"]
        result.epochs = [EpochRecord(**record) for record in progress["records"]]
    model.train()
    for epoch in range(first_epoch, epochs + 1):
        started = time.perf_counter()
        epoch_generator_state = generator.get_state()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        skipped, earlier_seconds = 0, 0.0
        batches = shuffled_batches(data, batch_size, generator)
        if resume is not None and epoch == first_epoch:
            loss_sum += progress["loss_sum"].to(device)
            correct += progress["correct"].to(device)
            skipped, earlier_seconds = progress["skipped"], progress["seconds"]
            batches = itertools.islice(batches, done_in_epoch, None)
        else:
            done_in_epoch = 0
        bar = tqdm(batches, total=steps_per_epoch, initial=done_in_epoch,
                   desc=f"{policy.name} epoch {epoch}/{epochs}", unit="step", leave=False)
        for images, labels in bar:
            if stop:  # between two steps: the state is whole
                bar.close()
                raise Stopped({
                    "model": model.state_dict(),
                    "scaler": train_step.scaler.state_dict(),
                    "progress": {
                        "epoch": epoch, "done_in_epoch": done_in_epoch, "step": step,
                        "epoch_generator_state": epoch_generator_state,
                        "loss_sum": loss_sum.cpu(), "correct": correct.cpu(), "skipped": skipped,
                        "seconds": earlier_seconds + time.perf_counter() - started,
                        "records": [vars(record) for record in result.epochs],
                    },
                }, stop.signal_name)
            step += 1
            done_in_epoch += 1
            logits, loss, was_skipped = train_step(images, labels)
            skipped += was_skipped
            loss_sum.add_(loss.detach(), alpha=len(labels))
            correct.add_((logits.argmax(dim=1) == labels).sum())
            if step % check_every == 0 or done_in_epoch == steps_per_epoch:
                value = loss.item()
                if not math.isfinite(value) and not train_step.scaler.is_enabled():
                    raise DivergenceError(epoch, step, value)
                if step % SYNC_EVERY == 0:
                    bar.set_postfix(loss=f"{value:.4f}", refresh=False,
                                    samples_s=f"{(bar.format_dict['rate'] or 0) * batch_size:.0f}")
        seconds = earlier_seconds + time.perf_counter() - started
        record = EpochRecord(epoch=epoch, loss=loss_sum.item() / len(data),
                             accuracy=correct.item() / len(data), seconds=seconds, skipped_steps=skipped)
        result.epochs.append(record)
        on_epoch(record)
    if train_step.scaler.is_enabled():
        result.final_scale = train_step.scaler.get_scale()
    return result
