"""The MLflow run of a training job, as rank 0 keeps it: started (or continued
from the checkpoint's run), its epochs' metrics, the checkpoints that let a
stopped run continue in the same run, and at the end its figures, files and
model. The other ranks keep no run: the loop's default `Hooks` stand in."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo

from mnist_precision.base import names, paths
from mnist_precision.base.atomic import atomic_write_json
from mnist_precision.base.params import Params
from mnist_precision.core import checkpoint, diagnostics
from mnist_precision.core.checkpoint import Checkpoint
from mnist_precision.core.model import build_mlp, served
from mnist_precision.core.training import DivergenceError, EpochRecord, Hooks, SavedState
from mnist_precision.tracking.buffer import MetricsBuffer
from mnist_precision.tracking.lifecycle import run_name, run_scope, run_tags
from mnist_precision.tracking.lineage import log_split, tag_dvc_data_hash
from mnist_precision.tracking.liveness import end_stale_runs
from mnist_precision.tracking.registry import register
from mnist_precision.tracking.store import configure, get_or_create_experiment


@dataclass(frozen=True)
class RunFile:
    """models/mlflow_run.json: the run the evaluate stage continues, and the
    model version it tags (none where the server refused to register it)."""

    run_id: str
    experiment_id: str
    registered_model: str | None = None
    model_version: str | None = None

    def write(self) -> None:
        atomic_write_json(paths.MLFLOW_RUN, asdict(self))

    @classmethod
    def read(cls) -> RunFile:
        return cls(**json.loads(paths.require(paths.MLFLOW_RUN, "train").read_text()))


class TrainingRun(Hooks):
    def __init__(self, run_id: str, experiment_id: str, fingerprint: dict, version_tags: dict[str, str]):
        self.run_id, self.experiment_id, self.fingerprint = run_id, experiment_id, fingerprint
        self.version_tags = version_tags
        self.buffer = MetricsBuffer(run_id)

    @classmethod
    @contextmanager
    def open(
        cls,
        params: Params,
        fingerprint: dict,
        resume: Checkpoint | None,
        run_params: dict,
        images: int,
        system_metrics: bool,
    ) -> Iterator[TrainingRun]:
        """The run, for as long as the block lasts: the checkpoint's run if
        there is one, else a new run with `run_params` and the training split
        (`images` of them) as its input. First, the runs of this host's dead
        processes left RUNNING are ended."""
        experiment_id = get_or_create_experiment(params.mlflow_experiment, configure())
        ended = end_stale_runs(experiment_id, keep=resume.mlflow_run_id if resume else None)
        if ended:
            say(
                f"marked KILLED {len(ended)} run(s) left RUNNING by a process of this host that no longer "
                f"exists: {', '.join(ended)}"
            )
        start = (
            {"run_id": resume.mlflow_run_id}
            if resume
            else {"experiment_id": experiment_id, "run_name": run_name(params.precision), "tags": run_tags()}
        )
        with run_scope(system_metrics=system_metrics, **start) as active:
            run = cls(active.info.run_id, experiment_id, fingerprint, version_tags(run_params))
            if resume:
                mlflow.set_tag(names.RESUMED_AT_STEP, resume.step)
                say(f"resuming from {paths.CHECKPOINT} at step {resume.step}")
            else:
                mlflow.log_params(run_params)
                log_split(paths.DATA_DIR, "train", images, context="training")
                tag_dvc_data_hash()
            try:
                yield run
            finally:
                run.buffer.flush()  # whatever happened, the epochs that ended reach the store

    def epoch_ended(self, record: EpochRecord) -> None:
        numerics = record.diagnostics or diagnostics.EpochNumerics()
        figures = {
            names.TRAIN_LOSS: record.loss,
            names.TRAIN_ACCURACY: record.accuracy,
            names.EPOCH_SECONDS: record.seconds,
            names.EPOCH_SKIPPED_STEPS: record.skipped_steps,
        }
        self.buffer.add(figures | numerics.figures, step=record.epoch, series={names.LOSS_SCALE: numerics.loss_scales})

    def checkpoint_due(self, state: SavedState) -> None:
        self.buffer.flush()  # the epochs a resume will not repeat are in the store first
        checkpoint.save(paths.CHECKPOINT, state, self.fingerprint, self.run_id)

    def stopped(self, state: SavedState) -> None:
        checkpoint.save(paths.CHECKPOINT, state, self.fingerprint, self.run_id)
        mlflow.set_tag(names.STOPPED_AT_STEP, state.progress.step)

    def diverged(self, error: DivergenceError) -> None:
        mlflow.set_tags(
            {names.FAILURE: str(error), names.DIVERGED_AT_EPOCH: error.epoch, names.DIVERGED_AT_STEP: error.step}
        )

    def log_outcome(
        self, summary: dict[str, float], plots: tuple[Path, ...], weights: dict, hidden, example: torch.Tensor
    ) -> None:
        """The run's figures (its per-epoch ones are logged already), the
        stage's files and the model; then the file that names the run."""
        mlflow.log_metrics(summary)
        mlflow.log_artifact(str(paths.PARAMS))
        mlflow.log_artifact(str(paths.TRAIN_METRICS), artifact_path="metrics")
        for plot in plots:
            mlflow.log_artifact(str(plot), artifact_path="plots")
        model = log_model(weights, hidden, example)
        registered = mlflow.get_experiment(self.experiment_id).name  # one registered model per experiment
        version = register(model.model_uri, registered, self.version_tags)
        RunFile(self.run_id, self.experiment_id, registered if version else None, version).write()


def say(message: str) -> None:
    print(f"train: {message}", file=sys.stderr)


def version_tags(run_params: dict) -> dict[str, str]:
    """What a model version says of its training run, to pick it by in the registry."""
    tags = {key: str(run_params[key]) for key in ("precision", "loss_scale", "optimizer", "seed")}
    return tags | {names.VERSION_DEVICE: f"{run_params[names.DEVICE_RESOLVED]} ({run_params[names.DEVICE_NAME]})"}


def log_model(weights: dict, hidden, example: torch.Tensor) -> ModelInfo:
    """Log the trained weights to the active run as the model a client serves
    (`model.served`: raw pixels in, logits out), in fp32 (weights trained in
    half widen exactly), with its signature and an input example of raw
    pixels (MLflow's default pt2 format exports the model with it)."""
    network = build_mlp(hidden)
    network.load_state_dict(weights)
    model = served(network).eval()
    with torch.no_grad():
        signature = infer_signature(example.numpy(), model(example).numpy())
    return mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example.numpy(),
        # Declared, so MLflow need not infer them (which takes seconds).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
