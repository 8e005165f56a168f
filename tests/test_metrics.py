"""Logged names are defined once (base/names.py): DVC's plots, the numerics and the run params use them."""

from __future__ import annotations

import dataclasses

import torch
import yaml

from mnist_precision.base import names
from mnist_precision.core.diagnostics import Diagnostics
from mnist_precision.core.distributed import World
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import make_optimizer
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.provenance import RunProvenance, provenance
from mnist_precision.core.threads import Budget
from mnist_precision.core.training import TrainStep

from helpers import REPO_ROOT

NAMES = {value for value in vars(names).values() if isinstance(value, str)}


def test_every_field_dvc_plots_reads_is_a_defined_name():
    plots = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]
    fields = set()
    for plot in plots:
        if isinstance(plot, dict):
            (spec,) = plot.values()
            fields.add(spec["x"])
            for ys in spec["y"].values():
                fields |= set(ys if isinstance(ys, list) else [ys])
    assert len(fields) >= 8
    assert fields <= NAMES | {
        names.underflow(v, b, s) for v in names.UNDERFLOW_VALUES for b in names.UNDERFLOW_BELOW for s in (False, True)
    }, fields - NAMES


def test_the_numerics_of_an_epoch_are_named_by_metrics():
    torch.manual_seed(0)
    model = build_mlp([16])
    policy = PrecisionPolicy("fp16", "cpu")
    step = TrainStep(model, policy, make_optimizer(model, policy, 0.1))
    diagnostics = Diagnostics(build_mlp([16]), every_steps=1)
    diagnostics.measure(step, model, torch.randn(8, 784), torch.randint(0, 10, (8,)), None, 1)
    figures = diagnostics.end_epoch().figures
    expected = (
        {names.SAMPLED_STEPS, names.LOST_UPDATES}
        | {
            names.underflow(v, b, s)
            for v in names.UNDERFLOW_VALUES
            for b in names.UNDERFLOW_BELOW
            for s in (False, True)
            if v != "weights" or not s
        }
        | {f(layer) for layer in ("0", "1", "2") for f in (names.range_act_max, names.range_grad_max)}
    )
    assert set(figures) == expected


def test_the_params_a_run_logs_about_itself_are_named_by_names():
    run = provenance(torch.device("cpu"), World(), PrecisionPolicy("bf16", "cpu"), build_mlp([16]), Budget(2, "test"))
    logged = run.as_params()
    assert {field.name for field in dataclasses.fields(RunProvenance)} == set(names.RUN_PARAMS)
    assert logged[names.COMPUTE_DTYPE] == "bfloat16" and logged[names.THREADS] == 2
    assert names.CPU_CAPABILITY in logged and names.CUDA_COMPUTE_CAPABILITY not in logged  # None is not logged
