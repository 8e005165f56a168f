"""The training loop on a small learnable problem: it learns, repeats, and stops on divergence."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from mnist_precision.base.params import TrainParams
from mnist_precision.core.data import Split, batches
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import SGD, OptimizerChoice, make_optimizer
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import DivergenceError, Hooks, SavedState, Stopped, TrainStep, train


def toy_split(n: int = 512) -> Split:
    """Ten well-separated classes in 784 dimensions."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 10, (n,), generator=generator)
    centers = torch.randn(10, 784, generator=generator)
    return Split(images=centers[labels] + 0.5 * torch.randn(n, 784, generator=generator), labels=labels)


class Saving(Hooks):
    """Keeps each state the loop says is due for a checkpoint."""

    def __init__(self, saved: list, copy=lambda state: state):
        self.saved, self.copy = saved, copy

    def checkpoint_due(self, state: SavedState) -> None:
        self.saved.append(self.copy(state))


def recipe(**overrides) -> TrainParams:
    return TrainParams(**dict(epochs=3, batch_size=64, lr=0.01, hidden=(32,), compile=False) | overrides)


def run(precision: str, seed: int = 0, optimizer: OptimizerChoice = SGD, **overrides):
    torch.manual_seed(0)
    model = build_mlp([32])
    result = train(
        model, toy_split(), PrecisionPolicy(precision, "cpu"), recipe(**overrides), seed, optimizer=optimizer
    )
    return model, result


