"""Per-epoch metrics that never hold up training and are never lost."""

from __future__ import annotations

import sys
import time

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.utils.async_logging.run_operations import RunOperations


class MetricsBuffer:
    """Per-epoch metrics that never hold up training and are never lost.

    `add` hands each epoch's metrics to MLflow's asynchronous logging: its
    background thread sends them, with MLflow's own HTTP retries, while
    training goes on, so a tracking server that restarts costs no training
    time. `flush` waits for every send; one that failed (a server away for
    longer than MLflow's retries) is sent again, with the retries again.
    """

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.client = mlflow.MlflowClient()
        self.sending: list[
            tuple[list[Metric], RunOperations | None]
        ] = []  # each batch, and the operation that sends it

    def add(self, values: dict[str, float], step: int, series: dict[str, list] | None = None) -> None:
        """`values` at `step`, and each of `series`' [step, value] points under its key."""
        now_ms = int(time.time() * 1000)
        metrics = [Metric(key, float(value), timestamp=now_ms, step=step) for key, value in values.items()]
        metrics += [
            Metric(key, float(value), timestamp=now_ms, step=at)
            for key, points in (series or {}).items()
            for at, value in points
        ]
        self.sending.append((metrics, self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)))

    def flush(self) -> None:
        while self.sending:
            metrics, operation = self.sending[0]
            try:
                if operation is not None:
                    operation.wait()
            except MlflowException as error:
                print(
                    f"mlflow: the metrics of epoch {metrics[0].step} did not reach {mlflow.get_tracking_uri()} "
                    f"({error.message.splitlines()[0][:200]}); sending them again",
                    file=sys.stderr,
                )
                self.client.log_batch(self.run_id, metrics=metrics)
            del self.sending[0]
