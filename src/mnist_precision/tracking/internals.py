"""Every use of a private part of MLflow, fenced in one module (PyTorch's: core/internals.py).

Each has a contract test (tests/test_internals.py) that fails, naming the
attribute and the installed version, on a release that changes it.
"""

from __future__ import annotations


def system_metrics_monitor(run_id: str, interval_s: float, node_id: str):
    """MLflow's system-metrics sampler for one node of a distributed job: the
    public `log_system_metrics` samples only the process that starts the run."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    return SystemMetricsMonitor(run_id, sampling_interval=interval_s, node_id=node_id)
