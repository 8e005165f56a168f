"""One MLflow run per stage, always ended (FINISHED, KILLED or FAILED), with its tags."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from mnist_precision.base import names
from mnist_precision.base.interrupts import Interrupted, deferred, sigterm_raises
from mnist_precision.tracking.health import TrackingError
from mnist_precision.tracking.internals import system_metrics_monitor
from mnist_precision.tracking.liveness import process_tags
from mnist_precision.tracking.store import configure, get_or_create_experiment


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def run_tags() -> dict[str, str]:
    tags = {names.HOST: socket.gethostname()}
    commit = git_commit()
    if commit:
        tags[names.GIT_COMMIT] = commit
        tags["mlflow.source.git.commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def run_name(precision: str) -> str:
    return f"{precision}-{os.environ.get('DVC_EXP_NAME') or 'workspace'}"


SYSTEM_METRICS_INTERVAL_S = 1


@contextmanager
def node_system_metrics(run_id: str, node_id: str | None, local_rank: int) -> Iterator[None]:
    """In a multi-node job, the first rank of each node samples its machine's
    CPU, memory and GPUs into `run_id` as `system/<node_id>/...`."""
    if node_id is None or local_rank != 0:
        yield
        return
    configure()  # the store, on the nodes where rank 0 did not set it
    monitor = system_metrics_monitor(run_id, SYSTEM_METRICS_INTERVAL_S, node_id)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


@contextmanager
def run_scope(system_metrics: bool = True, **start_run_kwargs) -> Iterator[mlflow.ActiveRun]:
    """Start (or reopen, with run_id=...) a run and always end it:
    FINISHED on success, KILLED on SIGINT/SIGTERM, FAILED on any error.

    With `system_metrics`, MLflow samples CPU, memory (and GPU, where there is
    one) every second, so the UI shows what each precision cost the machine.
    """
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
        mlflow.set_system_metrics_samples_before_logging(1)
    with sigterm_raises():
        try:
            # The run is created with the tags of the process that owns it (or,
            # resumed, gets them at once): a SIGKILL right after its creation
            # must leave a run that the next stage can tell stale.
            tags = start_run_kwargs.pop("tags", {}) | process_tags()
            run = mlflow.start_run(log_system_metrics=system_metrics, tags=tags, **start_run_kwargs)
        except MlflowException as error:
            if forbidden(error):
                raise not_permitted(start_run_kwargs.get("experiment_id")) from None
            raise TrackingError(
                f"cannot start the MLflow run in {mlflow.get_tracking_uri()}: {error.message}; "
                "if the store was reset, rerun training with `dvc repro -f train`"
            ) from None
        status = RunStatus.to_string(RunStatus.FAILED)
        try:
            yield run
            status = RunStatus.to_string(RunStatus.FINISHED)
        except (KeyboardInterrupt, Interrupted):
            status = RunStatus.to_string(RunStatus.KILLED)
            raise
        except MlflowException as error:  # the store failed under us (a server or its database went away)
            raise store_failed(error) from None
        finally:
            with deferred():  # a SIGTERM now (torchrun stopping a job's ranks) must not leave it RUNNING
                try:
                    mlflow.end_run(status=status)
                except MlflowException as error:
                    raise store_failed(error) from None


def forbidden(error: MlflowException) -> bool:
    """The server's basic-auth app refused this user (HTTP 403)."""
    return error.error_code == "PERMISSION_DENIED" or "403" in str(error.message)


def not_permitted(experiment_id: str | None) -> TrackingError:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(none)"
    try:
        name = mlflow.get_experiment(experiment_id).name if experiment_id else "the experiment"
    except MlflowException:
        name = f"experiment {experiment_id}"
    return TrackingError(
        f"the MLflow tracking server at {mlflow.get_tracking_uri()} refused user {user!r} "
        f"(HTTP 403): logging a run needs the EDIT permission on {name!r}; its manager grants it "
        f"with `mnist-precision server users grant {user} {name} EDIT`"
    )


def store_failed(error: MlflowException) -> TrackingError:
    """The store's failure as one line that names it, for a stage to report and exit."""
    uri = mlflow.get_tracking_uri()
    kind = "server" if urllib.parse.urlsplit(uri).scheme in ("http", "https") else "store"
    cause = (error.message.strip().splitlines() or [type(error).__name__])[0][:300]
    return TrackingError(
        f"the MLflow tracking {kind} at {uri.split('?')[0]} failed ({cause}); "
        "the run is not recorded as finished: check it, then run the stage again"
    )


def log_side_run(
    experiment: str,
    side: str,
    name: str,
    tags: dict[str, str],
    files: list[Path],
    params: dict[str, object] | None = None,
    metrics: dict[str, float] | None = None,
) -> str:
    """One run of a command beside the training runs, in the experiment
    `<experiment>-<side>` so that it never counts as training (a report's
    summary in `-reports`, a benchmark in `-benchmarks`): named `<name>-<time>`,
    with its params, metrics and files (under `<name>/`). Returns its id."""
    with run_scope(
        system_metrics=False,
        experiment_id=get_or_create_experiment(f"{experiment}-{side}", configure()),
        run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags=tags,
    ) as run:
        mlflow.log_params(params or {})
        mlflow.log_metrics(metrics or {})
        for path in files:
            mlflow.log_artifact(str(path), artifact_path=name)
        return run.info.run_id
