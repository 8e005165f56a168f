"""The `train` stage: train the network under the chosen precision and log it to MLflow."""

from __future__ import annotations

import signal
import sys
from contextlib import ExitStack

import mlflow
import torch
from mlflow.models import infer_signature

from . import checkpoint, diagnostics, paths, tracking
from .atomic import atomic_torch_save, atomic_write_json
from .data import load_split
from .device import capability_params, device_name, missing_native_support, peak_memory_metrics, resolve_device
from .distributed import World, device_of, joined, launch, processes_wanted, under_torchrun
from .interrupts import Interrupted, StopRequest
from .model import build_mlp
from .params import load
from .precision import PrecisionPolicy, fp8_kept_layers, torch_dtype
from .threads import budget
from .training import DivergenceError, EpochRecord, Stopped, train


def precision_params(policy: PrecisionPolicy, model: torch.nn.Module) -> dict[str, str]:
    """What the precision does here: its compute dtype and that dtype's largest
    finite value (what the range figures are measured against); for fp8, the
    layers that float8 could not take."""
    dtype = policy.precision.compute_dtype
    params = {"compute_dtype": dtype, "compute_dtype_max": torch.finfo(torch_dtype(dtype)).max}
    if policy.precision.fp8:
        params["fp8_layers_kept_bf16"] = ",".join(fp8_kept_layers(model)) or "none"
    return params


def environment_params(device: torch.device, world: World) -> dict[str, str]:
    return {
        "world_size": world.size,
        "nodes": world.nodes,
        "distributed_backend": world.backend or "none",
        "device_resolved": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "none",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        **capability_params(device),
    }


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
        model, name="model", signature=signature, input_example=example.numpy(),
        # Declared, so MLflow need not infer them (which takes seconds).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )


def main() -> None:
    params = load(paths.PARAMS)
    device = resolve_device(params.device, params.precision)
    processes = processes_wanted(params.train.processes, device.type)
    if processes > 1 and not under_torchrun():
        launch(processes, sys.argv[0])  # this stage again, on every rank
        return
    with joined(device.type) as world:
        train_stage(params, device_of(world, device), world)


