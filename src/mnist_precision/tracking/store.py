"""Where the runs go, and the experiment they go to.

The store defaults to `sqlite:///<repo root>/mlflow.db` with artifacts in
`<repo root>/mlartifacts`. The repo root is found even when DVC runs a queued
experiment in a temporary copy under `<repo>/.dvc/tmp/exps/`, so every
experiment lands in the user's store rather than in a copy that DVC deletes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from mnist_precision.base.paths import repo_root
from mnist_precision.tracking.health import TrackingError, check_reachable


@dataclass(frozen=True)
class Store:
    uri: str
    artifact_location: str | None  # for new experiments; None lets a tracking server decide
    lock: Path | None = None  # serializes creating the store and the experiment

    @contextmanager
    def creating(self) -> Iterator[None]:
        """Hold the store's lock while it may be created: two experiments that
        start together on a fresh SQLite file would both run MLflow's schema
        migrations and fail."""
        if self.lock is None:
            yield
            return
        with open(self.lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# Queued experiments run side by side and write to one SQLite file: a writer
# waits up to this long for another's lock instead of failing at once
# ("database is locked"; sqlite3's default is 5 s).
SQLITE_BUSY_TIMEOUT_S = 120


def locate(root: Path) -> Store:
    """MLFLOW_TRACKING_URI when set, else the repository's own SQLite store.

    `mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI itself, so a URI
    equal to the repository's store is that store, not a user's other one.
    """
    own = Store(
        f"sqlite:///{root / 'mlflow.db'}?timeout={SQLITE_BUSY_TIMEOUT_S}",
        (root / "mlartifacts").as_uri(),
        lock=root / "mlflow.db.lock",
    )
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return Store(uri, None) if uri and uri != own.uri else own


def configure(root: Path | None = None) -> Store:
    chosen = locate(root or repo_root())
    check_reachable(chosen.uri)
    mlflow.set_tracking_uri(chosen.uri)
    return chosen


def get_or_create_experiment(name: str, chosen: Store) -> str:
    """Get or create the experiment. MLflow fixes the artifact location at
    creation, so a new experiment gets the store's absolute location. Stages
    of several machines may create it at once on a shared server: the one
    that loses the race takes the winner's."""
    with chosen.creating():
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return mlflow.create_experiment(name, artifact_location=chosen.artifact_location)
        except MlflowException as error:
            # Another machine's stage created it in between (a shared server has no lock of ours).
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return existing_experiment_id(name)


def existing_experiment_id(name: str) -> str:
    """The id of an experiment that a stage has made."""
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        raise TrackingError(
            f"no MLflow experiment named {name!r} in {mlflow.get_tracking_uri()}: run the pipeline first"
        )
    return found.experiment_id
