"""MLflow's artifact progress bar, off while the report downloads one small file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR


@contextmanager
def no_progress_bar() -> Iterator[None]:
    """MLflow reads its switch from the environment at each download: it is
    set for the block's duration and put back after it."""
    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before
