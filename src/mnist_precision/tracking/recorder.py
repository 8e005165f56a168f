"""What rank 0 of a training job records: the MLflow run and the DVC outputs.

`Recorder` does it on rank 0; `NoRecorder`, its do-nothing twin, stands in
on every other rank, so that the train stage reads the same on all of them.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

import mlflow
import torch
from mlflow.models import infer_signature

from mnist_precision.base import metrics as m
from mnist_precision.base import paths
from mnist_precision.base.atomic import atomic_write_json
from mnist_precision.base.params import Params
from mnist_precision.core import checkpoint, diagnostics
from mnist_precision.core.checkpoint import atomic_torch_save
from mnist_precision.core.device import peak_memory_metrics
from mnist_precision.core.model import build_mlp
from mnist_precision.core.training import DivergenceError, EpochRecord, SavedState, TrainResult
from mnist_precision.tracking.buffer import MetricsBuffer
from mnist_precision.tracking.lifecycle import run_name, run_scope, run_tags
from mnist_precision.tracking.liveness import end_stale_runs
from mnist_precision.tracking.store import configure, get_or_create_experiment


class Recorder:
    """Rank 0's part: the checkpoint, the MLflow run and the DVC outputs."""

    def __init__(self, params: Params, device: torch.device):
        self.params = params
        self.fingerprint = checkpoint.fingerprint(params, device)
        self.device = device
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.buffer: MetricsBuffer | None = None

    def opened(self) -> tuple[str, MetricsBuffer]:
        """The open run's id and its metrics buffer."""
        if self.run_id is None or self.buffer is None:
            raise RuntimeError("no MLflow run is open: open_run comes first")
        return self.run_id, self.buffer

    def say(self, message: str) -> None:
        print(f"train: {message}", file=sys.stderr)

    def resume_point(self) -> checkpoint.Checkpoint | None:
        """The checkpoint to continue from, if one matches these params; and,
        before any work, the store: runs left RUNNING by a dead process of this
        host are ended (but not the one the checkpoint continues)."""
        resume = checkpoint.load(paths.CHECKPOINT, self.fingerprint, self.params.train.epochs)
        experiment_id = get_or_create_experiment(self.params.mlflow_experiment, configure())
        self.experiment_id = experiment_id
        ended = end_stale_runs(experiment_id, keep=resume.mlflow_run_id if resume else None)
        if ended:
            self.say(
                f"marked KILLED {len(ended)} run(s) left RUNNING by a process of this host that no longer "
                f"exists: {', '.join(ended)}"
            )
        return resume

    def open_run(
        self, scope: ExitStack, resume: checkpoint.Checkpoint | None, run_params: dict, system_metrics: bool
    ) -> str:
        """Start the run (or continue the stopped one) for as long as `scope`
        lasts; a new run gets `run_params`. Returns its id."""
        run_args = (
            {"run_id": resume.mlflow_run_id}
            if resume
            else {"experiment_id": self.experiment_id, "run_name": run_name(self.params.precision), "tags": run_tags()}
        )
        run = scope.enter_context(run_scope(system_metrics=system_metrics, **run_args))
        run_id: str = run.info.run_id
        self.run_id = run_id
        if resume:
            mlflow.set_tag("resumed_at_step", resume.step)
            self.say(f"resuming from {paths.CHECKPOINT} at step {resume.step}")
        else:
            mlflow.log_params(run_params)
        self.buffer = MetricsBuffer(run_id)
        return run_id

    def flush(self) -> None:
        """Wait until the epochs that ended are in the store."""
        self.opened()[1].flush()

    def epoch(self, record: EpochRecord) -> None:
        numerics = record.diagnostics or diagnostics.EpochNumerics()
        self.opened()[1].add(
            {
                m.TRAIN_LOSS: record.loss,
                m.TRAIN_ACCURACY: record.accuracy,
                m.EPOCH_SECONDS: record.seconds,
                m.EPOCH_SKIPPED_STEPS: record.skipped_steps,
                **numerics.figures,
            },
            step=record.epoch,
            series={m.LOSS_SCALE: numerics.loss_scales},
        )

    def checkpoint(self, state: SavedState) -> None:
        self.flush()  # the epochs a resume will not repeat are in the store first
        checkpoint.save(paths.CHECKPOINT, state, self.fingerprint, self.opened()[0])

    def diverged(self, error: DivergenceError) -> None:
        mlflow.set_tags({"failure": str(error), "diverged_at_epoch": error.epoch, "diverged_at_step": error.step})

    def stopped(self, state: SavedState) -> str:
        """Checkpoint a stopped run; returns what to tell the user about it."""
        checkpoint.save(paths.CHECKPOINT, state, self.fingerprint, self.opened()[0])
        mlflow.set_tag("stopped_at_step", state.progress.step)
        return f"checkpoint written to {paths.CHECKPOINT}: "

    def finish(self, result: TrainResult, model: torch.nn.Module, example: torch.Tensor) -> None:
        """Log the run's figures and model, and write the stage's DVC outputs."""
        summary = {
            m.SAMPLES_PER_S: result.samples_per_s,
            m.TRAIN_SECONDS: result.seconds,
            **peak_memory_metrics(self.device),
        }
        if result.final_scale is not None:
            summary |= {m.GRAD_SCALE_FINAL: result.final_scale, m.SKIPPED_STEPS: result.skipped_steps}
        mlflow.log_metrics(summary)  # the loss and accuracy are logged already, per epoch
        last = result.epochs[-1]
        state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}  # in its training dtype
        atomic_torch_save(paths.MODEL, state)
        atomic_write_json(paths.TRAIN_METRICS, {m.TRAIN_LOSS: last.loss, m.TRAIN_ACCURACY: last.accuracy} | summary)
        write_plots(result.epochs)
        mlflow.log_artifact(str(paths.PARAMS))
        mlflow.log_artifact(str(paths.TRAIN_METRICS), artifact_path="metrics")
        for plot in (paths.TRAIN_PLOT, paths.DIAGNOSTICS_PLOT, paths.LOSS_SCALE_PLOT, paths.UNDERFLOW_PLOT):
            mlflow.log_artifact(str(plot), artifact_path="plots")
        log_model(state, self.params.train.hidden, example)
        atomic_write_json(paths.MLFLOW_RUN, {"run_id": self.run_id, "experiment_id": self.experiment_id})

    def discard_checkpoint(self) -> None:
        """The run ended: a later `dvc repro` starts afresh."""
        paths.CHECKPOINT.unlink(missing_ok=True)


