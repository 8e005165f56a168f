"""The training loop: the reference recipe (SGD or AdamW) under a precision policy.

`TrainState` holds everything that a resumed run needs (PyTorch's
`state_dict` convention), `run_epoch` runs one epoch of steps, and `train`
runs the epochs. What precision does to a step belongs to the policy
(`precision.PrecisionPolicy`), never to the loop.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnist_precision.base import names
from mnist_precision.base.errors import UserError
from mnist_precision.base.interrupts import StopRequest
from mnist_precision.base.params import TrainParams
from mnist_precision.core.data import Split, shuffled_batches
from mnist_precision.core.diagnostics import Diagnostics, EpochNumerics
from mnist_precision.core.distributed import World
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import (
    SGD,
    OptimizerChoice,
    eps_warning,
    flushed_second_moments,
    make_optimizer,
    torch_optimizer,
    torch_state,
)
from mnist_precision.core.precision import PrecisionPolicy

# The documented points where the loop waits for the device: reading the loss
# for the divergence check and the progress bar, every SYNC_EVERY steps on a
# GPU (every step on the CPU, where reading it costs nothing) and at the end
# of each epoch; and the epoch's loss, accuracy and skipped-step count, once
# per epoch. Nothing else in a step reads a tensor back.
SYNC_EVERY = 50


class DivergenceError(UserError, RuntimeError):
    def __init__(self, epoch: int, step: int, loss: float, causes: tuple[str, ...] = ()):
        seen = f"; the numerics show {'; '.join(causes)}" if causes else "; lower train.lr"
        super().__init__(f"training diverged: the loss became {loss} at step {step} (epoch {epoch}){seen}")
        self.epoch, self.step, self.loss, self.causes = epoch, step, loss, causes

    def because(self, causes: tuple[str, ...]) -> DivergenceError:
        """The same divergence, naming the numeric causes the run saw."""
        return DivergenceError(self.epoch, self.step, self.loss, causes) if causes else self


# A loss scale below this has collapsed: the GradScaler halved it on overflow after overflow.
COLLAPSED_SCALE = 1.0


def numeric_causes(
    policy: PrecisionPolicy, choice: OptimizerChoice, optimizer, diagnostics: Diagnostics | None
) -> tuple[str, ...]:
    """What the numerics saw that makes a run diverge, each with its fix: from
    the optimizer's state as it stands, and the diagnostics' sampled steps."""
    causes = []
    eps = eps_warning(choice, policy)
    if eps:
        causes.append(f"AdamW's eps flushed to zero ({eps})")
    figures = diagnostics.figures_so_far() if diagnostics is not None else {}
    stalled = flushed_second_moments(optimizer) if policy.param_dtype != torch.float32 else 0.0
    if stalled or figures.get(names.SECOND_MOMENT_FLUSHED):
        seen = (
            f"{stalled:.1%} of the weights with a first moment have a second moment of 0 in "
            f"{policy.precision.param_dtype}, so their update is m / eps"
            if stalled
            else f"{figures[names.SECOND_MOMENT_FLUSHED]:.1%} of its non-zero values flushed to zero "
            "on the sampled steps"
        )
        causes.append(
            f"AdamW's second moment underflowed ({seen}): use a mixed precision, whose optimizer state "
            f"is fp32, or a train.eps that bounds the update, such as "
            f"{torch.finfo(policy.param_dtype).smallest_normal:.3g}"
        )
    scale = policy.scale()
    if scale is not None and scale < COLLAPSED_SCALE:
        causes.append(
            f"the loss scale collapsed to {scale:g}: the gradients overflow fp16 even unscaled; "
            f"lower train.lr or use bf16"
        )
    return tuple(causes)


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    accuracy: float
    seconds: float
    skipped_steps: int
    diagnostics: EpochNumerics | None = None  # None: diagnostics off

    @classmethod
    def from_dict(cls, state: dict) -> EpochRecord:
        """Back from `dataclasses.asdict` (a checkpoint holds plain dicts)."""
        numerics = state["diagnostics"]
        return cls(**state | {"diagnostics": EpochNumerics.from_dict(numerics) if numerics else None})

    def plot_row(self) -> dict[str, float]:
        """Its row of the DVC plot file of loss and accuracy per epoch."""
        return {
            names.PLOT_EPOCH: self.epoch,
            names.PLOT_LOSS: self.loss,
            names.PLOT_ACCURACY: self.accuracy,
            names.PLOT_SECONDS: self.seconds,
            names.PLOT_SKIPPED_STEPS: self.skipped_steps,
        }


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

    def figures(self) -> dict[str, float]:
        """The run's figures, beside its per-epoch ones; the loss scale's with a GradScaler."""
        figures = {names.SAMPLES_PER_S: self.samples_per_s, names.TRAIN_SECONDS: self.seconds}
        if self.final_scale is not None:
            figures |= {names.GRAD_SCALE_FINAL: self.final_scale, names.SKIPPED_STEPS: self.skipped_steps}
        return figures


def batch_loss(logits: torch.Tensor, labels: torch.Tensor, world: World, global_count: int) -> torch.Tensor:
    """Cross-entropy. On one of several ranks, its share's summed loss over the
    global batch's count: DDP's average of the ranks' gradients is then the
    gradient of the mean loss over the whole global batch."""
    if not world.distributed:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") * (world.size / global_count)


class TrainStep:
    """One optimizer step under a precision policy: the unit the training loop runs
    and the benchmark times. Returns the logits, the loss and whether the
    GradScaler skipped the update (a device tensor, or None without a scaler).

    In a distributed job the images are this rank's share of a global batch
    of `global_count` samples, and DDP (with the `grad_comm` hook) averages
    the gradients."""

    def __init__(
        self,
        model: nn.Module,
        policy: PrecisionPolicy,
        optimizer: torch.optim.Optimizer,
        compile: bool = False,
        world: World = World(),
        grad_comm: str = "fp32",
    ):
        self.policy, self.optimizer, self.world = policy, optimizer, world
        model = world.wrap(model, grad_comm)
        # On a GPU, "reduce-overhead" replays CUDA graphs: no per-kernel launch cost.
        mode = "reduce-overhead" if policy.device_type == "cuda" else None
        self.forward = torch.compile(model, mode=mode) if compile else model

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        global_count: int | None = None,
        before_update: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`before_update`, if given, is called between the backward pass and the optimizer step."""
        with self.policy.autocast():
            logits = self.forward(self.policy.convert_input(images))
            loss = batch_loss(logits, labels, self.world, global_count or len(labels))
        self.optimizer.zero_grad()
        self.policy.backward(loss)
        if before_update is not None:
            before_update()
        return logits, loss, self.policy.optimizer_step(self.optimizer)


