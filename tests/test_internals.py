"""Contracts of the private PyTorch and MLflow parts that core/internals.py and tracking/internals.py use:
each fails, naming the attribute and the installed version, on a release that changes it."""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import version

import torch

from mnist_precision.core import internals
from mnist_precision.core.model import build_mlp
from mnist_precision.tracking import internals as tracking_internals


def release(package: str) -> str:
    return f"{package} {version(package)}"


def scaler_after_a_step(lr: float):
    torch.manual_seed(0)
    model = build_mlp([8])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(torch.randn(4, 784)).sum() * lr).backward()
    scaler.step(optimizer)
    return scaler, optimizer


def test_the_grad_scaler_keeps_its_scale_as_a_device_tensor():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale tensor is made lazily, at the first scale()
    assert hasattr(scaler, internals.SCALER_SCALE), (
        f"torch.amp.GradScaler.{internals.SCALER_SCALE} is gone in {release('torch')}: update internals.scaler_scale"
    )
    scale = internals.scaler_scale(scaler)
    assert isinstance(scale, torch.Tensor) and scale.shape == () and scale.item() == 1024.0, (
        f"GradScaler.{internals.SCALER_SCALE} changed meaning in {release('torch')}: {scale!r}"
    )


def test_the_grad_scaler_says_whether_its_step_was_skipped():
    for lr, overflowed in ((0.01, False), (float("inf"), True)):
        scaler, optimizer = scaler_after_a_step(lr)
        assert hasattr(scaler, internals.SCALER_FOUND_INF), (
            f"torch.amp.GradScaler.{internals.SCALER_FOUND_INF} is gone in {release('torch')}"
        )
        skipped = internals.scaler_skipped(scaler, optimizer)
        assert isinstance(skipped, torch.Tensor) and bool(skipped) is overflowed, (
            f"GradScaler.{internals.SCALER_FOUND_INF} changed meaning in {release('torch')}"
        )


def test_torchs_pytree_logger_is_named_as_internals_says():
    import torch.utils._pytree as pytree

    assert getattr(pytree, "log", logging.getLogger(pytree.__name__)).name == internals.PYTREE_LOGGER, (
        f"torch's pytree module logs under another name in {release('torch')}"
    )


def test_mlflows_system_metrics_monitor_takes_a_node_id():
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    taken = inspect.signature(SystemMetricsMonitor).parameters
    assert {"run_id", "sampling_interval", "node_id"} <= set(taken), (
        f"mlflow's SystemMetricsMonitor no longer takes run_id, sampling_interval and node_id in {release('mlflow')}"
    )
    monitor = tracking_internals.system_metrics_monitor("0" * 32, 1.0, "node1")
    assert callable(monitor.start) and callable(monitor.finish), (
        f"mlflow's SystemMetricsMonitor has no start/finish in {release('mlflow')}"
    )
