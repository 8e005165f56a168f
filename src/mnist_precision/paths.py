"""Where each stage reads and writes, relative to the repository root (see dvc.yaml)."""

from pathlib import Path

from .errors import UserError

PARAMS = Path("params.yaml")
DATA_DIR = Path("data/mnist")
# Where the stages run (the environment stage writes it; train and evaluate depend on it).
ENVIRONMENT = Path("environment.json")
MODEL = Path("models/model.pt")
MLFLOW_RUN = Path("models/mlflow_run.json")
# Not a DVC output (DVC deletes those before it reruns a stage): it must outlive a stopped run.
CHECKPOINT = Path("checkpoints/train.pt")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_PLOT = Path("plots/train_epochs.json")
DIAGNOSTICS_PLOT = Path("plots/diagnostics.json")  # the numerics, per epoch
LOSS_SCALE_PLOT = Path("plots/loss_scale.json")  # per sampled step
UNDERFLOW_PLOT = Path("plots/underflow_histogram.json")  # the last sampled step
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
