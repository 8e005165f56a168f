"""The Model Registry, where MLflow users pick a model to deploy: one registered
model per experiment (named after it), a version per training run, tagged
with what it was trained in. On a team server, registering needs the EDIT
permission on the registered model (docs/teams.md); a user without it gets
a warning, and the model stays logged on its run."""

from __future__ import annotations

import os
import sys

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mnist_precision.tracking.lifecycle import forbidden


def refused(what: str, name: str, error: MlflowException) -> None:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(none)"
    print(
        f"warning: the tracking server at {mlflow.get_tracking_uri()} refused user {user!r} to {what} "
        f"registered model {name!r} ({error.message.splitlines()[0][:200]}): the model stays logged on its "
        "run; the registered model's manager can grant EDIT on it (docs/teams.md)",
        file=sys.stderr,
    )


def register(model_uri: str, name: str, tags: dict[str, str]) -> str | None:
    """A new version of `name` (created if absent) for the logged model at
    `model_uri`, with `tags`; its number, or None where the server refused."""
    try:
        version = mlflow.register_model(model_uri, name, tags=tags)
    except MlflowException as error:
        if not forbidden(error):
            raise
        refused("add a version to", name, error)
        return None
    return str(version.version)


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    except MlflowException as error:
        if not forbidden(error):
            raise
        refused(f"tag version {version} of", name, error)
