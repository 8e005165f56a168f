"""Training checkpoints, written every `train.checkpoint_every` epochs and when a
run is stopped, and read to resume it.

The schema, in one place:

    format         "mnist-precision-checkpoint/<version>"
    fingerprint    the params that shape training (see `fingerprint`)
    mlflow_run_id  the run that a resume continues
    state          `TrainState.state_dict()`: model, optimizer (with stochastic
                   rounding's random stream, for the "-sr" precisions), precision
                   policy (the GradScaler), and progress (epoch, step, the
                   shuffling generator at the start of the epoch, its sums)

A checkpoint written for other params, by another version, or one that does
not load, is refused with a message, never used silently.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnist_precision.base.atomic import atomic_write_bytes
from mnist_precision.base.errors import UserError
from mnist_precision.base.params import Params
from mnist_precision.core.training import SavedState

FORMAT_NAME = "mnist-precision-checkpoint"
# Raised whenever the layout of `state` changes: an older checkpoint is then
# refused with a message instead of half-loaded.
FORMAT = f"{FORMAT_NAME}/4"


class CheckpointError(UserError):
    """The checkpoint is corrupt or belongs to other params."""


def atomic_torch_save(target: str | Path, value: Any) -> None:
    """torch.save, atomically. Serialized in memory first: torch's own file
    writer reports a full disk as a bare position mismatch, a plain write as
    the OSError it is."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(target, buffer.getvalue())


def fingerprint(params: Params, device: torch.device) -> dict[str, Any]:
    """What must not change between a stop and its resume (epochs may grow, and
    train.processes may change: the state is the same on every rank)."""
    return {
        "precision": params.precision,
        "loss_scale": params.loss_scale,
        "seed": params.seed,
        "device": device.type,
        "train.batch_size": params.train.batch_size,
        "train.lr": params.train.lr,
        "train.hidden": list(params.train.hidden),
        "train.compile": params.train.compile,
        "train.grad_comm": params.train.grad_comm,
        "train.max_steps": params.train.max_steps,
        "optimizer": params.optimizer,
    } | adamw_fingerprint(params)


def adamw_fingerprint(params: Params) -> dict[str, Any]:
    if params.optimizer != "adamw":
        return {}
    return {
        "train.weight_decay": params.train.weight_decay,
        "train.betas": list(params.train.betas),
        "train.eps": params.train.eps,
    }


@dataclass(frozen=True)
class Checkpoint:
    state: SavedState
    mlflow_run_id: str

    @property
    def step(self) -> int:
        return self.state.progress.step


def save(path: Path, state: SavedState, expected: dict[str, Any], mlflow_run_id: str) -> None:
    saved = {"format": FORMAT, "fingerprint": expected, "mlflow_run_id": mlflow_run_id, "state": state.as_saved()}
    atomic_torch_save(path, saved)


def load(path: Path, expected: dict[str, Any], epochs: int) -> Checkpoint | None:
    """The checkpoint at `path` if there is one, after checking it fits `expected`.

    A write that a hard crash cut short left only its temporary file beside
    `path` (the rename never happened): it is removed, never read."""
    for torn in path.parent.glob(f".{path.name}.*.tmp"):
        torn.unlink(missing_ok=True)
    if not path.exists():
        return None
    fix = f"delete {path} to train from the start"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: any unpickling error
        raise CheckpointError(
            f"{path} is corrupt or not a checkpoint ({type(error).__name__}: {error}); {fix}"
        ) from None
    written_format = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if str(written_format).startswith(f"{FORMAT_NAME}/") and written_format != FORMAT:
        raise CheckpointError(
            f"{path} was written by another version of this project "
            f"(format {written_format}, this one reads {FORMAT}); {fix}"
        )
    if written_format != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project; {fix}")
    written = checkpoint["fingerprint"]
    changed = [
        f"{key} was {written.get(key)!r}, params say {value!r}"
        for key, value in expected.items()
        if written.get(key) != value
    ]
    if changed:
        raise CheckpointError(
            f"{path} was written for other params ({'; '.join(changed)}): restore them to resume, or {fix}"
        )
    state = SavedState.from_saved(checkpoint["state"])
    epoch = state.progress.epoch
    if epoch > epochs:
        raise CheckpointError(
            f"{path} stopped in epoch {epoch}, beyond train.epochs={epochs}; raise train.epochs to resume, or {fix}"
        )
    return Checkpoint(state, checkpoint["mlflow_run_id"])