@dataclass
class Progress:
    """Where training stands: finished epochs, and the sums of the epoch in progress."""

    epoch: int = 1  # the epoch in progress (or the next one to start)
    done_in_epoch: int = 0  # its steps already taken
    step: int = 0  # steps taken in all epochs
    epoch_generator_state: torch.Tensor | None = None  # the shuffling generator when the epoch began
    loss_sum: float = 0.0
    correct: int = 0
    skipped: int = 0
    seconds: float = 0.0
    diagnostics: dict | None = None  # Diagnostics.state_dict() of the epoch in progress
    records: list[EpochRecord] = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> Progress:
        return cls(**state | {"records": [EpochRecord.from_dict(record) for record in state["records"]]})


@dataclass
class SavedState:
    """What a checkpoint keeps of a TrainState: each part's own state_dict, and where training stands."""

    model: dict[str, torch.Tensor]
    optimizer: dict
    precision: dict
    progress: Progress

    def as_saved(self) -> dict:
        """The checkpoint file's form: plain dicts, which torch.load reads back with weights_only=True."""
        parts = {"model": self.model, "optimizer": self.optimizer, "precision": self.precision}
        return parts | {"progress": self.progress.state_dict()}

    @classmethod
    def from_saved(cls, saved: dict) -> SavedState:
        progress = Progress.from_state_dict(saved["progress"])
        return cls(saved["model"], saved["optimizer"], saved["precision"], progress)


class TrainState:
    """Everything a resumed run needs to end bitwise where an uninterrupted one would."""

    def __init__(
        self, model: nn.Module, policy: PrecisionPolicy, lr: float, seed: int, optimizer: OptimizerChoice = SGD
    ):
        self.model, self.policy = policy.convert_module(model), policy
        self.optimizer = make_optimizer(model, policy, lr, optimizer, seed)
        self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        self.progress = Progress()

    def saved(self) -> SavedState:
        """A snapshot of the state: the progress copied, the tensors as they are now (saved at once)."""
        progress = Progress.from_state_dict(self.progress.state_dict())
        return SavedState(self.model.state_dict(), self.optimizer.state_dict(), self.policy.state_dict(), progress)

    def restore(self, saved: SavedState) -> None:
        self.model.load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.optimizer)
        self.policy.load_state_dict(saved.precision)
        self.progress = Progress.from_state_dict(saved.progress.state_dict())
        if self.progress.epoch_generator_state is not None:  # None only before the first epoch began
            self.generator.set_state(self.progress.epoch_generator_state)


