"""The `train` stage: train the network under the chosen precision and log it to MLflow."""

from __future__ import annotations

import signal
from contextlib import ExitStack

import torch

from mnist_precision.base import metrics as m
from mnist_precision.base import paths
from mnist_precision.base.interrupts import Interrupted, StopRequest
from mnist_precision.base.params import Params
from mnist_precision.core.data import load_split
from mnist_precision.core.device import capability_params, device_name, missing_native_support
from mnist_precision.core.distributed import World, device_of, joined
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import OptimizerChoice, eps_warning
from mnist_precision.core.precision import PrecisionPolicy, fp8_kept_layers, torch_dtype
from mnist_precision.core.threads import budget
from mnist_precision.core.training import DivergenceError, Stopped, train
from mnist_precision.tracking.lifecycle import node_system_metrics
from mnist_precision.tracking.recorder import NoRecorder, Recorder
from mnist_precision.tracking.store import configure


def precision_params(policy: PrecisionPolicy, model: torch.nn.Module) -> dict[str, object]:
    """What the precision does here: its compute dtype and that dtype's largest
    finite value (what the range figures are measured against); for fp8, the
    layers that float8 could not take."""
    dtype = policy.precision.compute_dtype
    params: dict[str, object] = {m.COMPUTE_DTYPE: dtype, m.COMPUTE_DTYPE_MAX: torch.finfo(torch_dtype(dtype)).max}
    if policy.precision.fp8:
        params["fp8_layers_kept_bf16"] = ",".join(fp8_kept_layers(model)) or "none"
    return params


def environment_params(device: torch.device, world: World) -> dict[str, object]:
    return {
        m.WORLD_SIZE: world.size,
        m.NODES: world.nodes,
        m.DISTRIBUTED_BACKEND: world.backend or "none",
        m.DEVICE_RESOLVED: str(device),
        m.DEVICE_NAME: device_name(device),
        m.TORCH_VERSION: torch.__version__,
        m.CUDA_VERSION: torch.version.cuda or "none",
        m.FLOAT32_MATMUL_PRECISION: torch.get_float32_matmul_precision(),
        **capability_params(device),
    }


def main(params: Params, device: torch.device) -> None:
    """Train on this process's share of the job (all of it outside torchrun)."""
    with joined(device.type) as world:
        train_stage(params, device_of(world, device), world)


def warn(recorder: Recorder | NoRecorder, policy: PrecisionPolicy, optimizer: OptimizerChoice, device: torch.device):
    """Before training: a precision that takes a slow path here, an eps its dtype flushes to zero."""
    missing = missing_native_support(policy.precision.native_on_cpu, device)
    if missing:
        recorder.say(
            f"warning: {policy.name} is not native here ({missing}): its matrix products take "
            "a slow path, and it will likely run slower than fp32"
        )
    eps = eps_warning(optimizer, policy)
    if eps:
        recorder.say(f"warning: {eps}")


def train_stage(params: Params, device: torch.device, world: World) -> None:
    """Every rank runs this; what only rank 0 does is its `Recorder`."""
    threads = budget(params.train.threads)
    torch.set_num_threads(threads.threads)
    policy = PrecisionPolicy(params.precision, device.type, params.loss_scale)
    recorder = Recorder(params, device) if world.is_main else NoRecorder()
    optimizer = OptimizerChoice.of(params)
    warn(recorder, policy, optimizer, device)
    torch.manual_seed(params.seed)
    resume = world.broadcast(recorder.resume_point())
    data = load_split(paths.require(paths.DATA_DIR, "download"), "train", device)
    model = build_mlp(params.train.hidden).to(device)

    stop = StopRequest()
    with ExitStack() as scope:
        scope.enter_context(policy.numerics())
        run_params = (
            params.flat()
            | environment_params(device, world)
            | precision_params(policy, model)
            | {m.THREADS: threads.threads, m.THREADS_FROM: threads.why}
        )
        run_id = world.broadcast(recorder.open_run(scope, resume, run_params, system_metrics=world.node_id is None))
        # SIGINT/SIGTERM from here on: finish the step, then checkpoint (during
        # training), or finish writing (after it); a second signal stops at once.
        scope.enter_context(stop.active())
        scope.callback(recorder.flush)  # whatever happens, the epochs that ended reach the store
        if world.node_id is not None and world.local_rank == 0:  # one sampler per node of a multi-node job
            configure()  # the other nodes' store (rank 0's is set already)
            scope.enter_context(node_system_metrics(run_id, world.node_id))
        try:
            result = train(
                model,
                data,
                policy,
                params.train,
                params.seed,
                world=world,
                on_epoch=recorder.epoch,
                on_checkpoint=recorder.checkpoint,
                stop=stop,
                resume=resume.state if resume else None,
                diagnose_every=params.diagnostics_every,
                optimizer=optimizer,
            )
        except DivergenceError as error:
            recorder.diverged(error)
            raise
        except Stopped as stopped:
            written = recorder.stopped(stopped.checkpoint)
            raise Interrupted(
                f"{stopped}; {written}run the stage again (dvc repro) to resume", stop.signum or signal.SIGTERM
            ) from None
        recorder.finish(result, model, data.images[:2].cpu())
    recorder.discard_checkpoint()