class NoRecorder:
    """The other ranks' recorder: they train, and record nothing."""

    def say(self, message: str) -> None:
        pass

    def resume_point(self) -> None:
        return None  # rank 0 reads the checkpoint and broadcasts it

    def open_run(self, scope: ExitStack, resume, run_params: dict, system_metrics: bool) -> None:
        return None  # rank 0 broadcasts the run's id

    def flush(self) -> None:
        pass

    def epoch(self, record: EpochRecord) -> None:
        pass

    def checkpoint(self, state: SavedState) -> None:
        pass

    def diverged(self, error: DivergenceError) -> None:
        pass

    def stopped(self, state: SavedState) -> str:
        return ""

    def finish(self, result: TrainResult, model: torch.nn.Module, example: torch.Tensor) -> None:
        pass  # past the last collective: rank 0 writes alone, no rank waits on it

    def discard_checkpoint(self) -> None:
        pass


def write_plots(epochs: list[EpochRecord]) -> None:
    """The DVC plot files: loss and accuracy per epoch, and the numerics."""
    atomic_write_json(
        paths.TRAIN_PLOT,
        [
            {
                m.PLOT_EPOCH: r.epoch,
                m.PLOT_LOSS: r.loss,
                m.PLOT_ACCURACY: r.accuracy,
                "seconds": r.seconds,
                "skipped_steps": r.skipped_steps,
            }
            for r in epochs
        ],
    )
    numerics = {record.epoch: record.diagnostics for record in epochs if record.diagnostics}
    atomic_write_json(paths.DIAGNOSTICS_PLOT, diagnostics.epoch_rows(numerics))
    atomic_write_json(paths.LOSS_SCALE_PLOT, diagnostics.loss_scale_rows(numerics))
    atomic_write_json(paths.UNDERFLOW_PLOT, diagnostics.histogram_rows(numerics))


def log_model(state: dict, hidden, example: torch.Tensor) -> None:
    """Log the trained weights to the active run as a plain fp32 model (weights
    trained in half widen exactly), with a signature and a 2-row input example
    (MLflow's default pt2 format exports the model with it)."""
    model = build_mlp(hidden)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        signature = infer_signature(example.numpy(), model(example).numpy())
    mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example.numpy(),
        # Declared, so MLflow need not infer them (which takes seconds).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
