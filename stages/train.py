"""DVC stage `train`: train the network in params.yaml's precision and record the run.

With `train.processes` above 1, this script starts torchrun, which runs it
again on every rank. Every rank trains its share of each batch; rank 0 alone
resumes from the checkpoint, keeps the MLflow run and writes the outputs.
The loop itself, down to the optimizer step, is `core/training.py`.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import torch
from torch import nn

from mnist_precision.base import names, paths
from mnist_precision.base.atomic import atomic_write_json
from mnist_precision.base.entry import run_stage
from mnist_precision.base.interrupts import Interrupted, StopRequest
from mnist_precision.base.params import Params, load
from mnist_precision.core import checkpoint, diagnostics
from mnist_precision.core.checkpoint import Checkpoint, atomic_torch_save
from mnist_precision.core.data import Split, load_split, read_pixels
from mnist_precision.core.device import peak_memory_metrics, resolve_device
from mnist_precision.core.distributed import World, device_of, joined, launch, processes_wanted, under_torchrun
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import OptimizerChoice
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.provenance import precision_warnings, provenance
from mnist_precision.core.threads import Budget, budget
from mnist_precision.core.training import DivergenceError, Hooks, Stopped, TrainResult, train


@dataclass
class Job:
    """What every rank sets up alike, from the same seed, before training."""

    params: Params
    device: torch.device
    world: World
    threads: Budget
    policy: PrecisionPolicy
    optimizer: OptimizerChoice
    data: Split
    model: nn.Module
    stop: StopRequest  # SIGINT/SIGTERM, while active: finish the step, checkpoint, stop


def main() -> None:
    params = load(paths.PARAMS)
    device = resolve_device(params.device, params.precision)
    processes = processes_wanted(params.train.processes, device.type)
    if processes > 1 and not under_torchrun():
        launch(processes, __file__)  # this script again, on every rank
        return
    with joined(device.type) as world:
        job = set_up(params, device_of(world, device), world)
        with job.policy.numerics():
            if world.is_main:  # where the ranks differ: rank 0 records, the others only train
                train_and_record(job)
            else:
                train_only(job)


def set_up(params: Params, device: torch.device, world: World) -> Job:
    threads = budget(params.train.threads)
    torch.set_num_threads(threads.threads)
    policy = PrecisionPolicy(params.precision, device.type, params.loss_scale)
    torch.manual_seed(params.seed)
    data = load_split(paths.require(paths.DATA_DIR, "download"), "train", device)
    model = build_mlp(params.train.hidden).to(device)
    return Job(params, device, world, threads, policy, OptimizerChoice.of(params), data, model, StopRequest())


def train_and_record(job: Job) -> None:
    """Rank 0: the checkpoint to resume from, the MLflow run, training, the outputs."""
    # Imported here: MLflow's start-up is spent only by a process that trains,
    # never by the torchrun launcher above, which only waits for its ranks.
    from mnist_precision.tracking.training_run import TrainingRun, say

    for warning in precision_warnings(job.policy, job.optimizer, job.device):
        say(f"warning: {warning}")
    fingerprint = checkpoint.fingerprint(job.params, job.device)
    resume = job.world.broadcast(checkpoint.load(paths.CHECKPOINT, fingerprint, job.params.train.epochs))
    run_params = job.params.flat() | provenance(job.device, job.world, job.policy, job.model, job.threads).as_params()
    system_metrics = job.world.node_id is None  # else each node samples its own
    with TrainingRun.open(job.params, fingerprint, resume, run_params, len(job.data), system_metrics) as run:
        job.world.broadcast(run.run_id)
        with job.stop.active():  # from here on, a stop after training waits for the outputs
            try:
                result = train_share(job, resume, run.run_id, run)
            except DivergenceError as error:
                run.diverged(error)
                raise
            except Stopped as stopped:
                run.stopped(stopped.checkpoint)
                raise interrupted(stopped, job.stop, f"checkpoint written to {paths.CHECKPOINT}: ") from None
            weights = {name: tensor.cpu() for name, tensor in job.model.state_dict().items()}  # training dtype
            summary = write_outputs(job, result, weights)
            example = read_pixels(paths.DATA_DIR, "train")[:2]  # what a client of the served model sends
            run.log_outcome(summary, paths.TRAIN_PLOTS, weights, job.params.train.hidden, example)
    paths.CHECKPOINT.unlink(missing_ok=True)  # the run ended: a later `dvc repro` starts afresh


def train_only(job: Job) -> None:
    """Every other rank: train with rank 0's checkpoint and run, record nothing."""
    resume, run_id = job.world.broadcast(None), job.world.broadcast(None)
    with job.stop.active():
        try:
            train_share(job, resume, run_id, Hooks())
        except Stopped as stopped:
            raise interrupted(stopped, job.stop, "") from None


def train_share(job: Job, resume: Checkpoint | None, run_id: str, hooks: Hooks) -> TrainResult:
    """Train this rank's share of the job (all of it outside torchrun)."""
    from mnist_precision.tracking.lifecycle import node_system_metrics

    with node_system_metrics(run_id, job.world.node_id, job.world.local_rank):
        return train(
            job.model,
            job.data,
            job.policy,
            job.params.train,
            job.params.seed,
            optimizer=job.optimizer,
            world=job.world,
            hooks=hooks,
            stop=job.stop,
            resume=resume.state if resume else None,
            diagnose_every=job.params.diagnostics_every,
        )


def interrupted(stopped: Stopped, stop: StopRequest, written: str) -> Interrupted:
    return Interrupted(f"{stopped}; {written}run the stage again (dvc repro) to resume", stop.signum or signal.SIGTERM)


def write_outputs(job: Job, result: TrainResult, weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """The stage's DVC outputs: the weights, the metrics and the plots.
    Returns the run's figures."""
    summary = result.figures() | peak_memory_metrics(job.device)
    last = result.epochs[-1]
    atomic_torch_save(paths.MODEL, weights)
    atomic_write_json(paths.TRAIN_METRICS, {names.TRAIN_LOSS: last.loss, names.TRAIN_ACCURACY: last.accuracy} | summary)
    atomic_write_json(paths.TRAIN_PLOT, [record.plot_row() for record in result.epochs])
    numerics = {record.epoch: record.diagnostics for record in result.epochs if record.diagnostics}
    atomic_write_json(paths.DIAGNOSTICS_PLOT, diagnostics.epoch_rows(numerics))
    atomic_write_json(paths.LOSS_SCALE_PLOT, diagnostics.loss_scale_rows(numerics))
    atomic_write_json(paths.UNDERFLOW_PLOT, diagnostics.histogram_rows(numerics))
    return summary


if __name__ == "__main__":
    run_stage("train", main)