def train_stage(params, device: torch.device, world: World) -> None:
    """Every rank runs this; only rank 0 reads the checkpoint, talks to MLflow
    and writes the outputs."""
    threads = budget(params.train.threads)
    torch.set_num_threads(threads.threads)
    policy = PrecisionPolicy(params.precision, device.type, params.loss_scale)
    missing = missing_native_support(policy.precision.native_on_cpu, device)
    if missing and world.is_main:
        print(f"train: warning: {params.precision} is not native here ({missing}): its matrix products take "
              "a slow path, and it will likely run slower than fp32", file=sys.stderr)
    torch.manual_seed(params.seed)
    expected = checkpoint.fingerprint(params, device)
    resume = world.broadcast(checkpoint.load(paths.CHECKPOINT, expected, params.train.epochs) if world.is_main else None)
    if world.is_main:
        store = tracking.configure()
        experiment_id = tracking.experiment_id(params.mlflow_experiment, store)
        ended = tracking.end_stale_runs(experiment_id, keep=resume.mlflow_run_id if resume else None)
        if ended:
            print(f"train: marked KILLED {len(ended)} run(s) left RUNNING by a process of this host that no longer "
                  f"exists: {', '.join(ended)}", file=sys.stderr)
    data = load_split(paths.require(paths.DATA_DIR, "download"), "train", device)
    model = build_mlp(params.train.hidden).to(device)

    stop = StopRequest()
    with ExitStack() as scope:
        scope.enter_context(policy.numerics())
        if world.is_main:
            # A resumed run continues the MLflow run that was stopped.
            run_args = ({"run_id": resume.mlflow_run_id} if resume else
                        {"experiment_id": experiment_id, "run_name": tracking.run_name(params.precision),
                         "tags": tracking.run_tags()})
            run_id = scope.enter_context(tracking.run_scope(system_metrics=world.node_id is None, **run_args)).info.run_id
            if resume:
                mlflow.set_tag("resumed_at_step", resume.step)
                print(f"train: resuming from {paths.CHECKPOINT} at step {resume.step}", file=sys.stderr)
            else:
                mlflow.log_params(params.flat() | environment_params(device, world) | precision_params(policy, model)
                                  | {"threads": threads.threads, "threads_from": threads.why})
        # SIGINT/SIGTERM from here on: finish the step, then checkpoint (during
        # training), or finish writing (after it); a second signal stops at once.
        scope.enter_context(stop.active())
        if world.is_main:
            epoch_metrics = tracking.MetricsBuffer(run_id)
            scope.callback(epoch_metrics.flush)  # whatever happens, the epochs that ended reach the store
        run_id = world.broadcast(run_id if world.is_main else None)
        if world.node_id is not None and world.local_rank == 0:
            if not world.is_main:
                tracking.configure()
            scope.enter_context(tracking.node_system_metrics(run_id, world.node_id))

        def log_epoch(record: EpochRecord) -> None:
            if world.is_main:
                numerics = record.diagnostics or {"figures": {}, "loss_scales": []}
                epoch_metrics.add({"train_loss": record.loss, "train_accuracy": record.accuracy,
                                   "epoch_seconds": record.seconds, "epoch_skipped_steps": record.skipped_steps,
                                   **numerics["figures"]},
                                  step=record.epoch, series={"loss_scale": numerics["loss_scales"]})

        def save_checkpoint(state: dict) -> None:
            if world.is_main:
                epoch_metrics.flush()  # the epochs a resume will not repeat are in the store first
                checkpoint.save(paths.CHECKPOINT, state, expected, run_id)

        try:
            result = train(model, data, policy, params.train, params.seed, world=world, on_epoch=log_epoch,
                           on_checkpoint=save_checkpoint,
                           stop=stop, resume=resume.state if resume else None,
                           diagnose_every=params.diagnostics_every)
        except DivergenceError as error:
            if world.is_main:
                mlflow.set_tags({"failure": str(error), "diverged_at_epoch": error.epoch,
                                 "diverged_at_step": error.step})
            raise
        except Stopped as stopped:
            if world.is_main:
                checkpoint.save(paths.CHECKPOINT, stopped.checkpoint, expected, run_id)
                mlflow.set_tag("stopped_at_step", stopped.checkpoint["progress"]["step"])
            written = f"checkpoint written to {paths.CHECKPOINT}: " if world.is_main else ""
            raise Interrupted(f"{stopped}; {written}run the stage again (dvc repro) to resume",
                              stop.signum or signal.SIGTERM) from None
        if not world.is_main:
            return  # the last collective is behind: rank 0 writes alone, no rank waits on it

        metrics = {
            "train_loss": result.epochs[-1].loss,
            "train_accuracy": result.epochs[-1].accuracy,
            "samples_per_s": result.samples_per_s,
            "train_seconds": result.seconds,
            **peak_memory_metrics(device),
        }
        if result.final_scale is not None:
            metrics |= {"grad_scale_final": result.final_scale, "skipped_steps": result.skipped_steps}
        # train_loss and train_accuracy are already logged, per epoch.
        mlflow.log_metrics({k: v for k, v in metrics.items() if k not in ("train_loss", "train_accuracy")})

        state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}  # in its training dtype
        atomic_torch_save(paths.MODEL, state)
        atomic_write_json(paths.TRAIN_METRICS, metrics)
        atomic_write_json(paths.TRAIN_PLOT, [{k: v for k, v in vars(record).items() if k != "diagnostics"}
                                             for record in result.epochs])
        numerics = [(record.epoch, record.diagnostics) for record in result.epochs]
        atomic_write_json(paths.DIAGNOSTICS_PLOT, diagnostics.epoch_rows(numerics))
        atomic_write_json(paths.LOSS_SCALE_PLOT, diagnostics.loss_scale_rows(numerics))
        atomic_write_json(paths.UNDERFLOW_PLOT, diagnostics.histogram_rows(numerics))
        mlflow.log_artifact(str(paths.PARAMS))
        mlflow.log_artifact(str(paths.TRAIN_METRICS), artifact_path="metrics")
        for plot in (paths.TRAIN_PLOT, paths.DIAGNOSTICS_PLOT, paths.LOSS_SCALE_PLOT, paths.UNDERFLOW_PLOT):
            mlflow.log_artifact(str(plot), artifact_path="plots")

        log_model(state, params.train.hidden, data.images[:2].cpu())
        atomic_write_json(paths.MLFLOW_RUN, {"run_id": run_id, "experiment_id": experiment_id})
    paths.CHECKPOINT.unlink(missing_ok=True)
