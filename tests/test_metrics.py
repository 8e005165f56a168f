"""Metric names are defined once (metrics.py): DVC's plots and the numerics use those names."""

from __future__ import annotations

import torch
import yaml

from mnist_precision.base import metrics as m
from mnist_precision.core.diagnostics import Diagnostics
from mnist_precision.core.model import build_mlp
from mnist_precision.core.optimizers import make_optimizer
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import TrainStep

from helpers import REPO_ROOT

NAMES = {value for value in vars(m).values() if isinstance(value, str)}


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
        m.underflow(v, b, s) for v in m.UNDERFLOW_VALUES for b in m.UNDERFLOW_BELOW for s in (False, True)
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
        {m.SAMPLED_STEPS, m.LOST_UPDATES}
        | {
            m.underflow(v, b, s)
            for v in m.UNDERFLOW_VALUES
            for b in m.UNDERFLOW_BELOW
            for s in (False, True)
            if v != "weights" or not s
        }
        | {f(layer) for layer in ("0", "1", "2") for f in (m.range_act_max, m.range_grad_max)}
    )
    assert set(figures) == expected