def step_for(model, precision: str, lr: float = 0.05, compile: bool = False) -> TrainStep:
    policy = PrecisionPolicy(precision, "cpu")
    return TrainStep(model, policy, make_optimizer(model, policy, lr), compile=compile)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_every_precision_learns(precision):
    _, result = run(precision)
    assert len(result.epochs) == 3
    assert result.epochs[-1].loss < result.epochs[0].loss
    assert result.epochs[-1].accuracy > 0.9
    assert result.samples == 3 * 512 and result.samples_per_s > 0
    assert (result.final_scale is not None) == (precision == "fp16")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_same_seed_on_cpu_is_bitwise_repeatable(precision):
    first, a = run(precision)
    second, b = run(precision)
    assert [e.loss for e in a.epochs] == [e.loss for e in b.epochs]
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_step_updates_as_plain_torch_sgd(precision):
    """The fused SGD under the policy (and its GradScaler) gives the update of
    the textbook loop with torch.optim.SGD."""
    data = toy_split(256)
    torch.manual_seed(0)
    ours = build_mlp([32])
    step = step_for(ours, precision)
    torch.manual_seed(0)
    textbook = build_mlp([32])
    optimizer = torch.optim.SGD(textbook.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    for images, labels in batches(data, 64):
        step(images, labels)
        optimizer.zero_grad()
        with torch.amp.autocast("cpu", dtype=torch.float16, enabled=precision == "fp16"):
            loss = torch.nn.functional.cross_entropy(textbook(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    for p, q in zip(ours.parameters(), textbook.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    assert not torch.equal(ours[0].weight, build_mlp([32])[0].weight)  # it did train


@pytest.mark.slow  # torch.compile takes about 20 s on 2 cores
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_step_trains_as_the_eager_one(precision):
    """train.compile on the CPU: torch.compile of the model, same losses as eager."""
    data = toy_split(256)
    losses = []
    for compile in (False, True):
        torch.manual_seed(0)
        step = step_for(build_mlp([32]), precision, compile=compile)
        losses.append([step(images, labels)[1].item() for images, labels in batches(data, 64)])
    eager, compiled = losses
    assert compiled == pytest.approx(eager, rel=1e-3)
    assert compiled[-1] < compiled[0]


def test_the_seed_changes_the_batch_order():
    _, a = run("fp32", seed=0)
    _, b = run("fp32", seed=1)
    assert a.epochs[0].loss != b.epochs[0].loss


def test_divergence_stops_training_with_a_clear_error():
    with pytest.raises(
        DivergenceError, match=r"training diverged: the loss became (nan|inf) at step \d+ .*lower train.lr"
    ):
        run("fp32", lr=1e30)


def test_fp16_overflow_is_skipped_and_counted_not_fatal():
    _, result = run("fp16", lr=1e30)
    assert result.skipped_steps > 0
    assert result.skipped_steps == sum(e.skipped_steps for e in result.epochs)


class StopAfter:
    """A StopRequest that fires after `calls` checks, as SIGTERM would mid-training."""

    def __init__(self, calls: int):
        self.calls, self.signum, self.signal_name = calls, 15, "SIGTERM"

    def __bool__(self) -> bool:
        self.calls -= 1
        return self.calls < 0


ADAMW = OptimizerChoice("adamw")


@pytest.mark.parametrize(
    "precision, optimizer",
    [("fp32", SGD), ("fp16", SGD), ("fp32", ADAMW), ("fp16-true-sr", SGD), ("bf16-true-sr", ADAMW)],
)
@pytest.mark.parametrize("stop_at", [5, 8, 16])  # mid-epoch, at an epoch boundary, later
def test_stop_and_resume_ends_bitwise_identical_to_an_uninterrupted_run(precision, optimizer, stop_at):
    """Stochastic rounding's random stream too: it is saved with the optimizer."""
    reference, expected = run(precision, optimizer=optimizer)

    torch.manual_seed(0)
    model = build_mlp([32])
    with pytest.raises(Stopped) as stopped:
        train(
            model,
            toy_split(),
            PrecisionPolicy(precision, "cpu"),
            recipe(),
            0,
            stop=StopAfter(stop_at),
            optimizer=optimizer,
        )
    state = stopped.value.checkpoint
    assert state.progress.step == stop_at
    torch_state = state.optimizer["optimizer"] if precision.endswith("-sr") else state.optimizer
    assert torch_state["param_groups"][0]["lr"] == 0.01  # torch.optim's own state_dict
    assert ("generator" in state.optimizer) == precision.endswith("-sr")
    assert ("scale" in state.precision["scaler"]) == (precision == "fp16")

    buffer = io.BytesIO()  # through the file format the stage uses
    torch.save(state.as_saved(), buffer)
    buffer.seek(0)
    checkpoint = SavedState.from_saved(torch.load(buffer, weights_only=True))

    resumed = build_mlp([32])  # other initial weights: all must come from the checkpoint
    result = train(
        resumed, toy_split(), PrecisionPolicy(precision, "cpu"), recipe(), 0, resume=checkpoint, optimizer=optimizer
    )
    for p, q in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [(e.loss, e.accuracy, e.skipped_steps) for e in result.epochs] == [
        (e.loss, e.accuracy, e.skipped_steps) for e in expected.epochs
    ]
    assert result.samples == expected.samples and result.final_scale == expected.final_scale


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_periodic_checkpoint_resumes_bitwise_identically(precision):
    """What a hard crash after epoch 2 of 3 leaves, continued, ends where an uninterrupted run does."""
    reference, expected = run(precision)
    saved = []
    torch.manual_seed(0)
    train(
        build_mlp([32]),
        toy_split(),
        PrecisionPolicy(precision, "cpu"),
        recipe(checkpoint_every=1),
        0,
        hooks=Saving(saved, copy.deepcopy),
    )
    assert [state.progress.epoch for state in saved] == [2, 3]  # none after the last epoch
    assert all(state.progress.done_in_epoch == 0 for state in saved)

    resumed = build_mlp([32])
    result = train(resumed, toy_split(), PrecisionPolicy(precision, "cpu"), recipe(), 0, resume=saved[-1])
    assert all(torch.equal(p, q) for p, q in zip(reference.parameters(), resumed.parameters(), strict=True))
    assert [(e.loss, e.accuracy) for e in result.epochs] == [(e.loss, e.accuracy) for e in expected.epochs]

    saved.clear()
    train(
        build_mlp([32]),
        toy_split(),
        PrecisionPolicy(precision, "cpu"),
        recipe(checkpoint_every=2),
        0,
        hooks=Saving(saved),
    )
    assert [state.progress.epoch for state in saved] == [3]
    train(
        build_mlp([32]),
        toy_split(),
        PrecisionPolicy(precision, "cpu"),
        recipe(checkpoint_every=0),
        0,
        hooks=Saving(saved),
    )
    assert len(saved) == 1


def test_max_steps_cuts_each_epoch_and_a_resume_honours_it():
    """train.max_steps (a smoke run): each epoch takes its first N batches, and
    its loss and accuracy are over the samples those batches hold."""
    _, whole = run("fp32")
    torch.manual_seed(0)
    steps = []
    counting = build_mlp([32])
    counting.register_forward_pre_hook(lambda module, args: steps.append(len(args[0])))
    cut = train(counting, toy_split(), PrecisionPolicy("fp32", "cpu"), recipe(max_steps=3), 0)
    assert steps == [64] * 9  # 3 epochs x 3 steps, of the 8 an epoch has
    assert cut.samples == 3 * 3 * 64 and len(cut.epochs) == 3
    assert cut.epochs[0].loss != whole.epochs[0].loss

    reference, expected = run("fp32", max_steps=3)
    torch.manual_seed(0)
    with pytest.raises(Stopped) as stopped:
        train(build_mlp([32]), toy_split(), PrecisionPolicy("fp32", "cpu"), recipe(max_steps=3), 0, stop=StopAfter(4))
    resumed = build_mlp([32])
    result = train(
        resumed, toy_split(), PrecisionPolicy("fp32", "cpu"), recipe(max_steps=3), 0, resume=stopped.value.checkpoint
    )
    assert all(torch.equal(p, q) for p, q in zip(reference.parameters(), resumed.parameters(), strict=True))
    assert [e.loss for e in result.epochs] == [e.loss for e in expected.epochs]

    assert run("fp32", max_steps=100)[1].samples == whole.samples  # more than an epoch has: the whole epoch