class Stopped(Exception):
    """Training stopped at a step boundary on request; `checkpoint` continues it."""

    def __init__(self, checkpoint: SavedState, reason: str):
        super().__init__(f"training stopped ({reason}) at step {checkpoint.progress.step}")
        self.checkpoint = checkpoint


class Hooks:
    """What the loop tells the rank that records the job. These defaults do
    nothing: every other rank trains and records nothing."""

    def epoch_ended(self, record: EpochRecord) -> None:
        """After each epoch, with the figures of the whole job."""

    def checkpoint_due(self, state: SavedState) -> None:
        """Every `train.checkpoint_every` epochs but the last: the state to
        continue from (what a stop carries, at the epoch's end)."""


def epoch_length(samples: int, batch_size: int, max_steps: int | None) -> tuple[int, int]:
    """The steps of one epoch and the samples they see: every batch, or the
    first `max_steps` of them (`train.max_steps`, for smoke runs and tests)."""
    steps = math.ceil(samples / batch_size)
    if max_steps is None or max_steps >= steps:
        return steps, samples
    return max_steps, max_steps * batch_size


def epoch_sums(
    progress: Progress, world: World, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The epoch's loss sum, correct count and skipped count, as device tensors.

    The sums stay on the device during the epoch: adding to them does not wait
    for it. A resumed epoch starts from the sums it stopped at, in the same
    dtype, so that it adds up bit for bit as an uninterrupted one. In a
    distributed job each rank sums its shares, and rank 0 carries what was
    summed before a stop (the checkpoint holds the sums of all ranks).
    (torch.full fills on the device; torch.tensor would copy from the host and wait.)
    """
    carried = world.is_main
    return (
        torch.full((), progress.loss_sum if carried else 0.0, dtype=torch.float32, device=device),
        torch.full((), progress.correct if carried else 0, dtype=torch.int64, device=device),
        torch.full((), progress.skipped, dtype=torch.int64, device=device),
    )  # the same on every rank


def with_sums(
    progress: Progress,
    sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    world: World,
    started: float,
    diagnostics: Diagnostics | None,
) -> Progress:
    """`progress` with the epoch's sums read from the device (added over the ranks) and its time so far."""
    loss_sum, correct, skipped = sums
    world.sum_(loss_sum)
    world.sum_(correct)
    return Progress(
        **vars(progress)
        | {
            "loss_sum": loss_sum.item(),
            "correct": int(correct.item()),
            "skipped": int(skipped.item()),
            "seconds": progress.seconds + time.perf_counter() - started,
            "diagnostics": diagnostics.state_dict() if diagnostics is not None else None,
        }
    )


def take_step(
    step: TrainStep,
    diagnostics: Diagnostics | None,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    global_count: int,
    number: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Training step `number`, measured by `diagnostics` where a sample is due."""
    if diagnostics is not None and diagnostics.due(number):
        return diagnostics.measure(step, model, images, labels, global_count, number)
    return step(images, labels, global_count)


def epoch_record(done: Progress, samples: int, diagnostics: Diagnostics | None) -> EpochRecord:
    """The figures of the epoch `done` ended, over the `samples` it saw."""
    return EpochRecord(
        epoch=done.epoch,
        loss=done.loss_sum / samples,
        accuracy=done.correct / samples,
        seconds=done.seconds,
        skipped_steps=done.skipped,
        diagnostics=diagnostics.end_epoch() if diagnostics is not None else None,
    )


def run_epoch(
    state: TrainState,
    step: TrainStep,
    data: Split,
    batch_size: int,
    epochs: int,
    stop: StopRequest | None = None,
    diagnostics: Diagnostics | None = None,
    max_steps: int | None = None,
) -> EpochRecord:
    """Run the rest of the epoch `state.progress.epoch` (its first `max_steps`
    steps, where set); raise `Stopped` (after a whole step, at the same step on
    every rank) when `stop` is set. `diagnostics` measures the steps it says
    are due (rank 0's share of them)."""
    progress, device, world = state.progress, data.images.device, step.world
    if progress.done_in_epoch == 0:
        progress.epoch_generator_state = state.generator.get_state()
    elif diagnostics is not None and progress.diagnostics is not None:
        diagnostics.load_state_dict(progress.diagnostics)
    started = time.perf_counter()
    sums = loss_sum, correct, skipped = epoch_sums(progress, world, device)

    steps_per_epoch, samples = epoch_length(len(data), batch_size, max_steps)
    # Reading the loss waits for the device: free on the CPU, a stall on a GPU.
    check_every = 1 if device.type == "cpu" else SYNC_EVERY
    batches = itertools.islice(
        shuffled_batches(data, batch_size, state.generator), progress.done_in_epoch, steps_per_epoch
    )
    with tqdm(
        batches,
        total=steps_per_epoch,
        initial=progress.done_in_epoch,
        leave=False,
        unit="step",
        desc=f"{state.policy.name} epoch {progress.epoch}/{epochs}",
        disable=not world.is_main,
    ) as bar:
        for images, labels in bar:
            if world.any(bool(stop)):  # between two steps: the state is whole
                state.progress = with_sums(progress, sums, world, started, diagnostics)
                raise Stopped(state.saved(), stop.signal_name if stop else "another rank was stopped")
            progress.step += 1
            progress.done_in_epoch += 1
            global_count = len(labels)
            images, labels = world.share(images, labels)
            logits, loss, was_skipped = take_step(
                step, diagnostics, state.model, images, labels, global_count, progress.step
            )
            loss_sum.add_(loss.detach(), alpha=global_count / world.size)  # the loss summed over the share
            correct.add_((logits.argmax(dim=1) == labels).sum())
            if was_skipped is not None:
                skipped.add_(was_skipped)
            if progress.step % check_every == 0 or progress.done_in_epoch == steps_per_epoch:
                check_loss(loss.item(), was_skipped is not None, progress, bar, batch_size)
    done = with_sums(progress, sums, world, started, diagnostics)
    record = epoch_record(done, samples, diagnostics)
    state.progress = Progress(epoch=done.epoch + 1, step=done.step, records=[*done.records, record])
    return record


def check_loss(value: float, scaled: bool, progress: Progress, bar: tqdm, batch_size: int) -> None:
    """Stop on a loss that is no longer finite (where a GradScaler would not
    skip the step instead); every SYNC_EVERY steps, show it on the progress bar."""
    if not math.isfinite(value) and not scaled:
        raise DivergenceError(progress.epoch, progress.step, value)
    if progress.step % SYNC_EVERY == 0:
        bar.set_postfix(
            loss=f"{value:.4f}", refresh=False, samples_s=f"{(bar.format_dict['rate'] or 0) * batch_size:.0f}"
        )


def make_diagnostics(
    params: TrainParams, policy: PrecisionPolicy, optimizer: OptimizerChoice, every_steps: int, device: torch.device
) -> Diagnostics:
    """The numerics of this run, measured on an fp32 replica and an fp32 shadow of its optimizer."""
    return Diagnostics(
        build_mlp(params.hidden).to(device),
        every_steps,
        shadow_optimizer=partial(torch_optimizer, lr=params.lr, choice=optimizer),
        optimizer_state=torch_state,
        eps_survives=eps_warning(optimizer, policy) is None if optimizer.name == "adamw" else None,
    )


def train(
    model: nn.Module,
    data: Split,
    policy: PrecisionPolicy,
    params: TrainParams,
    seed: int,
    *,
    optimizer: OptimizerChoice = SGD,
    world: World = World(),
    hooks: Hooks = Hooks(),
    stop: StopRequest | None = None,
    resume: SavedState | None = None,
    diagnose_every: int = 0,
) -> TrainResult:
    """Train for `params.epochs` epochs, or continue from `resume` (the state
    that `Stopped` carried) so that the end state is the same, bit for bit, as
    if training had never stopped. In a distributed job every rank calls it,
    and every rank gets the records of the whole job. Every `diagnose_every`
    steps (0: never), rank 0 measures the step's numerics (`diagnostics`).
    After each epoch, and every `params.checkpoint_every` epochs but the
    last, it tells `hooks` (see `Hooks`)."""
    state = TrainState(model, policy, params.lr, seed, optimizer)
    if resume is not None:
        state.restore(resume)
    step = TrainStep(model, policy, state.optimizer, compile=params.compile, world=world, grad_comm=params.grad_comm)
    diagnostics = None
    if diagnose_every and world.is_main:
        diagnostics = make_diagnostics(params, policy, optimizer, diagnose_every, data.images.device)
    model.train()
    while state.progress.epoch <= params.epochs:
        try:
            record = run_epoch(state, step, data, params.batch_size, params.epochs, stop, diagnostics, params.max_steps)
        except DivergenceError as error:
            raise error.because(numeric_causes(policy, optimizer, state.optimizer, diagnostics)) from None
        hooks.epoch_ended(record)
        if params.checkpoint_every and record.epoch % params.checkpoint_every == 0 and record.epoch < params.epochs:
            state.progress.epoch_generator_state = state.generator.get_state()  # the next epoch's order
            hooks.checkpoint_due(state.saved())
    samples_per_epoch = epoch_length(len(data), params.batch_size, params.max_steps)[1]
    return TrainResult(samples_per_epoch=samples_per_epoch, epochs=state.progress.records, final_scale=policy.scale())
