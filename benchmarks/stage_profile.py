"""Where the train stage's time goes outside the training loop, phase by phase.

    python benchmarks/stage_profile.py      # needs data/mnist (dvc repro download)

Runs the same calls as the train stage, in the same order, in a temporary
directory with a fresh MLflow store, then again against that existing store,
and prints the seconds of each phase. The training loop itself is left out:
that is what train_speed.py measures.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

started = last = time.perf_counter()
phases: list[tuple[str, float]] = []


def lap(name: str) -> None:
    global last
    now = time.perf_counter()
    phases.append((name, now - last))
    last = now


import mlflow  # noqa: E402
import torch  # noqa: E402 - timed, as the stage imports it

lap("import torch, mlflow")

from mnist_precision.base import paths  # noqa: E402
from mnist_precision.core.data import load_split, read_pixels  # noqa: E402
from mnist_precision.core.model import build_mlp  # noqa: E402
from mnist_precision.core.optimizers import make_optimizer  # noqa: E402
from mnist_precision.core.precision import PrecisionPolicy  # noqa: E402
from mnist_precision.core.training import TrainStep  # noqa: E402
from mnist_precision.tracking.lifecycle import run_scope  # noqa: E402
from mnist_precision.tracking.store import configure, get_or_create_experiment  # noqa: E402
from mnist_precision.tracking.training_run import log_model  # noqa: E402

lap("import the project (mlflow.pytorch, mlflow.models, tqdm)")


def main() -> None:
    data_dir = (Path(__file__).resolve().parents[1] / paths.DATA_DIR).resolve()
    model = build_mlp([256])
    policy = PrecisionPolicy("fp32", "cpu")
    TrainStep(model, policy, make_optimizer(model, policy, 0.01))
    lap("build the model and the training step")
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        for store_state in ("fresh", "existing"):
            store = configure(Path(work))
            experiment_id = get_or_create_experiment("profile", store)
            lap(f"{store_state} store: open it, get or create the experiment")
            load_split(data_dir, "train")
            lap(f"{store_state} store: load MNIST as tensors")
            with run_scope(experiment_id=experiment_id):
                mlflow.log_params({"precision": "fp32"})
                lap(f"{store_state} store: start the run, log params")
                if store_state == "fresh":
                    # The pt2 format's first torch.export imports torch._dynamo and sympy.
                    torch.export.export(torch.nn.Linear(2, 2), (torch.randn(2, 2),))
                    lap("a first torch.export, of a 2x2 layer: once per process")
                    # log_model checks the declared requirements against a map of every
                    # installed package, which MLflow builds once per process; built here
                    # through MLflow's own (private) function, to time it apart.
                    from mlflow.utils.requirements_utils import _init_packages_to_modules_map

                    _init_packages_to_modules_map()
                    lap("map installed packages (MLflow's requirement check): once per process")
                log_model(model.state_dict(), [256], read_pixels(data_dir, "train")[:2])
                lap(f"{store_state} store: log the model (pt2, torch.export)")
            lap(f"{store_state} store: end the run")
    width = max(len(name) for name, _ in phases)
    for name, seconds in phases:
        print(f"{name:<{width}}  {seconds:6.2f} s")
    print(f"{'total':<{width}}  {time.perf_counter() - started:6.2f} s")


if __name__ == "__main__":
    main()
