"""Where each stage reads and writes, relative to the repository root (see dvc.yaml)."""

import os
from pathlib import Path

from mnist_precision.base.errors import UserError

# Where DVC's queue runs an experiment: a temporary copy inside the repository.
DVC_QUEUE_DIR = (".dvc", "tmp", "exps")

PARAMS = Path("params.yaml")
DVC_LOCK = Path("dvc.lock")
DATA_DIR = Path("data/mnist")
# Where the stages run (the environment stage writes it; train and evaluate depend on it).
ENVIRONMENT = Path("environment.json")
MODEL = Path("models/model.pt")
MODEL_FP16 = Path("models/model_fp16.pt")  # the weights stored in fp16: what the storage figures are of
MLFLOW_RUN = Path("models/mlflow_run.json")
# Not a DVC output (DVC deletes those before it reruns a stage): it must outlive a stopped run.
CHECKPOINT = Path("checkpoints/train.pt")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_PLOT = Path("plots/train_epochs.json")
DIAGNOSTICS_PLOT = Path("plots/diagnostics.json")  # the numerics, per epoch
LOSS_SCALE_PLOT = Path("plots/loss_scale.json")  # per sampled step
UNDERFLOW_PLOT = Path("plots/underflow_histogram.json")  # the last sampled step
TRAIN_PLOTS = (TRAIN_PLOT, DIAGNOSTICS_PLOT, LOSS_SCALE_PLOT, UNDERFLOW_PLOT)
EVAL_METRICS = Path("metrics/evaluate.json")
CONFUSION_PLOT = Path("plots/confusion.json")
CONFUSION_PNG = Path("plots/confusion.png")


class MissingInputError(UserError, FileNotFoundError):
    """A stage's input is missing: the stage that makes it has not run."""


def require(path: Path, produced_by: str) -> Path:
    if not path.exists():
        raise MissingInputError(
            f"{path} is missing; the '{produced_by}' stage writes it: run `dvc repro {produced_by}` first"
        )
    return path


def repo_root(start: str | Path | None = None) -> Path:
    """The user's repository, also from inside one of DVC's temporary experiment copies."""
    path = Path(start or os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - len(DVC_QUEUE_DIR) + 1):
        if parts[i : i + len(DVC_QUEUE_DIR)] == DVC_QUEUE_DIR:
            return Path(*parts[:i])
    return path
